"""Everything a run needs before its first step: device, process group, data, model, optimizer,
the resumed state; and the worst-case batches tried once on a GPU.

    run = setup_run(cfg)            # src/training/state.py: Run
    probe_largest_batches(run)      # out of memory -> advice, not a crash hours in
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src import distributed as dist_utils
from src.atomic import check_writable_dir
from src.checkpoint import load_checkpoint
from src.config import Config
from src.data.augment import Channel, SpecAugment, channel_needed, specaugment_needed
from src.data.check import check_data
from src.data.dataset import LengthBucketSampler, SpeechDataset, SubsetDataset, collate
from src.data.layout import resolve_data_root
from src.errors import UserError
from src.models import build_model, count_parameters
from src.models.interface import can_warm_up_on_ctc
from src.training.evaluation import compute_loss
from src.training.hooks import hooks_for
from src.training.precision import autocast, autocast_dtype
from src.training.runlog import RunLog, WarnOnce
from src.training.state import Run, TrainState, check_resumable, rng_state, seed_everything, set_rng_state
from src.vocab import VOCAB


def make_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (1-D parameters).

    The fused implementation (one kernel for all parameters, on CPU as on CUDA) does the
    arithmetic of the default per-parameter loop in less time: on 2 CPU cores, the optimizer
    region of bench/bench_profile.py (clipping included) fell from 19 to 9 ms of a 288 ms step.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(0.9, 0.98), eps=1e-8, fused=fused or None)


def normalize_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether the training batches leave the loader unnormalised, to be normalised per utterance where the
    model runs (src/training/loop.py: normalize_batch): after ``training.channel``, which works on the
    features before their normalisation, and on CUDA, where the loader's workers (the CPU) are what a
    fast GPU waits for (RESULTS.md, the full size: a third of a worker's time per utterance)."""
    return cfg.data.normalize == "utterance" and (channel_needed(cfg.training.channel) or device.type == "cuda")


def _load_data(cfg: Config, info: dist_utils.DistInfo, seconds: dict[str, float], on_device: bool = False):
    """(root, train set, dev set); ``seconds`` gets how long the data check and the indexing took."""
    began = time.monotonic()
    root = resolve_data_root(cfg.data)
    if cfg.data.check:
        if info.is_main:
            check_data(root, [cfg.data.train_partition, cfg.data.dev_partition], n_mels=cfg.data.n_mels)
        dist_utils.barrier(info)
        seconds["data check"] = time.monotonic() - began
    began = time.monotonic()
    kwargs = dict(n_mels=cfg.data.n_mels, normalize=cfg.data.normalize, in_memory=cfg.data.in_memory)
    # normalised where the model runs (normalize_on_device), or by the loader
    train_set = SpeechDataset(root, cfg.data.train_partition, **{**kwargs, "normalize": "none"} if on_device else kwargs)
    dev_set = SpeechDataset(root, cfg.data.dev_partition, **kwargs)
    if len(train_set) < info.world_size:
        raise UserError(f"{root}: {cfg.data.train_partition} has {len(train_set)} utterances, "
                        f"fewer than the {info.world_size} processes")
    if cfg.training.dev_max_utterances and cfg.training.dev_max_utterances < len(dev_set):
        pick = np.unique(np.linspace(0, len(dev_set) - 1, cfg.training.dev_max_utterances).round().astype(np.int64))
        dev_set = SubsetDataset(dev_set, pick)  # spread over the whole (sorted) partition
    seconds["datasets"] = time.monotonic() - began
    return root, train_set, dev_set


def config_summary(cfg: Config) -> str:
    """The few settings a person checks at start (the whole resolved config is in run_dir/config.yaml)."""
    t, d = cfg.training, cfg.data
    budget = f", budget {t.max_minutes:g} min" if t.max_minutes > 0 else ""
    return (f"config: family {cfg.model.family}, {t.epochs} epochs{budget}, lr {t.lr:g} ({t.scheduler}), "
            f"batches <= {d.max_utterances_per_batch} utts / {d.max_frames_per_batch} frames, "
            f"decoding {cfg.decoding.method}; all settings: {cfg.logging.run_dir}/config.yaml")


