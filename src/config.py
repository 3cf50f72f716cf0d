"""Typed configuration: ``config.yaml`` into dataclasses, with overrides.

    cfg = load_config("config.yaml", ["training.lr=3e-4", "model.las.listener_hidden=256"])

Every section is a dataclass; every key has a type and a default. The ``model:``
section holds ``family`` and one section per registered family, each defined in
its family's file (src/models/registry.py). Unknown keys
are an error naming the key and the closest valid one. ``key=value`` overrides
are parsed as YAML and then checked against the field's type, so
``training.lr=3e-4`` is a float and ``data.in_memory=true`` a bool.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.compat import RENAMED
from src.data.layout import DEFAULT_DATA_ROOT
from src.errors import UserError
from src.models.registry import families


@dataclass
class DataConfig:
    """Where the data is and how it is batched (shared by every model family)."""

    RANGES = {"n_mels": "[1, 512]", "normalize": "none | utterance", "max_frames_per_batch": "[1, 100000000]",
              "max_utterances_per_batch": "[1, 1000000]", "num_workers": "auto | [0, 256]"}  # what each setting accepts (check_ranges)

    root: str = DEFAULT_DATA_ROOT  # competition layout; the bundled sample if absent
    train_partition: str = "train-clean-100"  # or train-clean-360, train-clean-460, train-clean-100+augmented
    dev_partition: str = "dev-clean"  # scored after every epoch
    test_partition: str = "test-clean"  # decoded by test.py into the submission
    n_mels: int = 28  # feature dimension D
    normalize: str = "utterance"  # none | utterance (zero mean, unit variance per bin)
    max_frames_per_batch: int = 60000  # cap on B * T (padded frames) per batch
    max_utterances_per_batch: int = 12  # cap on B (CPU-sized; a GPU wants larger batches)
    num_workers: str = "auto"  # DataLoader workers, or auto: 0 on a CPU-only machine, 2 with CUDA
    in_memory: bool = False  # load every feature file into RAM at start
    check: bool = True  # validate the splits before training and testing


@dataclass
class TeacherForcingConfig:
    """Teacher forcing rate: constant, then decays in stages once triggered (checked after each epoch)."""

    RANGES = {"start": "[0, 1]", "trigger": "epoch | aligned | dev_error", "trigger_epoch": "[0, 1000000]",
              "trigger_alignment": "[0, 1]", "trigger_dev_cer": "[0, 100]"}  # what each setting accepts (check_ranges)

    start: float = 1.0  # rate before the decay is triggered
    trigger: str = "dev_error"  # epoch | aligned | dev_error: what starts the decay (latched once met)
    trigger_epoch: int = 0  # trigger=epoch: decay after every epoch from this one (0-based)
    trigger_alignment: float = 0.9  # trigger=aligned: decay once dev attention alignment reaches this
    trigger_dev_cer: float = 0.5  # trigger=dev_error: decay once the epoch line's dev CER is below this
    stages: list = field(default_factory=lambda: [[0.99, 0.7], [0.98, 0.5]])  # [factor per epoch, floor]...


@dataclass
class SpecAugmentConfig:
    """Masks (Park et al., 2019), VTLP and speed perturbation on training batches (src/data/augment.py)."""

    RANGES = {"trigger": "overfit | progress", "start": "-1 | [0, 1]", "until": "[0, 1]", "ramp": "[0, 1]",
              "freq_mask": "[0, 512]", "n_freq_masks": "[0, 100]", "time_mask": "[0, 100000]",
              "n_time_masks": "[0, 100]", "freq_warp": "[0, 0.5]", "time_stretch": "[0, 0.5]",
              "perturb": "always | with_masks"}  # what each setting accepts (check_ranges)

    trigger: str = "overfit"  # overfit: masks from the first epoch with train loss < dev loss | progress
    start: float = 0.0  # progress (0-1) before which there are no masks; -1: no masks at all
    until: float = 1.0  # overfit: fire only if the masks reach full width by this progress
    ramp: float = 0.25  # progress over which the mask widths grow from 0 to full (0 = at once)
    freq_mask: int = 4  # max width of each frequency mask (bins)
    n_freq_masks: int = 2  # frequency masks per utterance
    time_mask: int = 40  # max width of each time mask (frames)
    n_time_masks: int = 2  # time masks per utterance
    freq_warp: float = 0.1  # VTLP: stretch each utterance's frequency axis by 1 +- up to this; 0 = off
    time_stretch: float = 0.1  # speed perturbation: resample each utterance to 1 +- this of its length
    perturb: str = "always"  # when warp and stretch apply: always (from the first step) | with_masks


@dataclass
class ChannelConfig:
    """Other recording channels for training utterances: noise, a telephone band, reverberation, on
    log-mel features before normalisation (src/data/augment.py: Channel)."""

    RANGES = {"prob": "[0, 1]", "noise": "[0, 1]", "snr_db_min": "[-20, 100]", "snr_db_max": "[-20, 100]",
              "band_limit": "[0, 1]", "reverb": "[0, 1]", "rt60_max": "[0.1, 3]", "mix": "[0, 1]",
              "start_step": "[0, 100000000]"}  # what each setting accepts (check_ranges)

    prob: float = 0.0  # share of training utterances passed through another channel; 0 = off
    noise: float = 1.0  # share of those with white noise added
    snr_db_min: float = 5.0  # the noise's SNR is drawn from snr_db_min .. snr_db_max (dB)
    snr_db_max: float = 30.0  # the top of that range (dB)
    band_limit: float = 0.3  # share of those heard through a telephone band (300-3400 Hz)
    reverb: float = 0.3  # share of those with reverberation
    rt60_max: float = 0.8  # reverberation time drawn from 0.1 .. this (seconds)
    mix: float = 0.0  # share of those with another utterance of the batch mixed in as a background talker
    start_step: int = 0  # no channel before this optimiser step (clean speech first); 0 = from the start

    def __post_init__(self) -> None:
        if self.snr_db_min > self.snr_db_max:
            raise UserError(f"config: 'training.channel.snr_db_min' ({self.snr_db_min}) is above "
                            f"'training.channel.snr_db_max' ({self.snr_db_max})")


@dataclass
class TrainingConfig:
    """Optimisation, schedules, checkpoints (src/training/); attention families only: teacher forcing,
    guided attention."""

    RANGES = {"epochs": "[1, 1000000]", "lr": "(0, 10]", "weight_decay": "[0, 10]", "sortagrad_epochs": "[0, 1000000]",
              "warmup_steps": "[0, 1000000000]", "scheduler": "wsd | cosine | plateau", "decay_fraction": "(0, 1]",
              "min_lr": "[0, 10]", "plateau_factor": "(0, 1]", "plateau_patience": "[0, 1000000]",
              "grad_clip": "[0, 1000000]", "label_smoothing": "[0, 1)", "ctc_weight": "[0, 1]",
              "guided_attention": "[0, 1000]", "guided_attention_target": "ctc | diagonal",
              "guided_attention_sigma": "(0, 10]", "alignment_warning_steps": "[0, 1000000000]", "ctc_warmup_steps": "[0, 1000000000]", "amp": "auto | bf16 | fp16 | none",
              "seed": "[0, 4294967295]", "keep_epochs": "[0, 1000000]", "checkpoint_every_minutes": "[0, 10000000]",
              "max_minutes": "[0, 100000000]", "dev_max_utterances": "[0, 1000000000]", "dev_decoder": "greedy | test"}  # what each setting accepts (check_ranges)

    epochs: int = 30  # passes over the training partition
    lr: float = 3e-3  # AdamW peak learning rate (after warmup)
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    sortagrad_epochs: int = 1  # SortaGrad: this many first epochs go shortest utterances first
    warmup_steps: int = 100  # linear warmup from 0 to lr, in optimizer steps
    scheduler: str = "wsd"  # wsd (warmup, hold, decay at the end) | cosine | plateau (on dev Levenshtein)
    decay_fraction: float = 0.2  # wsd: the last share of training, in which the lr falls to min_lr
    anneal_by_time: bool = True  # cosine/wsd with max_minutes > 0: progress = max(steps, time) share
    min_lr: float = 1e-5  # floor of every schedule
    plateau_factor: float = 0.5  # plateau: multiply lr by this when dev stops improving
    plateau_patience: int = 2  # plateau: epochs without improvement before a cut
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    label_smoothing: float = 0.1  # on the attention cross-entropy (PAD ignored)
    ctc_weight: float = 0.5  # loss = (1 - w) * attention + w * CTC (families with a CTC head)
    guided_attention: float = 0.5  # weight of the guided-attention loss; 0 = off
    guided_attention_target: str = "ctc"  # ctc: where the CTC head aligns each character | diagonal (no CTC head: diagonal)
    guided_attention_sigma: float = 0.3  # diagonal: width of the band, as a share of the utterance
    guided_attention_until_aligned: bool = True  # drop the guided loss once dev alignment is reached
    alignment_warning_steps: int = 3000  # warn once when dev alignment is below 0.5 after this many steps; 0 = never
    ctc_warmup_steps: int = 0  # families with a CTC head and a decoder: the first N steps train the encoder on CTC alone (decoder skipped); 0 = off
    teacher_forcing: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    amp: str = "auto"  # auto | bf16 | fp16 | none; auto: bf16 or fp16 on CUDA, fp32 on the CPU
    device: str = "auto"  # auto | cpu | cuda (auto: cuda when available; torchrun: cuda:LOCAL_RANK)
    seed: int = 11785  # seeds python, numpy and torch (rank r uses seed + r)
    keep_epochs: int = 5  # keep weights-only epoch_NNN.pt of the last N epochs (for averaging); 0 = none
    checkpoint_every_minutes: float = 30.0  # also write last.pt this often mid-epoch; 0 = per epoch only
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall-clock budget; 0 = none
    resume: bool = True  # continue from run_dir/last.pt when it exists
    resume_from: str = ""  # continue from this checkpoint instead (any path, e.g. an uploaded last.pt)
    resume_changed: bool = False  # resume although settings changed since the checkpoint (they are listed)
    dev_max_utterances: int = 0  # score only this many dev utterances each epoch; 0 = all
    dev_decoder: str = "greedy"  # greedy (fast) | test: score dev and pick best.pt with test.py's decoder
    final_check: bool = True  # at the end: final weights become best.pt if test.py's decoder prefers them


@dataclass
class DecodingConfig:
    """How test.py, transcribe.py and dev scoring turn encoder output into text."""

    RANGES = {"method": "greedy | beam", "beam_size": "[1, 1000]", "length_penalty": "[0, 10]",
              "max_chars_per_frame": "(0, 10]", "max_length_min": "[0, 1000000]", "ctc_weight": "[0, 1]",
              "lm_weight": "[0, 1000]", "length_bonus": "[-1000, 1000]", "batch_size": "[1, 1000000]",
              "segment_seconds": "[0, 3600]"}  # what each setting accepts (check_ranges)

    method: str = "beam"  # greedy | beam
    beam_size: int = 10  # K hypotheses kept per utterance (beam)
    length_penalty: float = 1.0  # rank finished hypotheses by score / length ** this; 0 = total log-prob
    max_chars_per_frame: float = 0.25  # most characters per 10 ms input frame (25/s), any model
    max_length_min: int = 16  # ...but never fewer than this many characters
    ctc_weight: float = 0.3  # beam: score = (1 - w) * attention + w * CTC prefix score; 0 = off
    lm: str = ""  # character n-gram LM file for shallow fusion (python -m src.lm build); "" = none
    lm_weight: float = 0.0  # beam: + lm_weight * log p_LM(next character); needs decoding.lm
    length_bonus: float = 0.0  # beam: + this per character (offsets the LM's cost of each)
    batch_size: int = 32  # utterances decoded together (beam search runs batch_size * beam_size rows)
    segment_seconds: float = 0.0  # attention models with a CTC head: decode longer utterances in pieces cut at CTC word boundaries; 0 = whole


@dataclass
class LoggingConfig:
    """Where a run writes, and what it reports."""

    RANGES = {"wandb": "online | offline | disabled", "log_every": "[1, 1000000000]"}  # what each setting accepts (check_ranges)

    run_dir: str = "runs/las"  # checkpoints, resolved config, attention maps, train.log
    wandb: str = "offline"  # online | offline | disabled (offline needs no account; wandb sync uploads)
    wandb_project: str = "attention-based-speech-recognition"  # wandb project name
    log_every: int = 50  # steps between progress-bar updates and wandb step logs


_MODEL_CLASSES: dict[tuple, type] = {}


def model_config_class() -> type:
    """The ``model:`` section: ``family`` and one section per registered family (src/models/registry.py).

    Built from the registry, so a family registered from outside the package is configured
    from YAML like a built-in one; one class per set of families, so configs compare equal."""
    known = families()
    key = tuple((name, f.config_cls) for name, f in known.items())
    if key not in _MODEL_CLASSES:
        fields = [("family", str, field(default="las"))]
        fields += [(name, f.config_cls, field(default_factory=f.config_cls)) for name, f in known.items()]
        comments = {"family": f"{' | '.join(known)} (src/models/registry.py)"}
        comments |= {name: f"settings of family {name}" for name in known}
        _MODEL_CLASSES[key] = dataclasses.make_dataclass("ModelConfig", fields, namespace={
            "__doc__": "Which model family, and its sizes; stored in every checkpoint.",
            "__field_comments__": comments})
    return _MODEL_CLASSES[key]


def ModelConfig(**sections: Any) -> Any:  # noqa: N802 (it stands for the section's class)
    """A ``model:`` section, e.g. ``ModelConfig(family="las", las=LASConfig(listener_hidden=64))``."""
    return model_config_class()(**sections)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=lambda: model_config_class()(), metadata={"section": model_config_class})
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> its type; a section assembled at run time (``model``) names its class maker."""
    hints = _hints(cls)
    return {f.name: f.metadata["section"]() if "section" in f.metadata else hints[f.name]
            for f in dataclasses.fields(cls)}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, typ in _field_types(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(typ):
            keys.extend(_all_keys(typ, dotted + "."))
    return keys


def _unknown_key(key: str, source: str) -> UserError:
    if key in RENAMED:
        return UserError(f"{source}: '{key}' is now called '{RENAMED[key]}'")
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; config.yaml lists every valid key"
    return UserError(f"{source}: unknown config key '{key}'{hint}")


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``typ``; convert where lossless."""
    bad = UserError(f"{source}: '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if typ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if typ is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if typ is list or typing.get_origin(typ) is list:
        if isinstance(value, list):
            return value
        raise bad
    return value


def _build(cls: type, values: dict, prefix: str, source: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {values!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            raise _unknown_key(dotted, source)
        typ = types_[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, dotted + ".", source)
        else:
            kwargs[key] = _coerce(value, typ, dotted, source)
            spec = getattr(cls, "RANGES", {}).get(key)
            if spec is not None and not allowed(spec, kwargs[key]):  # before __post_init__ compares settings
                raise UserError(f"{source}: '{dotted}' must be {spec}; got {kwargs[key]!r}")
    return cls(**kwargs)


def _type_of(dotted: str) -> Any:
    """The annotation of a dotted key, e.g. 'training.lr' -> float."""
    typ: Any = Config
    for part in dotted.split("."):
        typ = _field_types(typ)[part]
    return typ


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _unknown_key(dotted, source)
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["training.lr=3e-4"]`` -> ``[("training.lr", "3e-4" parsed as YAML)]``."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (e.g. training.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _read_yaml(p: Path) -> dict:
    """A YAML file as a mapping (UserError naming the file, line and column when it is not valid YAML)."""
    if not p.is_file():
        raise UserError(f"{p}: config file not found; pass --config PATH or run from the repository root")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{p}{where}: not valid YAML ({what}); fix that line") from None
    if not isinstance(tree, dict):
        raise UserError(f"{p}: expected a mapping of sections (data:, model:, training: ...), got {tree!r}")
    return tree


def _merge(base: dict, over: dict) -> dict:
    """``over``'s keys on top of ``base``'s, section by section."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --------------------------------------------------------------------------
# Presets: complete training recipes in configs/NAME.yaml, applied over config.yaml


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_sections(name: str) -> set[str]:
    """The top-level sections preset ``name`` sets (configs/NAME.yaml); empty for ``none``."""
    return set() if name == "none" else set(_read_yaml(PRESETS_DIR / f"{name}.yaml"))


def choose_preset(name: str, path: str | Path | None, overrides: list[str] | None,
                  family: str | None = None) -> tuple[str, str]:
    """(preset to apply, why): ``auto`` picks ``gpu-<family>`` with a CUDA GPU, else ``cpu-<family>``
    (the family given, else from the command line, else the config file, else las); ``none`` applies none."""
    if name == "none":
        return "none", "--preset none: the config file alone"
    if name != "auto":
        if name not in preset_names():
            raise UserError(f"--preset {name}: no such preset; choose one of {', '.join(preset_names())} "
                            f"(files in {PRESETS_DIR}) or none")
        return name, "asked for"
    family = family or dict(parse_overrides(overrides or [])).get("model.family")
    if family is None and path is not None and Path(path).is_file():
        family = (_read_yaml(Path(path)).get("model") or {}).get("family")
    family = family or "las"
    import torch

    kind, why = ("gpu", "a CUDA GPU was found") if torch.cuda.is_available() else ("cpu", "no CUDA GPU")
    chosen = f"{kind}-{family}"
    if chosen not in preset_names():
        return "none", f"{why}, and there is no preset {chosen}: the config file alone"
    return chosen, f"{why}; --preset none keeps the config file alone"


def load_decoding_config(path: str | Path | None, overrides: list[str] | None, preset: str,
                         family: str | None) -> tuple[Config, str | None]:
    """The config test.py and the Python API decode with: ``path`` and the overrides, with the ``decoding:``
    section of the preset training would pick (``preset`` auto) for ``family`` here, when it has one;
    returns (config, a line saying which preset's section applies, or None)."""
    name, why = choose_preset(preset, None, None, family=family)
    if "decoding" not in preset_sections(name):
        return load_config(path, overrides), None
    cfg = load_config(path, overrides, preset=name, preset_sections=("decoding",))
    return cfg, f"decoding preset {name} ({why})"


def load_config(path: str | Path | None = "config.yaml", overrides: list[str] | None = None,
                preset: str = "none", preset_sections: tuple[str, ...] | None = None) -> Config:
    """Read ``path`` (None: defaults only), apply preset ``preset`` (configs/NAME.yaml; ``none``: none;
    only its ``preset_sections`` when given, e.g. ``("decoding",)`` for test.py) on top of it and the
    ``key=value`` overrides on top of that, validate. Each layer's keys and types are checked with its
    own name in the error."""
    tree: dict = {}
    source = str(path) if path is not None else "defaults"
    if path is not None:
        tree = _read_yaml(Path(path))
        _build(Config, tree, "", source)
    if preset != "none":
        preset_path = PRESETS_DIR / f"{preset}.yaml"
        if not preset_path.is_file():
            raise UserError(f"--preset {preset}: no such preset; choose one of {', '.join(preset_names())} or none")
        preset_tree = _read_yaml(preset_path)
        _build(Config, preset_tree, "", str(preset_path))
        if preset_sections is not None:
            preset_tree = {k: v for k, v in preset_tree.items() if k in preset_sections}
        tree = _merge(tree, preset_tree)
    valid = set(_all_keys(Config))
    for key, value in parse_overrides(overrides or []):
        if key not in valid:
            raise _unknown_key(key, "command line")
        typ = _type_of(key)
        if dataclasses.is_dataclass(typ) and not isinstance(value, dict):
            raise UserError(f"command line: '{key}' is a section; set one of its keys, e.g. {_all_keys(typ)[0]} "
                            f"as {key}.{_all_keys(typ)[0]}=VALUE")
        if not dataclasses.is_dataclass(typ):
            value = _coerce(value, typ, key, "command line")
            parent, _, name = key.rpartition(".")
            spec = getattr(_type_of(parent) if parent else Config, "RANGES", {}).get(name)
            if spec is not None and not allowed(spec, value):
                raise UserError(f"command line: '{key}' must be {spec}; got {value!r}")
        _set_dotted(tree, key, value, "command line")
    cfg = _build(Config, tree, "", source)
    validate(cfg)
    return cfg


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise UserError(f"config: '{key}' must be one of {', '.join(allowed)}; got '{value}'")


def allowed(spec: str, value: Any) -> bool:
    """Whether ``value`` is one of the alternatives of ``spec``, written as in RANGES: intervals
    ``[lo, hi]`` / ``(lo, hi]`` ..., or literal words and numbers, joined by `` | ``. NaN is in no interval."""
    for part in spec.split(" | "):
        part = part.strip()
        if part[0] in "[(":
            lo, hi = (float(x) for x in part[1:-1].split(","))
            if isinstance(value, str) and value.isdigit():  # data.num_workers: "auto" or a count
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            above = value >= lo if part[0] == "[" else value > lo
            below = value <= hi if part[-1] == "]" else value < hi
            if above and below:
                return True
        elif str(value) == part or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                    and part.lstrip("-").replace(".", "", 1).isdigit() and value == float(part)):
            return True
    return False


