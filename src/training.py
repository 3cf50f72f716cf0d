"""Training: ``train(cfg)`` runs epochs, evaluates on dev, checkpoints, resumes.

    train(cfg)                   the whole run (train.py calls only this)
    compute_loss(model, batch, ...) -> (loss, parts)   attention CE + CTC
    train_one_epoch(run, epoch)  one pass over this rank's batches
    evaluate(model, loader, ...) dev loss, greedy Levenshtein / CER, alignment
    probe_largest_batches(...)   OOM before epoch 0 -> advice, not a crash hours in

Run directory (``logging.run_dir``): config.yaml (resolved), last.pt (every
epoch, every ``checkpoint_every_minutes``, on the time budget and on Ctrl-C),
best.pt (by dev mean Levenshtein), attention/epoch_XXX.png, train.log.

Resume (``training.resume``, on when run_dir/last.pt exists) restores model,
optimizer, schedule, scaler, teacher forcing, epoch, batch position and the
python/numpy/torch RNG states; building a DataLoader iterator is made RNG-
neutral, so on CPU 2 epochs straight and 1 epoch + resume + 1 epoch give
identical weights.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src import distributed as dist_utils
from src.checkpoint import load_checkpoint, save_checkpoint
from src.config import Config, dump_yaml, to_dict
from src.errors import UserError
from src.models import build_model, count_parameters
from src.models.las import ctc_targets, lengths_to_mask
from src.schedules import (
    PlateauState,
    TeacherForcingState,
    attention_diagonality,
    cosine_lr,
    next_teacher_forcing,
    plateau_lr,
    plateau_update,
)
from src.vocab import PAD, VOCAB, decode

# --------------------------------------------------------------------------
# Small helpers


class WarnOnce:
    """Print each distinct warning once per run."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=2)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: keep the fresh CUDA state
            pass


def rng_neutral_iter(loader):
    """iter(loader) without touching the global RNGs (DataLoader draws a base seed from torch)."""
    saved = rng_state()
    it = iter(loader)
    set_rng_state(saved)
    return it


def total_reduction(model_cfg) -> int:
    return model_cfg.conv_stride * 2**model_cfg.listener_layers


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """None (fp32) on CPU or amp=none; auto = fp16 with a GradScaler (cuDNN LSTMs support it everywhere)."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise UserError("config: training.amp=bf16 but this GPU has no bfloat16; use training.amp=fp16 or auto")
        return torch.bfloat16
    return torch.float16


class SubsetDataset(torch.utils.data.Dataset):
    """Some utterances of a SpeechDataset, keeping ``frame_lengths``/``names`` for the sampler."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.frame_lengths = np.asarray(dataset.frame_lengths)[self.indices]
        self.names = [dataset.names[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = dict(self.dataset[int(self.indices[i])])
        item["index"] = i
        return item


# --------------------------------------------------------------------------
# Loss


class SpecAugment(nn.Module):
    """torchaudio FrequencyMasking / TimeMasking with independent masks per utterance."""

    def __init__(self, sa_cfg):
        super().__init__()
        import torchaudio.transforms as T

        self.masks = nn.ModuleList(
            [T.FrequencyMasking(sa_cfg.freq_mask, iid_masks=True) for _ in range(sa_cfg.n_freq_masks)]
            + [T.TimeMasking(sa_cfg.time_mask, iid_masks=True) for _ in range(sa_cfg.n_time_masks)]
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, T, D) -> (B, T, D) with masked bands set to 0 (the utterance mean)."""
        x = features.transpose(1, 2).unsqueeze(1)  # (B, T, D) -> (B, 1, D, T): torchaudio's layout
        for mask in self.masks:
            x = mask(x)
        return x.squeeze(1).transpose(1, 2)  # (B, 1, D, T) -> (B, T, D)


def compute_loss(
    model: nn.Module,
    batch,
    *,
    teacher_forcing_rate: float,
    label_smoothing: float,
    ctc_weight: float,
    features: torch.Tensor | None = None,
    guided_attention: float = 0.0,
    guided_sigma: float = 0.3,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(1 - w) * attention CE (label smoothed, PAD ignored) + w * CTC (blank = PAD, zero_infinity),
    plus ``guided_attention`` * :func:`guided_attention_loss` when that weight is above 0.

    Returns the loss and parts: att, ctc, ga (floats), logits (B, U, V), attn (B, U, T'), encoded.
    ``features`` replaces batch.features (e.g. after SpecAugment).
    """
    tokens, token_lens = batch.tokens, batch.token_lens
    tokens_in, targets = tokens[:, :-1], tokens[:, 1:]  # (B, U) -> (B, U-1) each: [SOS, c..] / [c.., EOS]
    logits, attn, encoded = model(
        batch.features if features is None else features, batch.feature_lens, tokens_in, teacher_forcing_rate
    )
    att = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),  # (B, U, V) -> (B*U, V)
        targets.reshape(-1),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    )
    loss = att
    ctc_value = 0.0
    if encoded.ctc_log_probs is not None:
        ctc_tgt, ctc_tgt_lens = ctc_targets(tokens, token_lens)
        ctc = F.ctc_loss(
            encoded.ctc_log_probs.transpose(0, 1),  # (B, T'', V) -> (T'', B, V)
            ctc_tgt,
            encoded.ctc_lens,
            ctc_tgt_lens,
            blank=PAD,
            reduction="mean",
            zero_infinity=True,
        )
        loss = (1.0 - ctc_weight) * att + ctc_weight * ctc  # weight 0 still touches the head (DDP)
        ctc_value = float(ctc.detach())
    ga_value = 0.0
    if guided_attention > 0.0:
        ga = guided_attention_loss(attn, token_lens - 1, encoded.lens, sigma=guided_sigma)
        loss = loss + guided_attention * ga
        ga_value = float(ga.detach())
    parts = {"att": float(att.detach()), "ctc": ctc_value, "ga": ga_value, "logits": logits, "attn": attn,
             "encoded": encoded}
    return loss, parts


