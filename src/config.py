"""Typed configuration: ``config.yaml`` into dataclasses, with overrides.

    cfg = load_config("config.yaml", ["training.lr=3e-4", "model.listener_hidden=256"])

Every section is a dataclass; every key has a type and a default. Unknown keys
are an error naming the key and the closest valid one. ``key=value`` overrides
are parsed as YAML and then checked against the field's type, so
``training.lr=3e-4`` is a float and ``data.in_memory=true`` a bool.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.errors import UserError

DEFAULT_DATA_ROOT = "data/11-785-f23-hw4p2"
SAMPLE_DATA_ROOT = "data/sample"


@dataclass
class DataConfig:
    """Where the data is and how it is batched (shared by every model family)."""

    root: str = DEFAULT_DATA_ROOT  # competition layout; the bundled sample if absent
    train_partition: str = "train-clean-100"  # or train-clean-360, train-clean-460
    dev_partition: str = "dev-clean"
    test_partition: str = "test-clean"
    n_mels: int = 28  # feature dimension D
    normalize: str = "utterance"  # none | utterance (zero mean, unit variance per bin)
    max_frames_per_batch: int = 60000  # cap on B * T (padded) per batch
    max_utterances_per_batch: int = 12  # cap on B (12 measured best on 2 CPU cores in 20 minutes, against 8, 16 and 24; a GPU wants larger batches, unmeasured here)
    num_workers: str = "auto"  # DataLoader workers, or auto: 0 (load in the main process) on CPU-only machines, where workers take cycles from the 2 compute threads (bench/bench_cores.py), 2 with CUDA
    in_memory: bool = False  # load every feature file into RAM at start
    check: bool = True  # validate the splits before training and testing


@dataclass
class TeacherForcingConfig:
    """Teacher forcing rate: constant, then decays in stages once triggered (checked after each epoch)."""

    start: float = 1.0  # rate before the decay is triggered
    trigger: str = "dev_error"  # epoch | aligned | dev_error: what starts the decay (latched once met)
    trigger_epoch: int = 0  # trigger=epoch: decay after every epoch from this one (0-based)
    trigger_alignment: float = 0.9  # trigger=aligned: decay once dev attention diagonality reaches this (src/training/hooks.py)
    trigger_dev_cer: float = 0.5  # trigger=dev_error: decay once dev CER (the epoch line's cer: greedy unless dev_decoder=test) is below
    stages: list = field(default_factory=lambda: [[0.99, 0.7], [0.98, 0.5]])
    # stages: [factor per epoch, floor] applied in order: x0.99 down to 0.7, then x0.98 down to 0.5


@dataclass
class SpecAugmentConfig:
    """Frequency and time masks on training batches (Park et al., 2019), independent per utterance,
    switched on by the trigger and widened by training progress (src/schedules.py: specaugment_begins,
    specaugment_strength)."""

    trigger: str = "overfit"  # overfit: from the first epoch whose training loss is below the dev loss | progress: from start
    start: float = 0.0  # training progress (0-1) before which there are no masks, whatever the trigger; -1: no masks (with perturb: always, the warp and stretch still run)
    until: float = 1.0  # overfit: the trigger fires only if the masks reach full width (its progress + ramp) by this progress, and never later than wsd's cool-down (1 - decay_fraction): masks ramping in while the lr anneals cost more than they give
    ramp: float = 0.25  # progress over which the mask widths grow from 0 to full (0 = at once)
    freq_mask: int = 4  # max width of each frequency mask (bins)
    n_freq_masks: int = 2  # frequency masks per utterance
    time_mask: int = 40  # max width of each time mask (frames)
    n_time_masks: int = 2  # time masks per utterance
    freq_warp: float = 0.1  # VTLP: stretch each utterance's frequency axis by 1 +- up to this; 0 = off
    time_stretch: float = 0.1  # speed perturbation on features: resample each utterance's time axis to 1 +- up to this of its length; 0 = off
    perturb: str = "always"  # when freq_warp and time_stretch apply: always (full range from the first step; the masks keep their trigger; 1.1-1.6 points of CER on unseen voices at 12 epochs) | with_masks (the masks' trigger and ramp)


@dataclass
class LASConfig:
    """Listen, Attend and Spell (src/models/las.py). Defaults learn fast on CPU (3.4M parameters);
    GPU: conv_stride 1, listener_layers 3, ctc_layer 2, listener_hidden 256, speller_hidden 512."""

    conv_channels: int = 128  # Conv1d front end output channels
    conv_stride: int = 2  # Conv1d front end stride (time reduction); T' = ceil(T / stride / 2**listener_layers)
    listener_hidden: int = 192  # H of each BLSTM direction (GPU: 256-512)
    listener_layers: int = 2  # pyramidal BLSTM layers (each halves T); with conv_stride 2: T/8 (80 ms frames)
    locked_dropout: float = 0.1  # dropout between listener layers, one mask per utterance
    attention_dim: int = 128  # A: key/value/query size
    embedding_dim: int = 128  # character embedding size E (tied to the output layer)
    speller_hidden: int = 256  # hidden size of each of the two speller LSTMs (GPU: 512)
    input_feeding: bool = False  # true: the paper's speller, whose first LSTM also reads the previous context (training loops over characters); false: the LSTMs read characters only and training runs every step at once (1.5-2x utt/s on 2 CPU cores)
    speller_dropout: float = 0.1  # dropout inside the speller
    tie_weights: bool = True  # char distribution shares the embedding matrix
    ctc_head: bool = True  # joint CTC head on the listener (blank = <pad>, id 0)
    ctc_layer: int = 1  # pBLSTM layer (1..listener_layers) feeding the CTC head; keep it at T/4 (T/8 < chars)

    def __post_init__(self) -> None:
        if self.conv_stride < 1:
            raise UserError(f"config: 'model.las.conv_stride' must be at least 1; got {self.conv_stride}")
        if self.ctc_head and not 1 <= self.ctc_layer <= self.listener_layers:
            raise UserError(f"config: 'model.las.ctc_layer' must be in 1..{self.listener_layers} "
                            f"(model.las.listener_layers); got {self.ctc_layer}")


@dataclass
class DS2Config:
    """DeepSpeech2 (src/models/ds2.py): conv front end, bidirectional GRUs, CTC; about 3.6M parameters.
    Time reduction 4 gives 25 frames/s, room for LibriSpeech's ~15 characters/s and a blank between
    doubled letters; GPU: rnn_hidden 512-800, rnn_layers 5."""

    conv_channels: int = 32  # channels of both Conv2d layers (kernel 11x11 over time x frequency)
    time_reduction: int = 4  # 2 | 4: T' = ceil(T / time_reduction) frames of CTC output
    rnn_type: str = "gru"  # gru | lstm
    rnn_layers: int = 3  # bidirectional recurrent layers, each with sequence-wise batch norm before it
    rnn_hidden: int = 256  # H of each direction
    dropout: float = 0.1  # before each recurrent layer and the output layer
    bidirectional: bool = True  # false: forward-only layers (streamable), with a lookahead convolution
    lookahead: int = 0  # unidirectional only: frames of future context (DS2's row convolution; 0 = none)

    def __post_init__(self) -> None:
        if self.lookahead < 0:
            raise UserError(f"config: 'model.ds2.lookahead' must be at least 0; got {self.lookahead}")
        if self.bidirectional and self.lookahead:
            raise UserError("config: 'model.ds2.lookahead' is for a unidirectional model; set "
                            "model.ds2.bidirectional=false or model.ds2.lookahead=0")
        if self.time_reduction not in (2, 4):
            raise UserError(f"config: 'model.ds2.time_reduction' must be 2 or 4; got {self.time_reduction}")
        if self.rnn_type not in ("gru", "lstm"):
            raise UserError(f"config: 'model.ds2.rnn_type' must be gru or lstm; got '{self.rnn_type}'")
        if min(self.conv_channels, self.rnn_layers, self.rnn_hidden) < 1:
            raise UserError("config: 'model.ds2.conv_channels', 'rnn_layers' and 'rnn_hidden' must be at least 1")


@dataclass
class TransformerConfig:
    """Transformer / Conformer encoder-decoder with joint CTC (src/models/transformer.py); about 3.7M
    parameters at the defaults. GPU and full LibriSpeech: d_model 256, encoder_layers 12, heads 4."""

    block: str = "conformer"  # conformer | transformer: the encoder's blocks
    d_model: int = 144  # width of every layer
    heads: int = 4  # attention heads (d_model must divide by it)
    ffn_dim: int = 576  # hidden width of the feed-forward nets
    encoder_layers: int = 6  # encoder blocks, after Conv2d subsampling by 4
    decoder_layers: int = 2  # decoder layers (self-attention, cross-attention, feed-forward)
    conv_kernel: int = 15  # conformer: depthwise convolution kernel over time (odd)
    front_end_channels: int = 64  # channels of the two stride-2 Conv2d layers
    dropout: float = 0.1  # attention, feed-forward and embedding dropout

    def __post_init__(self) -> None:
        if self.block not in ("conformer", "transformer"):
            raise UserError(f"config: 'model.transformer.block' must be conformer or transformer; got '{self.block}'")
        if min(self.d_model, self.heads, self.ffn_dim, self.encoder_layers, self.decoder_layers,
               self.front_end_channels) < 1:
            raise UserError("config: 'model.transformer' sizes and layer counts must be at least 1")
        if self.d_model % self.heads:
            raise UserError(f"config: 'model.transformer.d_model' ({self.d_model}) must be a multiple of "
                            f"'model.transformer.heads' ({self.heads})")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise UserError(f"config: 'model.transformer.conv_kernel' must be odd; got {self.conv_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"config: 'model.transformer.dropout' must be in [0, 1); got {self.dropout}")


@dataclass
class ModelConfig:
    """Which model family, and its sizes; stored in every checkpoint."""

    family: str = "las"  # las | ds2 | transformer (src/models/registry.py lists the families)
    las: LASConfig = field(default_factory=LASConfig)  # settings of family las
    ds2: DS2Config = field(default_factory=DS2Config)  # settings of family ds2
    transformer: TransformerConfig = field(default_factory=TransformerConfig)  # settings of family transformer


@dataclass
class TrainingConfig:
    """Optimisation, schedules, checkpoints (src/training/); teacher forcing and guided attention
    apply to families with attention only."""

    epochs: int = 30  # passes over the training partition
    lr: float = 3e-3  # AdamW peak learning rate (after warmup)
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    sortagrad_epochs: int = 1  # SortaGrad: this many first epochs go shortest utterances first (helps alignment)
    warmup_steps: int = 100  # linear warmup from 0 to lr, in optimizer steps
    scheduler: str = "wsd"  # wsd (warmup, hold the peak, decay at the end) | cosine (per step, to min_lr at the last epoch) | plateau (on dev Levenshtein)
    decay_fraction: float = 0.2  # wsd: the last share of training, in which the lr falls linearly to min_lr
    anneal_by_time: bool = True  # cosine/wsd with max_minutes > 0: progress = max(step fraction, time fraction)
    min_lr: float = 1e-5  # floor of every schedule
    plateau_factor: float = 0.5  # plateau: multiply lr by this when dev stops improving
    plateau_patience: int = 2  # plateau: epochs without improvement before a cut
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    label_smoothing: float = 0.1  # on the attention cross-entropy (PAD ignored)
    ctc_weight: float = 0.5  # loss = (1 - w) * attention + w * CTC (families with a CTC head)
    guided_attention: float = 0.5  # weight of the guided-attention loss (attention mass off the diagonal); 0 = off
    guided_attention_sigma: float = 0.3  # width of the diagonal band, as a fraction of the utterance
    guided_attention_until_aligned: bool = True  # drop the guided loss once dev alignment reaches trigger_alignment
    teacher_forcing: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    amp: str = "auto"  # auto | bf16 | fp16 | none; auto: bf16 on a GPU that has it, else fp16; on the CPU auto is fp32 and bf16 must be asked for (not faster on 2 cores here: bench/bench_train.py)
    device: str = "auto"  # auto | cpu | cuda (auto: cuda when available; torchrun uses cuda:LOCAL_RANK)
    seed: int = 11785  # seeds python, numpy and torch (rank r uses seed + r)
    keep_epochs: int = 5  # keep weights-only epoch_NNN.pt of the last N epochs (python -m src.average); 0 = none
    checkpoint_every_minutes: float = 30.0  # also write 'last' this often mid-epoch; 0 = only per epoch
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall-clock budget; 0 = none
    resume: bool = True  # continue from run_dir/last.pt when it exists
    dev_max_utterances: int = 0  # score only this many dev utterances each epoch; 0 = all
    dev_decoder: str = "greedy"  # greedy (fast) | test: score dev (and pick best.pt) with test.py's decoding settings
    final_check: bool = True  # dev_decoder greedy: at the end, score the final weights with test.py's decoder too when they are not best.pt, and make them best.pt if they do better there


@dataclass
class DecodingConfig:
    """How test.py, transcribe.py and dev scoring turn listener output into text."""

    method: str = "beam"  # greedy | beam
    beam_size: int = 10  # K hypotheses kept per utterance (beam)
    length_penalty: float = 1.0  # rank finished hypotheses by score / length ** length_penalty; 0 = total log-prob
    max_chars_per_frame: float = 0.25  # most characters per 10 ms input frame (25/s; LibriSpeech ~15/s), any model
    max_length_min: int = 16  # ...but never fewer than this many characters
    ctc_weight: float = 0.3  # beam: score = (1 - w) * attention + w * CTC prefix score (0 = off; ignored without a CTC head; 0.3 beat 0.4 on dev, by 0.08-0.48 points, in the three LAS benchmark runs with perturbation)
    lm: str = ""  # character n-gram LM file for shallow fusion (python -m src.lm build); "" = none
    lm_weight: float = 0.0  # beam: + lm_weight * log p_LM(next character); needs decoding.lm
    length_bonus: float = 0.0  # beam: + length_bonus per character (offsets the LM's cost of each; CTC: 0.5-2)
    batch_size: int = 32  # utterances decoded together (beam search runs batch_size * beam_size rows)


@dataclass
class LoggingConfig:
    """Where a run writes, and what it reports."""

    run_dir: str = "runs/las"  # checkpoints, resolved config, attention maps, train.log
    wandb: str = "offline"  # online | offline | disabled (offline needs no account; wandb sync uploads later)
    wandb_project: str = "attention-based-speech-recognition"  # wandb project name
    log_every: int = 50  # steps between progress-bar postfix updates and wandb step logs


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --------------------------------------------------------------------------
# Loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, typ in _field_types(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(typ):
            keys.extend(_all_keys(typ, dotted + "."))
    return keys


# Keys that moved: the old name -> the new one (and what changed), for a one-line "now called" error.
RENAMED = {f"model.{f.name}": f"model.las.{f.name}" for f in dataclasses.fields(LASConfig)} | {
    "training.specaugment.start_epoch": "training.specaugment.start (a share of training progress, 0-1: "
                                        "epochs done / epochs, or minutes / max_minutes with a time budget)",
    "decoding.max_length_ratio": "decoding.max_chars_per_frame (per 10 ms input frame: the old ratio "
                                 "divided by the model's time reduction, e.g. 2.0 / 8 = 0.25)",
}


def _unknown_key(key: str, source: str) -> UserError:
    if key in RENAMED:
        return UserError(f"{source}: '{key}' is now called '{RENAMED[key]}'")
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; see README.md for the valid keys"
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


def load_config(path: str | Path | None = "config.yaml", overrides: list[str] | None = None) -> Config:
    """Read ``path`` (None: defaults only), apply ``key=value`` overrides, validate."""
    tree: dict = {}
    source = str(path) if path is not None else "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found; pass --config PATH or run from the repository root")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    valid = set(_all_keys(Config))
    for key, value in parse_overrides(overrides or []):
        if key not in valid:
            raise _unknown_key(key, "command line")
        typ = _type_of(key)
        if not dataclasses.is_dataclass(typ):
            value = _coerce(value, typ, key, "command line")
        _set_dotted(tree, key, value, "command line")
    cfg = _build(Config, tree, "", source)
    validate(cfg)
    return cfg


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise UserError(f"config: '{key}' must be one of {', '.join(allowed)}; got '{value}'")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    _choice(cfg.data.normalize, ("none", "utterance"), "data.normalize")
    if not (cfg.data.num_workers == "auto" or str(cfg.data.num_workers).isdigit()):
        raise UserError(f"config: 'data.num_workers' must be auto or a whole number >= 0; got '{cfg.data.num_workers}'")
    from src.models.registry import family_names

    _choice(cfg.model.family, tuple(family_names()), "model.family")
    _choice(cfg.training.scheduler, ("cosine", "wsd", "plateau"), "training.scheduler")
    if not 0.0 < cfg.training.decay_fraction <= 1.0:
        raise UserError(f"config: 'training.decay_fraction' must be in (0, 1]; got {cfg.training.decay_fraction}")
    _choice(cfg.training.amp, ("auto", "bf16", "fp16", "none"), "training.amp")
    _choice(cfg.training.specaugment.trigger, ("overfit", "progress"), "training.specaugment.trigger")
    _choice(cfg.training.specaugment.perturb, ("with_masks", "always"), "training.specaugment.perturb")
    _choice(cfg.training.teacher_forcing.trigger, ("epoch", "aligned", "dev_error"), "training.teacher_forcing.trigger")
    _choice(cfg.decoding.method, ("greedy", "beam"), "decoding.method")
    _choice(cfg.training.dev_decoder, ("greedy", "test"), "training.dev_decoder")
    _choice(cfg.logging.wandb, ("online", "offline", "disabled"), "logging.wandb")
    for key, value in [
        ("data.n_mels", cfg.data.n_mels),
        ("data.max_frames_per_batch", cfg.data.max_frames_per_batch),
        ("data.max_utterances_per_batch", cfg.data.max_utterances_per_batch),
        ("decoding.beam_size", cfg.decoding.beam_size),
        ("decoding.batch_size", cfg.decoding.batch_size),
        ("training.epochs", cfg.training.epochs),
    ]:
        if value < 1:
            raise UserError(f"config: '{key}' must be at least 1; got {value}")
    if cfg.training.keep_epochs < 0:
        raise UserError(f"config: 'training.keep_epochs' must be at least 0; got {cfg.training.keep_epochs}")
    if cfg.decoding.lm_weight < 0.0:
        raise UserError(f"config: 'decoding.lm_weight' must be at least 0; got {cfg.decoding.lm_weight}")
    if cfg.decoding.lm_weight > 0.0 and not cfg.decoding.lm:
        raise UserError("config: 'decoding.lm_weight' > 0 needs 'decoding.lm', a file from python -m src.lm build; "
                        "set decoding.lm=PATH or decoding.lm_weight=0")
    if not 0.0 <= cfg.decoding.ctc_weight <= 1.0:
        raise UserError(f"config: 'decoding.ctc_weight' must be in [0, 1]; got {cfg.decoding.ctc_weight}")
    if cfg.decoding.max_chars_per_frame <= 0.0 or cfg.decoding.max_length_min < 0:
        raise UserError(
            "config: 'decoding.max_chars_per_frame' must be > 0 and 'decoding.max_length_min' >= 0; got "
            f"{cfg.decoding.max_chars_per_frame} and {cfg.decoding.max_length_min}"
        )
    if not 0.0 <= cfg.training.ctc_weight <= 1.0:
        raise UserError(f"config: 'training.ctc_weight' must be in [0, 1]; got {cfg.training.ctc_weight}")
    sa = cfg.training.specaugment
    if not (sa.start == -1 or 0.0 <= sa.start <= 1.0) or sa.ramp < 0.0:
        raise UserError("config: 'training.specaugment.start' must be in [0, 1] (or -1 to disable) and "
                        f"'training.specaugment.ramp' at least 0; got {sa.start} and {sa.ramp}")
    if not 0.0 <= sa.freq_warp <= 0.5:
        raise UserError(f"config: 'training.specaugment.freq_warp' must be in [0, 0.5] (0.1: +-10%); got {sa.freq_warp}")
    if not 0.0 <= sa.time_stretch <= 0.5:
        raise UserError(f"config: 'training.specaugment.time_stretch' must be in [0, 0.5] (0.1: +-10%); got {sa.time_stretch}")
    if not 0.0 <= sa.until <= 1.0:
        raise UserError(f"config: 'training.specaugment.until' must be in [0, 1] (1 = the end of training); got {sa.until}")
    for stage in cfg.training.teacher_forcing.stages:
        if not (isinstance(stage, list) and len(stage) == 2):
            raise UserError(
                "config: 'training.teacher_forcing.stages' must be a list of [factor, floor] pairs; "
                f"got {stage!r}"
            )


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (for printing, saving, checkpoints)."""
    return dataclasses.asdict(cfg)


