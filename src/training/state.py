"""Run state and exact resume: what last.pt holds besides the weights, and the RNG bookkeeping.

Resume (``training.resume``, on when run_dir/last.pt exists) restores model,
optimizer, schedule, scaler, the hooks' state (teacher forcing ...), epoch,
batch position and the python/numpy/torch RNG states; building a DataLoader
iterator is made RNG-neutral, so on CPU 2 epochs straight and 1 epoch +
resume + 1 epoch give identical weights.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from src import distributed as dist_utils
from src.checkpoint import SNAPSHOT, model_payload, model_spec, prune_snapshots, save_checkpoint
from src.config import Config, to_dict
from src.errors import UserError
from src.models.registry import family_config
from src.schedules import PlateauState
from src.training.runlog import RunLog, WarnOnce

# --------------------------------------------------------------------------
# Random number generators


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values (a checkpoint loads with weights_only)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
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


# --------------------------------------------------------------------------
# State


def new_epoch_sums() -> dict[str, float]:
    """Per-epoch sums: loss and each objective part (times utterances), utterances, batches, skipped."""
    return {"loss": 0.0, "utts": 0, "batches": 0, "skipped": 0}


@dataclass
class TrainState:
    """Where the run is: everything besides weights/optimizer that a resume needs."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0  # optimizer steps so far
    hooks: dict = field(default_factory=dict)  # hook name -> its state (e.g. attention: teacher forcing)
    plateau: dict = field(default_factory=lambda: dataclasses.asdict(PlateauState()))
    best_dev_lev: float = math.inf
    specaugment_from: float = -1.0  # progress at which SpecAugment switched on (trigger overfit); -1: not yet
    nan_skips: int = 0  # batches skipped for a non-finite loss or gradient, over the whole run
    elapsed_minutes: float = 0.0  # training wall clock over all sessions of this run
    epoch_sums: dict = field(default_factory=new_epoch_sums)
    wandb_id: str | None = None
    finished: bool = False

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainState":
        """A TrainState from last.pt's ``train_state`` (src/compat.py has brought old ones up to date)."""
        saved = dict(saved)
        saved["epoch_sums"] = {**new_epoch_sums(), **saved.get("epoch_sums", {})}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def seconds_since_process_start() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, in clock ticks after boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class Run:
    """Everything one training run holds (built by ``src.training.loop.setup_run``)."""

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
    loss_options: dict = field(default_factory=dict)  # the family's objective options from training:
    hooks: list = field(default_factory=list)  # src/training/hooks.py, by capability
    log: RunLog | None = None
    warn: WarnOnce = field(default_factory=WarnOnce)
    specaugment: nn.Module | None = None
    channel: nn.Module | None = None  # training.channel (src/data/augment.py)
    normalize_batches: bool = False  # the loader's batches come unnormalised (setup.normalize_on_device)
    ctc_warmup_steps: int = 0  # training.ctc_warmup_steps, or 0 for a model that cannot warm up on CTC
    session_start: float = field(default_factory=time.monotonic)
    minutes_at_start: float = 0.0
    startup: dict = field(default_factory=dict)  # set-up's clock readings and phases, until the first step says them

    def note_first_step(self) -> None:
        """Once per process, after its first optimiser step: one line saying how long start-up took."""
        if not self.startup:
            return
        now, times = time.monotonic(), dict(self.startup)
        self.startup = {}
        began, ready = times.pop("began"), times.pop("ready")
        since_start = seconds_since_process_start()
        phases = {"imports, config": since_start - (now - began)} if since_start is not None else {}
        phases.update(times)
        phases["first batch"] = now - ready
        total = (f"{since_start:.1f} s after the process started" if since_start is not None
                 else f"{now - began:.1f} s after set-up began")
        if self.log is not None:
            self.log.line(f"start-up: first optimiser step {total} ("
                          + ", ".join(f"{name} {max(0.0, seconds):.1f} s" for name, seconds in phases.items()) + ")")

    @property
    def core(self) -> nn.Module:
        return dist_utils.unwrap(self.model)

    @property
    def total_steps(self) -> int:
        return max(1, self.cfg.training.epochs * self.steps_per_epoch)

    def elapsed_minutes(self) -> float:
        return self.minutes_at_start + (time.monotonic() - self.session_start) / 60.0

    def batch_options(self) -> dict:
        options = dict(self.loss_options)
        for hook in self.hooks:
            options.update(hook.batch_options())
        return options

    def dev_options(self) -> dict:
        options = dict(self.loss_options)
        for hook in self.hooks:
            options.update(hook.dev_options())
        return options

    def sync_hook_state(self) -> None:
        """Copy every hook's state into the TrainState (before a checkpoint)."""
        self.state.hooks = {hook.name: hook.state for hook in self.hooks}