def guided_attention_loss(attn: torch.Tensor, out_lens: torch.Tensor, enc_lens: torch.Tensor,
                          sigma: float = 0.3) -> torch.Tensor:
    """Attention mass away from the diagonal (Tachibana et al., 2017, "guided attention").

    attn (B, U, T') weights, out_lens (B,) valid output steps, enc_lens (B,) valid
    listener frames. The penalty of step u on frame t is
    ``1 - exp(-(t / T'_b - u / U_b)^2 / (2 sigma^2))``: 0 on the diagonal of each
    utterance's own (U_b, T'_b) rectangle, near 1 far from it. Returns the mean
    over valid output steps of the penalised attention mass, in [0, 1]. Speech
    is monotonic, so this prior only speeds up the alignment a LAS must find.
    """
    steps, frames = attn.size(1), attn.size(2)
    u = torch.arange(steps, device=attn.device, dtype=torch.float32)  # (U,)
    t = torch.arange(frames, device=attn.device, dtype=torch.float32)  # (T',)
    u_pos = u.unsqueeze(0) / out_lens.clamp(min=1).unsqueeze(1).float()  # (B, U)
    t_pos = t.unsqueeze(0) / enc_lens.clamp(min=1).unsqueeze(1).float()  # (B, T')
    gap = t_pos.unsqueeze(1) - u_pos.unsqueeze(2)  # (B, 1, T') - (B, U, 1) -> (B, U, T')
    penalty = 1.0 - torch.exp(-gap.pow(2) / (2.0 * sigma**2))  # (B, U, T')
    step_mask = lengths_to_mask(out_lens, steps)  # (B, U)
    frame_mask = lengths_to_mask(enc_lens, frames)  # (B, T')
    mask = (step_mask.unsqueeze(2) & frame_mask.unsqueeze(1)).float()  # (B, U, T')
    mass = (attn.float() * penalty * mask).sum(dim=2)  # (B, U, T') -> (B, U)
    return (mass * step_mask.float()).sum() / step_mask.float().sum().clamp(min=1.0)


# --------------------------------------------------------------------------
# Evaluation