def build_section(cls: type, values: dict, prefix: str, source: str) -> Any:
    """A config dataclass ``cls`` from plain ``values`` (a checkpoint's dict): types checked,
    unknown keys rejected as in config.yaml, with ``prefix`` naming the section in errors."""
    return _build(cls, values, prefix, source)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def add_config_args(parser) -> None:
    """``--config PATH`` and trailing ``key=value`` overrides for an argparse parser."""
    parser.add_argument("--config", default="config.yaml", help="YAML config file (default: config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.lr=3e-4")



# --------------------------------------------------------------------------
# Rendering config.yaml from the dataclasses (comments from the field lines)


def _field_comments(cls: type) -> dict[str, str]:
    """Map field name -> the trailing ``# comment`` on its line in this file."""
    import inspect
    import re

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s?(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
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


README_BEGIN, README_END = "<!-- config.yaml begins -->", "<!-- config.yaml ends -->"


def update_readme(path: str | Path = "README.md") -> None:
    """Replace the README's config block (between the markers) with the rendered defaults."""
    p = Path(path)
    text = p.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    p.write_text(text[:start] + "\n```yaml\n" + render_yaml(Config()) + "```\n" + text[end:])


def default_config_yaml() -> str:
    return (
        "# Every setting of train.py and test.py. Override any of them on the command line:\n"
        "#   python train.py training.lr=3e-4 model.las.listener_hidden=128\n"
        "# Generated from src/config.py (python -m src.config --write); tests keep them in sync.\n\n"
        + render_yaml(Config())
    )


if __name__ == "__main__":  # python -m src.config --write: config.yaml and the README's config block
    import sys

    if "--write" in sys.argv:
        Path("config.yaml").write_text(default_config_yaml())
        update_readme("README.md")
    else:
        print(default_config_yaml(), end="")