def setup_run(cfg: Config) -> Run:
    """Device, process group, data, model, optimizer, resume state, logging."""
    check_writable_dir(cfg.logging.run_dir, "logging.run_dir")  # a read-only or misplaced run_dir: before any work
    device = dist_utils.choose_device(cfg.training.device, dist_utils.local_rank_from_env())
    info = dist_utils.init_distributed(device)
    run_dir = Path(cfg.logging.run_dir)
    warn = WarnOnce()

    startup = {"began": time.monotonic()}  # seconds per phase, said after the first step (Run.note_first_step)
    root, train_set, dev_set = _load_data(cfg, info, startup, normalize_on_device(cfg, device))
    began = time.monotonic()
    seed_everything(cfg.training.seed)  # same initial weights on every rank
    model = build_model(cfg.model, cfg.data.n_mels, len(VOCAB)).to(device)
    optimizer = make_optimizer(model, cfg.training)
    amp_dtype = autocast_dtype(cfg.training.amp, device, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    steps_per_epoch = len(LengthBucketSampler(
        train_set.frame_lengths, cfg.data.max_frames_per_batch, cfg.data.max_utterances_per_batch,
        shuffle=True, seed=cfg.training.seed, num_replicas=info.world_size, rank=info.rank))

    state = TrainState()
    last = run_dir / "last.pt"
    ckpt = None
    notice = None
    if cfg.training.resume_from:  # any path; a missing file is a one-line error, not a fresh start
        last = Path(cfg.training.resume_from)
        ckpt = load_checkpoint(last, map_location="cpu")
    elif cfg.training.resume and last.is_file():
        ckpt = load_checkpoint(last, map_location="cpu")
    if ckpt is not None:
        notice = check_resumable(ckpt, cfg, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState.from_checkpoint(ckpt["train_state"])
        state.finished = False

    run = Run(cfg=cfg, device=device, info=info, model=dist_utils.wrap_model(model, info, device),
              optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, train_set=train_set, dev_set=dev_set,
              run_dir=run_dir, state=state, steps_per_epoch=steps_per_epoch, warn=warn,
              minutes_at_start=state.elapsed_minutes,
              loss_options=type(model).loss_options(cfg.training) if hasattr(model, "loss_options") else {},
              hooks=hooks_for(model, cfg.training, state.hooks), startup=startup,
              normalize_batches=normalize_on_device(cfg, device))
    run.sync_hook_state()
    if specaugment_needed(cfg.training.specaugment):
        run.specaugment = SpecAugment(cfg.training.specaugment).to(device)
    if channel_needed(cfg.training.channel):
        run.channel = Channel(cfg.training.channel, cfg.data.n_mels).to(device)
    if cfg.training.ctc_warmup_steps and can_warm_up_on_ctc(model):
        run.ctc_warmup_steps = cfg.training.ctc_warmup_steps
    run.log = RunLog(cfg, run_dir, info.is_main, warn, state.wandb_id)
    state.wandb_id = run.log.wandb_id
    run.log.line(config_summary(cfg))
    if cfg.training.ctc_warmup_steps and not run.ctc_warmup_steps:
        run.log.line(f"training.ctc_warmup_steps={cfg.training.ctc_warmup_steps} does nothing here: model "
                     f"{cfg.model.family} has no decoder to skip or no CTC head")
    elif state.global_step < run.ctc_warmup_steps:
        run.log.line(f"CTC warm-up: the encoder trains on CTC alone until step {run.ctc_warmup_steps}, "
                     "then the decoder joins (training.ctc_warmup_steps)")
    seed_everything(cfg.training.seed + info.rank)  # training randomness differs between ranks
    if ckpt is not None:
        if info.is_main:
            set_rng_state(ckpt["rng"])
        else:  # only rank 0's RNG is saved: the others restart from a fresh, step-dependent seed
            seed_everything(cfg.training.seed + info.rank + 1000003 * state.global_step)
        run.log.line(f"resumed from {last}: epoch {state.epoch + 1}, batch {state.batch}, "
                     f"step {state.global_step}, {state.elapsed_minutes:.1f} min so far")
        if notice:
            run.log.line(notice)
    n_params = count_parameters(run.core)
    startup["model, checkpoint, logging"] = time.monotonic() - began
    startup["ready"] = time.monotonic()
    run.log.line(
        f"data {root}: train {cfg.data.train_partition} {len(train_set)} utts, dev {cfg.data.dev_partition} "
        f"{len(dev_set)} utts; model {cfg.model.family} {n_params / 1e6:.2f}M parameters; device {device}"
        f"{f' x{info.world_size} ranks' if info.enabled else ''}; amp {amp_dtype or 'fp32'}"
    )
    return run


def probe_largest_batches(run: Run, n_batches: int = 2) -> None:
    """Forward + backward the biggest batches once (RNG-neutral, no update).

    Biggest: the most padded frames (B * max T) and the longest utterance. An
    out-of-memory error becomes a UserError that says which setting to lower.
    """
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
            with autocast(run.device, run.amp_dtype):
                out = compute_loss(model, batch, **run.dev_options())
            run.scaler.scale(out.loss).backward()
            model.zero_grad(set_to_none=True)
            del out, batch
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