# --------------------------------------------------------------------------
# Checkpoints


def run_model_payload(run: Run) -> dict[str, Any]:
    """The checkpoint's weights part (src/checkpoint.py: WEIGHTS_KEYS) for this run's model."""
    cfg = run.cfg
    return model_payload(run.core, cfg.model.family, family_config(cfg.model), cfg.data, to_dict(cfg))


def checkpoint_payload(run: Run, metrics: dict[str, float] | None = None, rng: dict | None = None) -> dict[str, Any]:
    """last.pt / best.pt: the model payload and the whole training state."""
    run.sync_hook_state()
    cfg = run.cfg
    return {
        **run_model_payload(run),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"kind": cfg.training.scheduler, "plateau": dict(run.state.plateau),
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


def save_best(run: Run, metrics: dict[str, float]) -> None:
    if run.info.is_main:
        save_checkpoint(run.run_dir / "best.pt", checkpoint_payload(run, metrics))


def save_snapshot(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """epoch_NNN.pt: the weights after epoch ``epoch`` (1-based; the epoch in progress at a time
    budget), for checkpoint averaging; only the newest training.keep_epochs are kept."""
    keep = run.cfg.training.keep_epochs
    if run.info.is_main and keep > 0:
        save_checkpoint(run.run_dir / SNAPSHOT.format(epoch), {**run_model_payload(run), "metrics": metrics})
        prune_snapshots(run.run_dir, keep)


# Settings a resume may change without a word: how long to train, where things are, how fast to load.
RESUME_MAY_CHANGE = ("training.epochs", "training.max_minutes", "training.resume", "training.resume_from",
                     "training.resume_changed", "training.checkpoint_every_minutes", "training.device",
                     "data.root", "data.num_workers", "data.in_memory", "data.check", "decoding.",
                     "logging.")


def changed_settings(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) of every setting that differs, bar RESUME_MAY_CHANGE
    (a checkpoint without a saved config, from an old version, is not compared)."""
    changed = []
    for key, value in now.items():
        dotted = f"{prefix}{key}"
        if dotted.startswith(RESUME_MAY_CHANGE) or key not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[key], dict):
            changed += changed_settings(saved[key], value, dotted + ".")
        elif saved[key] != value:
            changed.append((dotted, saved[key], value))
    return changed


def check_resumable(ckpt: dict, cfg: Config, path: Path) -> str | None:
    """UserError when last.pt holds another model than the config asks for; a one-line
    notice (or None) when a setting that shapes the schedule has changed."""
    family, saved_cfg = model_spec(ckpt, path)
    if family != cfg.model.family:
        raise UserError(f"{path}: was trained with model.family={family!r}, the config says {cfg.model.family!r}; "
                        "use another logging.run_dir or training.resume=false to start over")
    saved, now = dataclasses.asdict(saved_cfg), dataclasses.asdict(family_config(cfg.model))
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise UserError(
            f"{path}: was trained with model.{family}.{k}={saved.get(k)!r}, the config says {now[k]!r}; "
            "use another logging.run_dir or training.resume=false to start over"
        )
    if ckpt.get("n_mels") != cfg.data.n_mels:
        raise UserError(f"{path}: was trained with data.n_mels={ckpt.get('n_mels')}; the config says {cfg.data.n_mels}")
    if "train_state" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{path}: holds weights only (an epoch snapshot or an average), no optimizer or training "
                        "state to resume; resume from a last.pt or best.pt, or start over in another logging.run_dir")
    changed = changed_settings(ckpt.get("config") or {}, to_dict(cfg))
    if changed and not cfg.training.resume_changed:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise UserError(f"{path}: settings changed since it was written: {listed}; resume with them anyway with "
                        "training.resume_changed=true, or start over in another logging.run_dir")
    saved_epochs = (ckpt.get("config") or {}).get("training", {}).get("epochs")
    if cfg.training.scheduler in ("cosine", "wsd") and saved_epochs is not None and saved_epochs != cfg.training.epochs:
        return (f"note: training.epochs changed from {saved_epochs} to {cfg.training.epochs} since {path.name}: "
                f"the {cfg.training.scheduler} schedule now runs over the new total from here on (its lr follows "
                f"the new progress), so the weights will not equal a straight {cfg.training.epochs}-epoch run")
    return None