@dataclass
class DevResult:
    loss: float = math.nan
    lev: float = math.nan
    cer: float = math.nan
    alignment: float = 0.0
    utterances: int = 0
    attention: np.ndarray | None = None  # (U, T') of the fixed utterance
    hypothesis: str = ""
    reference: str = ""

    def metrics(self) -> dict[str, float]:
        return {"dev_loss": self.loss, "dev_lev": self.lev, "dev_cer": self.cer, "dev_alignment": self.alignment}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, label_smoothing: float, ctc_weight: float,
             max_length_ratio: float, fixed_index: int = 0, amp_dtype: torch.dtype | None = None) -> DevResult:
    """Dev loss (teacher forced), greedy mean Levenshtein and CER, attention diagonality.

    ``fixed_index``: dataset index of the utterance whose attention map is kept.
    """
    from src.decoding.greedy import greedy_decode, max_output_lengths
    from src.metrics import cer, mean_levenshtein

    was_training = model.training
    model.eval()
    hyps, refs, diag = [], [], []
    loss_sum, n = 0.0, 0
    result = DevResult()
    for batch in rng_neutral_iter(loader):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, parts = compute_loss(model, batch, teacher_forcing_rate=1.0,
                                       label_smoothing=label_smoothing, ctc_weight=ctc_weight)
            encoded = parts["encoded"]
            ids = greedy_decode(model, encoded, max_output_lengths(encoded.lens, ratio=max_length_ratio))
        b = len(batch)
        loss_sum += float(loss) * b
        n += b
        out_lens = batch.token_lens - 1  # predicted steps: c1..cn, EOS
        diag.append(attention_diagonality(parts["attn"], out_lens, encoded.lens))
        batch_refs = [decode(row[1:]) for row in batch.tokens.tolist()]
        batch_hyps = [decode(row) for row in ids]
        hyps += batch_hyps
        refs += batch_refs
        hit = (batch.indices == fixed_index).nonzero()
        if len(hit):
            r = int(hit[0, 0])
            result.attention = parts["attn"][r, : int(out_lens[r]), : int(encoded.lens[r])].float().cpu().numpy()
            result.hypothesis, result.reference = batch_hyps[r], batch_refs[r]
    model.train(was_training)
    if n:
        result.loss = loss_sum / n
        threads = torch.get_num_threads()
        result.lev = mean_levenshtein(hyps, refs)
        result.cer = cer(hyps, refs)
        torch.set_num_threads(threads)  # numba's OpenMP layer resets torch's thread count
        result.alignment = float(torch.cat(diag).mean())
        result.utterances = n
    return result


def save_attention_png(attention: np.ndarray, path: Path, title: str) -> None:
    """The attention map (U, T') as an image: output steps down, listener frames across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.imshow(attention, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("listener frame t'")
    ax.set_ylabel("output step u")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Logging


class RunLog:
    """Console + run_dir/train.log (+ wandb) on rank 0; silent elsewhere."""

    def __init__(self, cfg: Config, run_dir: Path, is_main: bool, warn: WarnOnce, wandb_id: str | None):
        self.is_main = is_main
        self.path = run_dir / "train.log"
        self.warn = warn
        self.wandb = None
        self.wandb_id = wandb_id
        if is_main and cfg.logging.wandb != "disabled":
            self._init_wandb(cfg, run_dir)

    def _init_wandb(self, cfg: Config, run_dir: Path) -> None:
        os.environ["WANDB_MODE"] = cfg.logging.wandb
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            if self.wandb_id is None:  # kept in train_state: a resumed run continues the same wandb run
                self.wandb_id = secrets.token_hex(4)  # os.urandom: leaves the seeded RNGs alone
            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                dir=str(run_dir),
                mode=cfg.logging.wandb,
                config=to_dict(cfg),
                id=self.wandb_id,
                resume="allow",
            )
        except Exception as err:  # no account, no network, broken install: train anyway
            self.wandb = None
            first = (str(err).splitlines() or [type(err).__name__])[0]
            self.warn("wandb", f"wandb ({cfg.logging.wandb}) unavailable, continuing without it: {first}")

    def line(self, text: str, console: bool = True) -> None:
        if not self.is_main:
            return
        if console:
            tqdm.write(text)
        with open(self.path, "a") as f:
            f.write(text + "\n")

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(values, step=step)
        except Exception as err:
            self.warn("wandb-log", f"wandb log failed, continuing: {err}")

    def image(self, key: str, path: Path, step: int, caption: str) -> None:
        if self.wandb is None:
            return
        try:
            import wandb

            self.wandb.log({key: wandb.Image(str(path), caption=caption)}, step=step)
        except Exception as err:
            self.warn("wandb-image", f"wandb image log failed, continuing: {err}")

    def finish(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass


# --------------------------------------------------------------------------
# Run state


@dataclass
class TrainState:
    """Where the run is: everything besides weights/optimizer that a resume needs."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0  # optimizer steps so far
    teacher_forcing: dict = field(default_factory=lambda: TeacherForcingState().as_dict())
    plateau: dict = field(default_factory=lambda: dataclasses.asdict(PlateauState()))
    best_dev_lev: float = math.inf
    nan_skips: int = 0
    aligned: bool = False  # dev alignment has reached trigger_alignment once (ends guided attention)
    elapsed_minutes: float = 0.0  # training wall clock over all sessions of this run
    epoch_sums: dict = field(default_factory=lambda: {"loss": 0.0, "att": 0.0, "ctc": 0.0, "ga": 0.0, "utts": 0,
                                                      "batches": 0})
    wandb_id: str | None = None
    finished: bool = False