def validate(cfg: Config) -> None:
    """What each section's RANGES cannot express (those are checked as values are read: _build)."""
    _choice(cfg.model.family, tuple(families()), "model.family")
    if cfg.decoding.lm_weight > 0.0 and not cfg.decoding.lm:
        raise UserError("config: 'decoding.lm_weight' > 0 needs 'decoding.lm', a file from python -m src.lm build; "
                        "set decoding.lm=PATH or decoding.lm_weight=0")
    for stage in cfg.training.teacher_forcing.stages:
        if not (isinstance(stage, list) and len(stage) == 2 and all(allowed("[0, 1]", x) for x in stage)):
            raise UserError("config: 'training.teacher_forcing.stages' must be a list of [factor, floor] pairs, "
                            f"each in [0, 1]; got {stage!r}")


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (for printing, saving, checkpoints)."""
    return dataclasses.asdict(cfg)


def build_section(cls: type, values: dict, prefix: str, source: str) -> Any:
    """A config dataclass ``cls`` from plain ``values`` (a checkpoint's dict): types and ranges checked,
    unknown keys rejected as in config.yaml, with ``prefix`` naming the section in errors."""
    return _build(cls, values, prefix, source)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def add_config_args(parser, presets: bool | str = False) -> None:
    """``--config PATH`` (and ``--preset NAME``: for training, or ``"decoding"`` for test.py's decoding
    section) and trailing ``key=value`` overrides."""
    parser.add_argument("--config", default="config.yaml", help="YAML config file (default: config.yaml)")
    if presets == "decoding":
        parser.add_argument("--preset", default="auto",
                            help="whose decoding: section (configs/) applies over the config file: auto (gpu-FAMILY "
                                 "with a CUDA GPU, else cpu-FAMILY, FAMILY the checkpoint's), none, or a name")
    elif presets:
        parser.add_argument("--preset", default="auto",
                            help="a training recipe from configs/ applied over the config file: auto (gpu-FAMILY "
                                 "with a CUDA GPU, else cpu-FAMILY), none, or a name, e.g. gpu-las")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.lr=3e-4")



# --------------------------------------------------------------------------
# Rendering config.yaml from the dataclasses (comments from the field lines)


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: the ``# ...`` at the end of its line in the class's source, after
    any comment lines just above it; a class made at run time carries ``__field_comments__``."""
    import inspect
    import re

    if hasattr(cls, "__field_comments__"):
        return dict(cls.__field_comments__)
    comments, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        own = re.match(r"\s+#\s?(.*)$", line)
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s?(.*)$", line)
        if own:
            above.append(own.group(1).strip())
        elif m:
            comments[m.group(1)] = "; ".join(above + [m.group(2).strip()])
            above = []
        elif line.strip():
            above = []
    return comments


def render_yaml(cfg: Any, indent: int = 0) -> str:
    """``cfg`` as YAML with each key's comment from the dataclass definition."""
    lines = []
    pad = "  " * indent
    comments = _field_comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        note = f"  # {comments[f.name]}" if f.name in comments else ""
        if dataclasses.is_dataclass(value):
            doc = (type(value).__doc__ or "").strip().splitlines()
            if doc and doc[0].startswith(type(value).__name__ + "("):
                doc = []  # the signature dataclasses writes when there is no docstring
            lines.append(f"{pad}{f.name}:" + (f"  # {doc[0]}" if doc and indent == 0 else note))
            lines.append(render_yaml(value, indent + 1))
            if indent == 0:
                lines.append("")
        else:
            dumped = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            if dumped.endswith("\n..."):
                dumped = dumped[: -len("\n...")]
            dumped = dumped.removesuffix("...").strip()
            lines.append(f"{pad}{f.name}: {dumped}{note}")
    return "\n".join(lines).rstrip("\n") + ("\n" if indent == 0 else "")


def default_config_yaml() -> str:
    return (
        "# Every setting of train.py and test.py. Override any of them on the command line:\n"
        "#   python train.py training.lr=3e-4 model.las.listener_hidden=128\n"
        "# Generated from src/config.py and src/models/ (python -m src.config --write).\n\n"
        + render_yaml(Config())
    )


if __name__ == "__main__":  # python -m src.config --write: regenerate config.yaml
    import sys

    if "--write" in sys.argv:
        Path("config.yaml").write_text(default_config_yaml())
    else:
        print(default_config_yaml(), end="")