@dataclass
class Run:
    """Everything one training run holds (built by :func:`setup_run`)."""

    cfg: Config
    device: torch.device
    info: dist_utils.DistInfo
    model: nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_set: Any
    dev_set: Any
    run_dir: Path
    state: TrainState
    steps_per_epoch: int
    log: RunLog | None = None
    warn: WarnOnce = field(default_factory=WarnOnce)
    specaugment: SpecAugment | None = None
    session_start: float = field(default_factory=time.monotonic)
    minutes_at_start: float = 0.0
    last_save: float = field(default_factory=time.monotonic)
    rng_at_batch_start: dict | None = None
    saved_on_interrupt: bool = False

    @property
    def core(self) -> nn.Module:
        return dist_utils.unwrap(self.model)

    @property
    def total_steps(self) -> int:
        return max(1, self.cfg.training.epochs * self.steps_per_epoch)

    def elapsed_minutes(self) -> float:
        return self.minutes_at_start + (time.monotonic() - self.session_start) / 60.0


def lr_for_step(run: Run, step: int, elapsed_minutes: float) -> float:
    t = run.cfg.training
    if t.scheduler == "plateau":
        return plateau_lr(step, PlateauState(**run.state.plateau), base_lr=t.lr, min_lr=t.min_lr,
                          warmup_steps=t.warmup_steps)
    time_fraction = elapsed_minutes / t.max_minutes if (t.anneal_by_time and t.max_minutes > 0) else 0.0
    return cosine_lr(step, base_lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps,
                     total_steps=run.total_steps, time_fraction=time_fraction)


def checkpoint_payload(run: Run, metrics: dict[str, float] | None = None, rng: dict | None = None) -> dict[str, Any]:
    return {
        "model": run.core.state_dict(),
        "model_config": dataclasses.asdict(run.cfg.model),
        "n_mels": run.cfg.data.n_mels,
        "vocab": list(VOCAB),
        "config": to_dict(run.cfg),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"kind": run.cfg.training.scheduler, "plateau": dict(run.state.plateau),
                      "total_steps": run.total_steps},
        "scaler": run.scaler.state_dict(),
        "train_state": dataclasses.asdict(run.state),
        "rng": rng if rng is not None else rng_state(),
        "metrics": metrics or {},
    }


def save_last(run: Run, metrics: dict[str, float] | None = None, rng: dict | None = None) -> None:
    if run.info.is_main:
        run.state.elapsed_minutes = run.elapsed_minutes()
        save_checkpoint(run.run_dir / "last.pt", checkpoint_payload(run, metrics, rng))
    run.last_save = time.monotonic()


# --------------------------------------------------------------------------
# Setup


def make_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def _load_data(cfg: Config, info: dist_utils.DistInfo):
    from src.data.dataset import SpeechDataset
    from src.data.layout import resolve_data_root

    root = resolve_data_root(cfg.data)
    if cfg.data.check:
        if info.is_main:
            from src.data.check import check_data

            check_data(root, [cfg.data.train_partition, cfg.data.dev_partition], n_mels=cfg.data.n_mels)
        dist_utils.barrier(info)
    kwargs = dict(n_mels=cfg.data.n_mels, normalize=cfg.data.normalize, in_memory=cfg.data.in_memory)
    train_set = SpeechDataset(root, cfg.data.train_partition, **kwargs)
    dev_set = SpeechDataset(root, cfg.data.dev_partition, **kwargs)
    if len(train_set) < info.world_size:
        raise UserError(f"{root}: {cfg.data.train_partition} has {len(train_set)} utterances, "
                        f"fewer than the {info.world_size} processes")
    if cfg.training.dev_max_utterances and cfg.training.dev_max_utterances < len(dev_set):
        pick = np.unique(np.linspace(0, len(dev_set) - 1, cfg.training.dev_max_utterances).round().astype(np.int64))
        dev_set = SubsetDataset(dev_set, pick)  # spread over the whole (sorted) partition
    return root, train_set, dev_set


def _check_resumable(ckpt: dict, cfg: Config, path: Path) -> None:
    saved = ckpt.get("model_config", {})
    now = dataclasses.asdict(cfg.model)
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise UserError(
            f"{path}: was trained with model.{k}={saved.get(k)!r}, the config says {now[k]!r}; "
            "use another logging.run_dir or training.resume=false to start over"
        )
    if ckpt.get("n_mels") != cfg.data.n_mels:
        raise UserError(f"{path}: was trained with data.n_mels={ckpt.get('n_mels')}; the config says {cfg.data.n_mels}")


def setup_run(cfg: Config) -> Run:
    """Device, process group, data, model, optimizer, resume state, logging."""
    device = dist_utils.choose_device(cfg.training.device, dist_utils.local_rank_from_env())
    info = dist_utils.init_distributed(device)
    run_dir = Path(cfg.logging.run_dir)
    warn = WarnOnce()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(dump_yaml(cfg), end="", flush=True)
        tmp = run_dir / "config.yaml.tmp"
        tmp.write_text(dump_yaml(cfg))
        os.replace(tmp, run_dir / "config.yaml")

    root, train_set, dev_set = _load_data(cfg, info)
    seed_everything(cfg.training.seed)  # same initial weights on every rank
    model = build_model(cfg.model, cfg.data.n_mels, len(VOCAB)).to(device)
    optimizer = make_optimizer(model, cfg.training)
    amp_dtype = autocast_dtype(cfg.training.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    from src.data.dataset import LengthBucketSampler

    steps_per_epoch = len(LengthBucketSampler(
        train_set.frame_lengths, cfg.data.max_frames_per_batch, cfg.data.max_utterances_per_batch,
        shuffle=True, seed=cfg.training.seed, num_replicas=info.world_size, rank=info.rank))

    state = TrainState(teacher_forcing=TeacherForcingState(rate=cfg.training.teacher_forcing.start).as_dict())
    last = run_dir / "last.pt"
    ckpt = None
    if cfg.training.resume and last.is_file():
        ckpt = load_checkpoint(last, map_location="cpu")
        _check_resumable(ckpt, cfg, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["train_state"])
        state.finished = False

    run = Run(cfg=cfg, device=device, info=info, model=dist_utils.wrap_model(model, info, device),
              optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, train_set=train_set, dev_set=dev_set,
              run_dir=run_dir, state=state, steps_per_epoch=steps_per_epoch, warn=warn,
              minutes_at_start=state.elapsed_minutes)
    if cfg.training.specaugment.start_epoch >= 0:
        run.specaugment = SpecAugment(cfg.training.specaugment).to(device)
    run.log = RunLog(cfg, run_dir, info.is_main, warn, state.wandb_id)
    state.wandb_id = run.log.wandb_id
    seed_everything(cfg.training.seed + info.rank)  # training randomness differs between ranks
    if ckpt is not None:
        if info.is_main:
            set_rng_state(ckpt["rng"])
        else:  # only rank 0's RNG is saved: the others restart from a fresh, step-dependent seed
            seed_everything(cfg.training.seed + info.rank + 1000003 * state.global_step)
        run.log.line(f"resumed from {last}: epoch {state.epoch + 1}, batch {state.batch}, "
                     f"step {state.global_step}, {state.elapsed_minutes:.1f} min so far")
    n_params = count_parameters(run.core)
    run.log.line(
        f"data {root}: train {cfg.data.train_partition} {len(train_set)} utts, dev {cfg.data.dev_partition} "
        f"{len(dev_set)} utts; model {n_params / 1e6:.2f}M parameters; device {device}"
        f"{f' x{info.world_size} ranks' if info.enabled else ''}; amp {amp_dtype or 'fp32'}"
    )
    return run


# --------------------------------------------------------------------------
# Out-of-memory probe


def probe_largest_batches(run: Run, n_batches: int = 2) -> None:
    """Forward + backward the biggest batches once (RNG-neutral, no update).

    Biggest: the most padded frames (B * max T) and the longest utterance. An
    out-of-memory error becomes a UserError that says which setting to lower.
    """
    from src.data.dataset import LengthBucketSampler, collate

    cfg = run.cfg
    sampler = LengthBucketSampler(run.train_set.frame_lengths, cfg.data.max_frames_per_batch,
                                  cfg.data.max_utterances_per_batch, shuffle=False)
    lengths = run.train_set.frame_lengths
    batches = sampler.all_batches()
    by_frames = sorted(batches, key=lambda b: len(b) * int(max(lengths[i] for i in b)), reverse=True)
    chosen = by_frames[: max(1, n_batches - 1)] + [batches[-1]]  # unshuffled: the last has the longest
    model = run.core
    saved = rng_state()
    try:
        for indices in chosen:
            batch = collate([run.train_set[i] for i in indices]).to(run.device)
            with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                                enabled=run.amp_dtype is not None):
                loss, _ = compute_loss(model, batch, teacher_forcing_rate=1.0,
                                       label_smoothing=cfg.training.label_smoothing,
                                       ctc_weight=cfg.training.ctc_weight)
            run.scaler.scale(loss).backward()
            model.zero_grad(set_to_none=True)
            del loss, batch
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        raise UserError(
            f"out of memory on a batch of {len(indices)} utterances (the largest of data.max_frames_per_batch="
            f"{cfg.data.max_frames_per_batch}); set a smaller data.max_frames_per_batch "
            f"(e.g. {cfg.data.max_frames_per_batch // 2}) or smaller model sizes"
        ) from None
    finally:
        set_rng_state(saved)


# --------------------------------------------------------------------------
# Training


class StopTraining(Exception):
    """The wall-clock budget is used up (a checkpoint has been written)."""


def shared_elapsed_minutes(run: Run) -> float:
    """Training minutes so far; under DDP with a budget, rank 0's clock on every rank
    (the budget stop and a time-annealed lr must agree across ranks)."""
    minutes = run.elapsed_minutes()
    if run.info.enabled and run.cfg.training.max_minutes > 0:
        box = torch.tensor([minutes], dtype=torch.float64, device=run.device)
        torch.distributed.broadcast(box, src=0)
        minutes = float(box.item())
    return minutes


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over this rank's batches of ``epoch`` (resuming at run.state.batch)."""
    from src.data.dataset import make_loader

    cfg, state, t = run.cfg, run.state, run.cfg.training
    shuffle = epoch >= t.sortagrad_epochs  # SortaGrad: the first epochs go shortest first
    loader = make_loader(run.train_set, cfg.data, shuffle=shuffle, seed=t.seed, epoch=epoch,
                         num_replicas=run.info.world_size, rank=run.info.rank, skip_batches=state.batch)
    n_utts = sum(len(b) for b in loader.batch_sampler)
    tf_rate = float(state.teacher_forcing["rate"])
    augment = run.specaugment is not None and epoch >= t.specaugment.start_epoch
    # guided attention until the alignment trigger has fired (or for good with guided_attention_until_aligned off)
    guided_weight = 0.0 if (t.guided_attention_until_aligned and state.aligned) else t.guided_attention
    run.model.train()
    bar = tqdm(total=n_utts, unit="utt", desc=f"epoch {epoch + 1}/{t.epochs}", disable=not run.info.is_main,
               leave=False, dynamic_ncols=True)
    sums = state.epoch_sums
    start = time.monotonic()
    lr = math.nan
    try:
        for batch in rng_neutral_iter(loader):
            run.rng_at_batch_start = rng_state()
            elapsed = shared_elapsed_minutes(run)
            if 0 < t.max_minutes <= elapsed:  # checked before the batch: nothing of it is consumed
                save_last(run)
                raise StopTraining
            batch = batch.to(run.device)
            lr = lr_for_step(run, state.global_step, elapsed)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                                enabled=run.amp_dtype is not None):
                features = run.specaugment(batch.features) if augment else batch.features
                loss, parts = compute_loss(run.model, batch, teacher_forcing_rate=tf_rate,
                                           label_smoothing=t.label_smoothing, ctc_weight=t.ctc_weight,
                                           features=features, guided_attention=guided_weight,
                                           guided_sigma=t.guided_attention_sigma)
            if not dist_utils.all_true(bool(torch.isfinite(loss)), run.info, run.device):
                state.nan_skips += 1
                run.warn("nan", f"non-finite loss at step {state.global_step}: batch skipped "
                                "(counted in the epoch summary; this warning is shown once)")
                run.optimizer.zero_grad(set_to_none=True)
            else:
                run.scaler.scale(loss).backward()
                run.scaler.unscale_(run.optimizer)
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
                run.scaler.step(run.optimizer)
                run.scaler.update()
                run.optimizer.zero_grad(set_to_none=True)
                b = len(batch)
                sums["loss"] += float(loss.detach()) * b
                sums["att"] += parts["att"] * b
                sums["ctc"] += parts["ctc"] * b
                sums["ga"] = sums.get("ga", 0.0) + parts["ga"] * b
                sums["utts"] += b
            state.global_step += 1
            state.batch += 1
            sums["batches"] += 1
            bar.update(len(batch))
            if run.info.is_main and state.global_step % max(1, cfg.logging.log_every) == 0:
                avg = sums["loss"] / max(1, sums["utts"])
                bar.set_postfix(loss=f"{avg:.3f}", lr=f"{lr:.2e}", tf=f"{tf_rate:.2f}")
                run.log.log({"train/loss": float(loss.detach()), "train/att": parts["att"],
                             "train/ctc": parts["ctc"], "train/lr": lr, "train/teacher_forcing": tf_rate,
                             "train/epoch": epoch + state.batch / max(1, run.steps_per_epoch)},
                            step=state.global_step)
            run.rng_at_batch_start = None
            every = t.checkpoint_every_minutes
            if every > 0 and time.monotonic() - run.last_save >= every * 60:
                save_last(run)
    except KeyboardInterrupt:
        # the interrupted batch is dropped: save the state from before it
        save_last(run, rng=run.rng_at_batch_start)
        run.saved_on_interrupt = True
        bar.close()
        run.log.line(f"interrupted: saved {run.run_dir / 'last.pt'} at epoch {epoch + 1}, batch {state.batch}")
        raise
    finally:
        bar.close()
    seconds = time.monotonic() - start
    utts = max(1, sums["utts"])
    return {"train_loss": sums["loss"] / utts, "train_att": sums["att"] / utts, "train_ctc": sums["ctc"] / utts,
            "train_ga": sums.get("ga", 0.0) / utts, "utts_per_s": n_utts / max(seconds, 1e-9), "lr": lr, "teacher_forcing": tf_rate}


def evaluate_dev(run: Run) -> tuple[DevResult, dict[str, float]]:
    """Score the dev set on rank 0; every rank gets the metrics."""
    from src.data.dataset import make_loader

    cfg, t = run.cfg, run.cfg.training
    dev = DevResult()
    if run.info.is_main:
        loader = make_loader(run.dev_set, dataclasses.replace(cfg.data, num_workers=min(cfg.data.num_workers, 1)),
                             shuffle=False, seed=0)
        dev = evaluate(run.core, loader, run.device, label_smoothing=t.label_smoothing, ctc_weight=t.ctc_weight,
                       max_length_ratio=0.25 * total_reduction(cfg.model), amp_dtype=run.amp_dtype)
    return dev, dist_utils.broadcast_object(dev.metrics(), run.info)


def evaluate_at_budget(run: Run, rng: dict[str, Any]) -> None:
    """The time budget ended mid-epoch: score dev once more, so that best.pt gets
    the last weights when they are the best. ``rng``: the RNG state saved in
    last.pt at the stop, kept so that a resume continues exactly from there."""
    state = run.state
    _, dev_metrics = evaluate_dev(run)
    dev_lev = dev_metrics["dev_lev"]
    improved = not math.isnan(dev_lev) and dev_lev < state.best_dev_lev
    if improved:
        state.best_dev_lev = dev_lev
        metrics = {**dev_metrics, "epoch": state.epoch + state.batch / max(1, run.steps_per_epoch)}
        save_last(run, metrics, rng=rng)  # same position and RNG, new best_dev_lev
        if run.info.is_main:
            save_checkpoint(run.run_dir / "best.pt", checkpoint_payload(run, metrics))
    run.log.line(f"at the budget: dev lev {dev_lev:.2f} cer {dev_metrics['dev_cer']:.3f}"
                 f"{'  *best*' if improved else ''}")


def end_of_epoch(run: Run, epoch: int, train_metrics: dict[str, float]) -> None:
    """Dev evaluation (rank 0), schedule updates (all ranks), checkpoints, summary."""
    from src.data.dataset import make_loader

    cfg, state, t = run.cfg, run.state, run.cfg.training
    dev, dev_metrics = evaluate_dev(run)

    state.aligned = state.aligned or dev_metrics["dev_alignment"] >= t.teacher_forcing.trigger_alignment
    tf_before = state.teacher_forcing["rate"]
    state.teacher_forcing = next_teacher_forcing(
        TeacherForcingState(**state.teacher_forcing), t.teacher_forcing, epoch=epoch,
        alignment=dev_metrics["dev_alignment"], dev_cer=dev_metrics["dev_cer"]).as_dict()
    dev_lev = dev_metrics["dev_lev"]
    if t.scheduler == "plateau" and not math.isnan(dev_lev):
        state.plateau = dataclasses.asdict(plateau_update(PlateauState(**state.plateau), dev_lev,
                                                          factor=t.plateau_factor, patience=t.plateau_patience))
    improved = not math.isnan(dev_lev) and dev_lev < state.best_dev_lev
    if improved:
        state.best_dev_lev = dev_lev
    state.epoch = epoch + 1
    state.batch = 0
    sums = dict(state.epoch_sums)
    state.epoch_sums = TrainState().epoch_sums
    metrics = {**train_metrics, **dev_metrics, "epoch": epoch + 1, "nan_skips": state.nan_skips}
    save_last(run, metrics)
    if run.info.is_main:
        if improved:
            save_checkpoint(run.run_dir / "best.pt", checkpoint_payload(run, metrics))
        png = run.run_dir / "attention" / f"epoch_{epoch + 1:03d}.png"
        if dev.attention is not None:
            save_attention_png(dev.attention, png, f"epoch {epoch + 1}  align {dev.alignment:.2f}\n"
                               f"hyp: {dev.hypothesis[:90]}\nref: {dev.reference[:90]}")
            run.log.image("dev/attention", png, state.global_step, dev.hypothesis)
        run.log.log({f"dev/{k[4:]}": v for k, v in dev_metrics.items()} | {
            "train/epoch_loss": train_metrics["train_loss"], "train/utts_per_s": train_metrics["utts_per_s"],
            "train/nan_skips": state.nan_skips}, step=state.global_step)
        run.log.line(f"  dev sample  hyp: {dev.hypothesis}\n  dev sample  ref: {dev.reference}", console=False)
    run.log.line(
        f"epoch {epoch + 1}/{t.epochs}  train {train_metrics['train_loss']:.3f} "
        f"(att {train_metrics['train_att']:.3f} ctc {train_metrics['train_ctc']:.3f} ga {train_metrics['train_ga']:.3f})  "
        f"dev loss {dev_metrics['dev_loss']:.3f} lev {dev_lev:.2f} cer {dev_metrics['dev_cer']:.3f} "
        f"align {dev_metrics['dev_alignment']:.2f}  tf {tf_before:.3f}->{state.teacher_forcing['rate']:.3f}  "
        f"lr {train_metrics['lr']:.2e}  {train_metrics['utts_per_s']:.1f} utt/s  "
        f"{run.elapsed_minutes():.1f} min{'  *best*' if improved else ''}"
        f"{f'  skipped {state.nan_skips} non-finite batches' if state.nan_skips else ''}"
        f"  ({sums['batches']} batches)"
    )


def train(cfg: Config) -> Run:
    """Train per ``cfg`` (resuming when asked and possible); returns the finished Run."""
    run = setup_run(cfg)
    state, t = run.state, cfg.training
    try:
        if state.epoch >= t.epochs:
            run.log.line(f"nothing to do: {run.run_dir / 'last.pt'} has finished {state.epoch} of "
                         f"{t.epochs} epochs; raise training.epochs to continue")
            return run
        if t.max_minutes > 0 and state.elapsed_minutes >= t.max_minutes:
            run.log.line(f"nothing to do: the run has used its budget training.max_minutes={t.max_minutes}")
            return run
        if state.global_step == 0 and run.device.type == "cuda":
            probe_largest_batches(run)
        for epoch in range(state.epoch, t.epochs):
            train_metrics = train_one_epoch(run, epoch)
            end_of_epoch(run, epoch, train_metrics)
        state.finished = True
        run.log.line(f"done: {t.epochs} epochs, best dev lev {state.best_dev_lev:.2f}, "
                     f"{run.elapsed_minutes():.1f} min; checkpoints in {run.run_dir}")
    except KeyboardInterrupt:
        if not run.saved_on_interrupt:  # e.g. during the dev evaluation: resume redoes it
            save_last(run)
            run.log.line(f"interrupted: saved {run.run_dir / 'last.pt'}")
        raise
    except StopTraining:
        run.log.line(f"time budget training.max_minutes={t.max_minutes} reached at epoch {state.epoch + 1}, "
                     f"batch {state.batch}: saved {run.run_dir / 'last.pt'}")
        if state.batch > 0:  # weights trained since the last dev evaluation
            evaluate_at_budget(run, rng_state())
    finally:
        if run.log is not None:
            run.log.finish()
        dist_utils.cleanup()
    return run
