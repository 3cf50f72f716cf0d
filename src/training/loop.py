"""The training loop: it knows no model family.

    train(cfg)                        the whole run (train.py calls only this)
    setup_run(cfg) -> Run             device, process group, data, model, optimizer, resume
    train_one_epoch(run, epoch)       one pass over this rank's batches
    end_of_epoch(run, epoch, ...)     dev evaluation, hooks, checkpoints, the summary line
    probe_largest_batches(run)        OOM before epoch 0 -> advice, not a crash hours in

Each batch: ``out = model(features, feature_lens, tokens, token_lens, **options)``
(the family's objective, src/models/interface.py) with the options the family
asks of ``training:`` plus those of its hooks (src/training/hooks.py: teacher
forcing and guided attention for families with attention); then backward,
clip, step. A batch whose loss or gradient is not finite is skipped and
counted; a checkpoint is never written with a non-finite weight.

Run directory (``logging.run_dir``): config.yaml (resolved), last.pt (every
epoch, every ``checkpoint_every_minutes``, on the time budget, on Ctrl-C and on
SIGTERM), best.pt (by dev mean Levenshtein), attention/epoch_XXX.png (families
with attention), train.log.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src import distributed as dist_utils
from src.atomic import check_writable_dir, write_text_atomic
from src.checkpoint import load_checkpoint
from src.config import Config, dump_yaml
from src.errors import Terminated, UserError
from src.models import build_model, count_parameters
from src.schedules import (PlateauState, plateau_update, specaugment_begins, specaugment_deadline, specaugment_strength,
                           training_progress)
from src.training.evaluation import DevResult, compute_loss, evaluate, save_attention_png
from src.training.hooks import hooks_for
from src.training.runlog import RunLog, WarnOnce
from src.training.state import (
    Run,
    TrainState,
    check_resumable,
    lr_for_step,
    new_epoch_sums,
    rng_neutral_iter,
    rng_state,
    save_best,
    save_last,
    save_snapshot,
    seed_everything,
    set_rng_state,
)
from src.vocab import VOCAB

# --------------------------------------------------------------------------
# Parts of a run


@functools.cache
def cpu_runs_bf16_recurrent() -> bool:
    """Whether this CPU runs LSTM and GRU layers under bfloat16 autocast. oneDNN's bf16 recurrent
    kernels need AVX-512; on an AVX2-only CPU (seen here on an AMD EPYC) the forward pass raises
    "could not create a primitive descriptor for the LSTM forward propagation primitive"."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for layer in (nn.LSTM(4, 4, batch_first=True), nn.GRU(4, 4, batch_first=True)):
                layer(torch.zeros(1, 2, 4))  # (B=1, T=2, 4)
    except RuntimeError:
        return False
    return True


def autocast_dtype(amp: str, device: torch.device, model: nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype of training and dev scoring, or None for fp32.

    CUDA: bf16 when asked for or (auto) when the GPU has it, else fp16 with a GradScaler (not measured
    here: no GPU was available). CPU: bf16 only when asked for (``training.amp=bf16``; the matrix
    products and recurrent layers run in bfloat16, weights, optimizer state and losses stay fp32);
    auto keeps fp32 there. A ``model`` with recurrent layers on a CPU whose oneDNN cannot run them in
    bf16 is a one-line error rather than a crash at the first step. Anything else (e.g. mps) runs fp32."""
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("config: training.amp=bf16 but this GPU has no bfloat16; use training.amp=fp16 or auto")
        if amp == "bf16" or amp == "auto" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise UserError("config: training.amp=fp16 needs a CUDA GPU; on the CPU use training.amp=bf16, auto or none")
    if device.type == "cpu" and amp == "bf16":
        recurrent = model is not None and any(isinstance(m, nn.RNNBase) for m in model.modules())
        if recurrent and not cpu_runs_bf16_recurrent():
            raise UserError("config: training.amp=bf16 but this CPU cannot run LSTM/GRU layers in bfloat16 "
                            "(oneDNN needs AVX-512); use training.amp=none (or auto)")
        return torch.bfloat16
    return None


class SubsetDataset(torch.utils.data.Dataset):
    """Some utterances of a SpeechDataset, keeping ``frame_lengths``/``names`` for the sampler."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.frame_lengths = np.asarray(dataset.frame_lengths)[self.indices]
        self.names = [dataset.names[i] for i in self.indices]
        self.has_transcripts = dataset.has_transcripts

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = dict(self.dataset[int(self.indices[i])])
        item["index"] = i
        return item


class SpecAugment(nn.Module):
    """Frequency and time masks (Park et al., 2019), drawn independently for every utterance.

    Each mask has a width drawn uniformly from 0..strength * max width and a start drawn
    uniformly where it fits; time masks fall within the utterance's real frames (a mask in
    the padding of a short utterance would be wasted). Masked values become 0, the
    utterance mean after per-utterance normalisation. ``strength`` (0-1) comes from
    schedules.specaugment_strength; 0 returns the features unchanged and draws nothing.

    With ``freq_warp`` > 0, each utterance's frequency axis is first stretched by a factor
    alpha drawn from 1 +- perturb * freq_warp, as vocal tract length perturbation (VTLP;
    Jaitly and Hinton, 2013) does: bin f reads the input at f / alpha up to a boundary, above
    which a second straight line keeps the top bin in place (``warp_sources``).

    With ``time_stretch`` > 0, each utterance is first resampled in time to a length of
    round(rate * frames), rate drawn from 1 +- perturb * time_stretch: speed perturbation (Ko
    et al., 2015) done on the features rather than the audio (``stretch``). The lengths change,
    so forward returns them with the features.

    ``perturb`` is the masks' ``strength`` unless ``training.specaugment.perturb`` is ``always``:
    then the warp and the stretch run at full range from the first step, while the masks wait
    for their trigger. Unlike masks, which hide what the model has to hear, they change how it
    sounds (another vocal tract, another speaking rate), so they need not wait for overfitting.
    """

    def __init__(self, sa_cfg):
        super().__init__()
        self.freq_mask, self.n_freq_masks = sa_cfg.freq_mask, sa_cfg.n_freq_masks
        self.time_mask, self.n_time_masks = sa_cfg.time_mask, sa_cfg.n_time_masks
        self.freq_warp = sa_cfg.freq_warp
        self.time_stretch = sa_cfg.time_stretch

    @staticmethod
    def warp_sources(alpha: torch.Tensor, dim: int, boundary: float = 0.8) -> torch.Tensor:
        """Where each output bin reads the input, for warp factors alpha (B,): -> (B, D) float
        positions in [0, D - 1]. The warp w(f) = alpha * f holds up to f0 = boundary * top /
        max(alpha, 1) and then runs straight to w(top) = top; this is its inverse."""
        top = float(dim - 1)
        bins = torch.arange(dim, device=alpha.device, dtype=torch.float32)[None, :]  # (1, D)
        alpha = alpha[:, None]  # (B, 1)
        f0 = boundary * top / alpha.clamp(min=1.0)  # (B, 1): the knee, in input bins
        upper = f0 + (bins - alpha * f0) * (top - f0) / (top - alpha * f0)  # (B, D)
        return torch.where(bins <= alpha * f0, bins / alpha, upper).clamp(0.0, top)

    @classmethod
    def warp(cls, features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """features (B, T, D), alpha (B,) -> (B, T, D), each utterance's bins linearly interpolated
        at its warp_sources."""
        dim = features.size(2)
        source = cls.warp_sources(alpha, dim)  # (B, D)
        low = source.floor().long().clamp(max=dim - 2)  # (B, D): the bin below each source
        frac = (source - low).to(features.dtype)[:, None, :]  # (B, 1, D)
        index = low[:, None, :].expand(-1, features.size(1), -1)  # (B, D) -> (B, T, D)
        below, above = features.gather(2, index), features.gather(2, index + 1)  # (B, T, D) each
        return torch.lerp(below, above, frac)  # exact at frac 0 and 1: alpha 1 changes nothing

    @staticmethod
    def stretch(features: torch.Tensor, lens: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, D), lens (B,), rate (B,) -> (B, T2, D) and the new lens (B,): utterance b
        becomes L2 = max(1, round(rate * L)) frames, frame j linearly interpolated at input position
        j * (L - 1) / (L2 - 1), so its first and last real frames stay where they are; zero padded."""
        frames = features.size(1)
        lens = lens.to(features.device)
        new_lens = (lens.to(torch.float32) * rate).round().long().clamp(min=1)  # (B,)
        scale = (lens - 1).to(torch.float32) / (new_lens - 1).clamp(min=1).to(torch.float32)  # (B,): input frames per output frame
        out_frames = int(new_lens.max())
        positions = torch.arange(out_frames, device=features.device, dtype=torch.float32)  # (T2,)
        source = (positions[None, :] * scale[:, None]).clamp(max=(lens - 1).clamp(min=0)[:, None].float())  # (B, T2)
        low = source.floor().long()  # (B, T2)
        frac = (source - low).to(features.dtype)[:, :, None]  # (B, T2, 1)
        dim = features.size(2)
        below = features.gather(1, low[:, :, None].expand(-1, -1, dim))  # (B, T2) -> (B, T2, D)
        above = features.gather(1, (low + 1).clamp(max=frames - 1)[:, :, None].expand(-1, -1, dim))  # (B, T2, D)
        stretched = torch.lerp(below, above, frac)  # (B, T2, D); frac 0 at the last real frame
        real = positions[None, :] < new_lens[:, None]  # (B, T2)
        return stretched.masked_fill(~real[:, :, None], 0.0), new_lens

    @staticmethod
    def _masks(n: int, max_width: float, sizes: torch.Tensor, length: int) -> torch.Tensor:
        """``n`` bands per row, each of a width drawn from 0..floor(max_width), within the row's
        ``sizes`` (B,): -> (B, length) bool, True where masked."""
        positions = torch.arange(length, device=sizes.device)  # (L,)
        masked = torch.zeros(sizes.size(0), length, dtype=torch.bool, device=sizes.device)
        for _ in range(n):
            width = (torch.rand(sizes.shape, device=sizes.device) * (int(max_width) + 1)).long()
            width = torch.minimum(width, sizes)  # (B,)
            first = (torch.rand(sizes.shape, device=sizes.device) * (sizes - width + 1)).long()  # (B,)
            masked |= (positions[None, :] >= first[:, None]) & (positions[None, :] < (first + width)[:, None])
        return masked

    def forward(self, features: torch.Tensor, lens: torch.Tensor, strength: float = 1.0,
                perturb: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, D), lens (B,) -> features (B, T2, D) and lens (B,): stretched in time
        (time_stretch > 0; otherwise T2 = T and the same lens), warped (freq_warp > 0), with the
        masked bands set to 0. ``perturb`` is the share of the stretch and warp ranges (``strength``
        when None, as with ``perturb: with_masks``); a share of 0 draws nothing for that part."""
        perturb = strength if perturb is None else perturb
        if strength <= 0.0 and perturb <= 0.0:
            return features, lens
        lens = lens.to(features.device)
        if self.time_stretch > 0.0 and perturb > 0.0:
            rate = 1.0 + perturb * self.time_stretch * (2.0 * torch.rand(lens.shape, device=features.device) - 1.0)
            features, lens = self.stretch(features, lens, rate)  # (B,) rates in 1 +- perturb * time_stretch
        if self.freq_warp > 0.0 and perturb > 0.0:
            alpha = 1.0 + perturb * self.freq_warp * (2.0 * torch.rand(lens.shape, device=features.device) - 1.0)
            features = self.warp(features, alpha)  # (B,) factors in 1 +- perturb * freq_warp
        if strength <= 0.0:
            return features, lens
        batch, frames, dim = features.shape
        freq = self._masks(self.n_freq_masks, strength * self.freq_mask, torch.full_like(lens, dim), dim)  # (B, D)
        time = self._masks(self.n_time_masks, strength * self.time_mask, lens, frames)  # (B, T)
        return features.masked_fill(freq[:, None, :] | time[:, :, None], 0.0), lens  # (B, 1, D) | (B, T, 1) -> (B, T, D)


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


def config_summary(cfg: Config) -> str:
    """The few settings a person checks at start (the whole resolved config is in run_dir/config.yaml)."""
    t, d = cfg.training, cfg.data
    budget = f", budget {t.max_minutes:g} min" if t.max_minutes > 0 else ""
    return (f"config: family {cfg.model.family}, {t.epochs} epochs{budget}, lr {t.lr:g} ({t.scheduler}), "
            f"batches <= {d.max_utterances_per_batch} utts / {d.max_frames_per_batch} frames, "
            f"decoding {cfg.decoding.method}; all settings: {cfg.logging.run_dir}/config.yaml")


def setup_run(cfg: Config) -> Run:
    """Device, process group, data, model, optimizer, resume state, logging."""
    check_writable_dir(cfg.logging.run_dir, "logging.run_dir")  # refuse a read-only or misplaced run_dir before any work
    device = dist_utils.choose_device(cfg.training.device, dist_utils.local_rank_from_env())
    info = dist_utils.init_distributed(device)
    run_dir = Path(cfg.logging.run_dir)
    warn = WarnOnce()

    root, train_set, dev_set = _load_data(cfg, info)
    seed_everything(cfg.training.seed)  # same initial weights on every rank
    model = build_model(cfg.model, cfg.data.n_mels, len(VOCAB)).to(device)
    optimizer = make_optimizer(model, cfg.training)
    amp_dtype = autocast_dtype(cfg.training.amp, device, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    from src.data.dataset import LengthBucketSampler

    steps_per_epoch = len(LengthBucketSampler(
        train_set.frame_lengths, cfg.data.max_frames_per_batch, cfg.data.max_utterances_per_batch,
        shuffle=True, seed=cfg.training.seed, num_replicas=info.world_size, rank=info.rank))

    state = TrainState()
    last = run_dir / "last.pt"
    ckpt = None
    notice = None
    if cfg.training.resume and last.is_file():
        ckpt = load_checkpoint(last, map_location="cpu")
        notice = check_resumable(ckpt, cfg, last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState.from_checkpoint(ckpt["train_state"])
        state.finished = False

    if info.is_main:  # written once the config, the data and the checkpoint have all been accepted
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    run = Run(cfg=cfg, device=device, info=info, model=dist_utils.wrap_model(model, info, device),
              optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype, train_set=train_set, dev_set=dev_set,
              run_dir=run_dir, state=state, steps_per_epoch=steps_per_epoch, warn=warn,
              minutes_at_start=state.elapsed_minutes,
              loss_options=type(model).loss_options(cfg.training) if hasattr(model, "loss_options") else {},
              hooks=hooks_for(model, cfg.training, state.hooks))
    run.sync_hook_state()
    if specaugment_needed(cfg.training.specaugment):
        run.specaugment = SpecAugment(cfg.training.specaugment).to(device)
    run.log = RunLog(cfg, run_dir, info.is_main, warn, state.wandb_id)
    state.wandb_id = run.log.wandb_id
    run.log.line(config_summary(cfg))
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
    run.log.line(
        f"data {root}: train {cfg.data.train_partition} {len(train_set)} utts, dev {cfg.data.dev_partition} "
        f"{len(dev_set)} utts; model {cfg.model.family} {n_params / 1e6:.2f}M parameters; device {device}"
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


# --------------------------------------------------------------------------
# Training


class StopTraining(Exception):
    """The wall-clock budget is used up (a checkpoint has been written)."""


class TerminationRequest:
    """SIGTERM (cluster preemption, ``timeout``, ``kill``) handled like Ctrl-C.

    Inside the batch loop the signal only sets a flag, checked before each
    batch, so the run stops between two optimizer steps and last.pt resumes
    exactly; anywhere else (dev evaluation, set-up) it raises at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_batch_loop = False
        self._previous = None

    def __enter__(self) -> "TerminationRequest":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self.in_batch_loop:
            raise Terminated("SIGTERM")


def progress_of(run: Run, step: int, elapsed_minutes: float) -> float:
    """Training progress 0-1 (schedules.training_progress): steps, or the share of a time budget."""
    t = run.cfg.training
    return training_progress(step, run.total_steps, elapsed_minutes / t.max_minutes if t.max_minutes > 0 else 0.0)


def specaugment_needed(sa) -> bool:
    """Whether training augments at all: masks (``start`` >= 0), or the warp and stretch that
    ``perturb: always`` applies from the first step even with the masks off (``start`` -1)."""
    perturbs = sa.perturb == "always" and (sa.freq_warp > 0 or sa.time_stretch > 0)
    return sa.start >= 0 or perturbs


def specaugment_from(run: Run) -> float:
    """Progress from which the SpecAugment masks grow: ``start`` (trigger progress), or the progress
    at which the overfit trigger latched (-1, no masks, until then)."""
    sa = run.cfg.training.specaugment
    return sa.start if sa.trigger == "progress" or sa.start < 0 else run.state.specaugment_from


def update_specaugment(run: Run, train_loss: float, dev_loss: float) -> str:
    """After an epoch: latch the overfit trigger (rank 0 decides, every rank follows) and describe
    the masks' strength for the epoch line ("" without SpecAugment)."""
    if run.specaugment is None:
        return ""
    sa, state = run.cfg.training.specaugment, run.state
    progress = progress_of(run, state.global_step, run.elapsed_minutes())
    if sa.trigger == "overfit" and state.specaugment_from < 0:
        t = run.cfg.training
        deadline = specaugment_deadline(sa.until, t.scheduler, t.decay_fraction)
        begins = specaugment_begins(sa.trigger, progress=progress, start=sa.start, train_loss=train_loss,
                                    dev_loss=dev_loss, deadline=deadline, ramp=sa.ramp)
        begins, progress = dist_utils.broadcast_object((begins, progress), run.info)  # rank 0's decision
        if begins:
            state.specaugment_from = progress
    return f"sa {specaugment_strength(progress, specaugment_from(run), sa.ramp):.2f}"


def shared_elapsed_minutes(run: Run) -> float:
    """Training minutes so far; under DDP with a budget, rank 0's clock on every rank
    (the budget stop and a time-annealed lr must agree across ranks)."""
    minutes = run.elapsed_minutes()
    if run.info.enabled and run.cfg.training.max_minutes > 0:
        box = torch.tensor([minutes], dtype=torch.float64, device=run.device)
        torch.distributed.broadcast(box, src=0)
        minutes = float(box.item())
    return minutes


def gradient_norm(run: Run) -> torch.Tensor:
    """Clip to training.grad_clip (when > 0) and return the global gradient norm (inf/NaN if any is)."""
    clip = run.cfg.training.grad_clip
    return torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip if clip > 0 else math.inf)


def skip_batch(run: Run, batch, what: str) -> None:
    """Count a skipped batch and warn once, naming its utterances."""
    run.state.nan_skips += 1
    run.state.epoch_sums["skipped"] += 1
    names = ", ".join(batch.names[:4]) + (f" and {len(batch.names) - 4} more" if len(batch.names) > 4 else "")
    run.warn("nan", f"non-finite {what} at step {run.state.global_step} (utterances {names}): batch skipped "
                    "(counted in the epoch summary; this warning is shown once)")
    run.optimizer.zero_grad(set_to_none=True)


def train_one_epoch(run: Run, epoch: int, stop: TerminationRequest | None = None) -> dict[str, float]:
    """One pass over this rank's batches of ``epoch`` (resuming at run.state.batch)."""
    from src.data.dataset import make_loader

    cfg, state, t = run.cfg, run.state, run.cfg.training
    stop = stop or TerminationRequest()
    shuffle = epoch >= t.sortagrad_epochs  # SortaGrad: the first epochs go shortest first
    loader = make_loader(run.train_set, cfg.data, shuffle=shuffle, seed=t.seed, epoch=epoch,
                         num_replicas=run.info.world_size, rank=run.info.rank, skip_batches=state.batch)
    n_utts = sum(len(b) for b in loader.batch_sampler)
    options = run.batch_options()  # fixed for the epoch: hooks change only between epochs
    run.model.train()
    bar = tqdm(total=n_utts, unit="utt", desc=f"epoch {epoch + 1}/{t.epochs}", disable=not run.info.is_main,
               leave=False, dynamic_ncols=True)
    sums = state.epoch_sums
    start = time.monotonic()
    lr = math.nan
    try:
        stop.in_batch_loop = True
        for batch in rng_neutral_iter(loader):
            run.rng_at_batch_start = rng_state()
            if dist_utils.any_true(stop.requested, run.info, run.device):
                raise Terminated("SIGTERM")
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
                if run.specaugment is not None:
                    strength = specaugment_strength(progress_of(run, state.global_step, elapsed),
                                                    specaugment_from(run), t.specaugment.ramp)
                    perturb = 1.0 if t.specaugment.perturb == "always" else strength
                    features, lens = run.specaugment(batch.features, batch.feature_lens, strength, perturb)
                    batch = dataclasses.replace(batch, features=features, feature_lens=lens)
                out = compute_loss(run.model, batch, **options)
            loss = out.loss
            if not dist_utils.all_true(bool(torch.isfinite(loss)), run.info, run.device):
                skip_batch(run, batch, "loss")
            else:
                run.scaler.scale(loss).backward()
                run.scaler.unscale_(run.optimizer)
                norm = gradient_norm(run)  # the same on every rank: DDP has averaged the gradients
                if not bool(torch.isfinite(norm)):
                    skip_batch(run, batch, "gradient")
                    run.scaler.update()  # fp16: lowers the scale after an overflow (no-op when disabled)
                else:
                    run.scaler.step(run.optimizer)
                    run.scaler.update()
                    run.optimizer.zero_grad(set_to_none=True)
                    b = len(batch)
                    sums["loss"] += float(loss.detach()) * b
                    for name, value in out.parts.items():
                        sums[name] = sums.get(name, 0.0) + value * b
                    sums["utts"] += b
            state.global_step += 1
            state.batch += 1
            sums["batches"] += 1
            bar.update(len(batch))
            if run.info.is_main and state.global_step % max(1, cfg.logging.log_every) == 0:
                avg = sums["loss"] / max(1, sums["utts"])
                postfix = {"loss": f"{avg:.3f}", "lr": f"{lr:.2e}"}
                for hook in run.hooks:
                    postfix.update(hook.progress())
                bar.set_postfix(postfix)
                run.log.log({"train/loss": float(loss.detach()), "train/lr": lr,
                             **{f"train/{k}": v for k, v in out.parts.items()}, **{f"train/{k}": v for k, v in options.items()},
                             "train/epoch": epoch + state.batch / max(1, run.steps_per_epoch)},
                            step=state.global_step)
            run.rng_at_batch_start = None
            every = t.checkpoint_every_minutes
            if every > 0 and time.monotonic() - run.last_save >= every * 60:
                save_last(run)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated) between batches
        # an interrupted batch is dropped: save the state from before it
        save_last(run, rng=run.rng_at_batch_start)
        run.saved_on_interrupt = True
        bar.close()
        run.log.line(f"{_interruption(stop)}: saved {run.run_dir / 'last.pt'} at epoch {epoch + 1}, "
                     f"batch {state.batch}")
        raise
    finally:
        stop.in_batch_loop = False
        bar.close()
    seconds = time.monotonic() - start
    utts = max(1, sums["utts"])
    parts = {k: v / utts for k, v in sums.items() if k not in new_epoch_sums()}
    # every rank has the same number of batches of about the same size: the run's throughput is world_size x this
    utts_per_s = n_utts * run.info.world_size / max(seconds, 1e-9)
    return {"train_loss": sums["loss"] / utts, "parts": parts, "utts_per_s": utts_per_s, "lr": lr,
            "batches": sums["batches"], "skipped": sums["skipped"]}


def _interruption(stop: TerminationRequest) -> str:
    return "terminated (SIGTERM)" if stop.requested else "interrupted"


def dev_decoding(cfg: Config):
    """Dev scoring during training: test.py's decoder (training.dev_decoder=test), or the same
    settings made greedy (fast, but a looping greedy decoder can rank checkpoints unlike the beam)."""
    if cfg.training.dev_decoder == "test":
        return cfg.decoding
    return dataclasses.replace(cfg.decoding, method="greedy")


def evaluate_dev(run: Run) -> tuple[DevResult, dict[str, float]]:
    """Score the dev set on rank 0; every rank gets the metrics."""
    from src.data.dataset import loader_workers, make_decoding_loader

    cfg = run.cfg
    dev = DevResult()
    if run.info.is_main:
        # batched as test.py batches: fewer, wider steps of the decoder loop than the training batches
        workers = min(loader_workers(cfg.data.num_workers), 1)
        loader = make_decoding_loader(run.dev_set, cfg.data, cfg.decoding.batch_size, num_workers=workers)
        dev = evaluate(run.core, loader, run.device, options=run.dev_options(), hooks=run.hooks,
                       decoding=dev_decoding(cfg), amp_dtype=run.amp_dtype)
    return dev, dist_utils.broadcast_object(dev.metrics(), run.info)


def epoch_position(run: Run) -> float:
    """Epochs done, with the share of the one in progress (the ``epoch`` of a checkpoint's metrics)."""
    return run.state.epoch + run.state.batch / max(1, run.steps_per_epoch)


def evaluate_at_budget(run: Run, rng: dict[str, Any]) -> DevResult:
    """The time budget ended mid-epoch: score dev once more, so that best.pt gets
    the last weights when they are the best. ``rng``: the RNG state saved in
    last.pt at the stop, kept so that a resume continues exactly from there."""
    state = run.state
    dev, dev_metrics = evaluate_dev(run)
    dev_lev = dev_metrics["dev_lev"]
    improved = not math.isnan(dev_lev) and dev_lev < state.best_dev_lev
    metrics = {**dev_metrics, "epoch": epoch_position(run)}
    run.final_is_best = improved
    if improved:
        state.best_dev_lev = dev_lev
        save_last(run, metrics, rng=rng)  # same position and RNG, new best_dev_lev
        save_best(run, metrics)
    save_snapshot(run, state.epoch + 1, metrics)  # the epoch in progress; a resume finishes and rewrites it
    run.log.line(f"at the budget: dev lev {dev_lev:.2f} cer {dev_metrics['dev_cer']:.3f}"
                 f"{'  *best*' if improved else ''}")
    return dev


def end_of_epoch(run: Run, epoch: int, train_metrics: dict[str, Any]) -> DevResult:
    """Dev evaluation (rank 0), hooks and schedule updates (all ranks), checkpoints, summary."""
    state, t = run.state, run.cfg.training
    dev, dev_metrics = evaluate_dev(run)
    hook_summary = "  ".join(hook.end_of_epoch(epoch, dev_metrics) for hook in run.hooks)
    hook_summary = "  ".join(filter(None, [hook_summary, update_specaugment(run, train_metrics["train_loss"],
                                                                            dev_metrics["dev_loss"])]))
    dev_lev = dev_metrics["dev_lev"]
    if t.scheduler == "plateau" and not math.isnan(dev_lev):
        state.plateau = dataclasses.asdict(plateau_update(PlateauState(**state.plateau), dev_lev,
                                                          factor=t.plateau_factor, patience=t.plateau_patience))
    improved = not math.isnan(dev_lev) and dev_lev < state.best_dev_lev
    run.final_is_best = improved
    if improved:
        state.best_dev_lev = dev_lev
    state.epoch = epoch + 1
    state.batch = 0
    state.epoch_sums = new_epoch_sums()
    state.finished = state.epoch >= t.epochs
    metrics = {"train_loss": train_metrics["train_loss"], **train_metrics["parts"], **dev_metrics,
               "epoch": epoch + 1, "nan_skips": state.nan_skips}
    save_last(run, metrics)
    if improved:
        save_best(run, metrics)
    save_snapshot(run, epoch + 1, metrics)
    if run.info.is_main:
        png = run.run_dir / "attention" / f"epoch_{epoch + 1:03d}.png"
        if dev.attention is not None:
            save_attention_png(dev.attention, png, f"epoch {epoch + 1}  {hook_summary}\n"
                               f"hyp: {dev.hypothesis[:90]}\nref: {dev.reference[:90]}")
            run.log.image("dev/attention", png, state.global_step, dev.hypothesis)
        run.log.log({f"dev/{k[4:]}": v for k, v in dev_metrics.items()} | {
            "train/epoch_loss": train_metrics["train_loss"], "train/utts_per_s": train_metrics["utts_per_s"],
            "train/nan_skips": state.nan_skips}, step=state.global_step)
        run.log.line(f"  dev sample  hyp: {dev.hypothesis}\n  dev sample  ref: {dev.reference}", console=False)
    parts = " ".join(f"{k} {v:.3f}" for k, v in train_metrics["parts"].items())
    skipped = train_metrics["skipped"]
    run.log.line(
        f"epoch {epoch + 1}/{t.epochs}  train {train_metrics['train_loss']:.3f}{f' ({parts})' if parts else ''}  "
        f"dev loss {dev_metrics['dev_loss']:.3f} lev {dev_lev:.2f} cer {dev_metrics['dev_cer']:.3f}"
        f"{' ' + hook_summary if hook_summary else ''}  "
        f"lr {train_metrics['lr']:.2e}  {train_metrics['utts_per_s']:.1f} utt/s  "
        f"{run.elapsed_minutes():.1f} min{'  *best*' if improved else ''}"
        f"{f'  skipped {skipped} non-finite batches' if skipped else ''}"
        f"  ({train_metrics['batches']} batches)"
    )
    return dev


def _dev_with_test_decoder(run: Run, model: nn.Module, desc: str) -> tuple[float, float, list[str], list[str]]:
    """(mean Levenshtein, CER, hypotheses, references) of ``model`` on dev with test.py's decoder."""
    from src.inference import decode_dataset
    from src.metrics import cer, mean_levenshtein

    threads = torch.get_num_threads()
    hyps, refs = decode_dataset(model, run.dev_set, dataclasses.replace(run.cfg.data, num_workers=0),
                                run.cfg.decoding, desc=desc)
    lev, rate = mean_levenshtein(hyps, refs), cer(hyps, refs)
    torch.set_num_threads(threads)  # numba's OpenMP layer resets torch's thread count
    return lev, rate, hyps, refs


def final_dev_report(run: Run, n_examples: int = 3) -> None:
    """Score best.pt on dev with the decoder test.py will use (decoding.*), and show a few
    transcripts next to their references, so that the last number printed is the one to expect.

    training.final_check: when best.pt was picked by the greedy dev score and the final weights
    (the end of the schedule's cool-down) are not best.pt, score them too, and make them best.pt
    if test.py's decoder does better with them. A greedy decoder that loops can rank the
    cooled-down weights below an earlier epoch's that the beam with CTC scoring does worse with."""
    best = run.run_dir / "best.pt"
    if not run.info.is_main or not best.is_file() or len(run.dev_set) == 0:
        return
    from src.checkpoint import model_from_checkpoint
    from src.inference import decoding_description

    cfg = run.cfg
    model = model_from_checkpoint(load_checkpoint(best), run.device)
    lev, rate, hyps, refs = _dev_with_test_decoder(run, model, "dev with best.pt")
    decoder = f"test.py's decoder ({decoding_description(cfg.decoding)})"
    run.log.line(f"best.pt on {cfg.data.dev_partition} ({len(hyps)} utts) with {decoder}: "
                 f"mean Levenshtein {lev:.2f}, CER {rate:.3f}")
    if cfg.training.final_check and cfg.training.dev_decoder == "greedy" and not run.final_is_best:
        final_lev, final_rate, final_hyps, _ = _dev_with_test_decoder(run, run.core, "dev with the final weights")
        keep = final_lev < lev
        run.log.line(f"the final weights with {decoder}: mean Levenshtein {final_lev:.2f}, CER {final_rate:.3f}"
                     f"{': they are best.pt now' if keep else ''} (training.final_check)")
        if keep:
            save_best(run, {"epoch": epoch_position(run), "dev_lev_test_decoder": final_lev,
                            "dev_cer_test_decoder": final_rate})
            hyps = final_hyps
    for name, ref, hyp in list(zip(run.dev_set.names, refs, hyps))[:n_examples]:
        run.log.line(f"  {name}\n    ref: {ref}\n    hyp: {hyp}")


def train(cfg: Config) -> Run:
    """Train per ``cfg`` (resuming when asked and possible); returns the finished Run."""
    with TerminationRequest() as stop:
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
                train_metrics = train_one_epoch(run, epoch, stop)
                end_of_epoch(run, epoch, train_metrics)
            decoder = "greedy" if t.dev_decoder == "greedy" else "test.py's decoder"
            run.log.line(f"done: {t.epochs} epochs, best dev lev {state.best_dev_lev:.2f} ({decoder}), "
                         f"{run.elapsed_minutes():.1f} min; checkpoints in {run.run_dir}")
            final_dev_report(run)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM
            if not run.saved_on_interrupt:  # e.g. during the dev evaluation: resume redoes it
                save_last(run)
                run.log.line(f"{_interruption(stop)}: saved {run.run_dir / 'last.pt'}")
            raise
        except StopTraining:
            run.log.line(f"time budget training.max_minutes={t.max_minutes} reached at epoch {state.epoch + 1}, "
                         f"batch {state.batch}: saved {run.run_dir / 'last.pt'}")
            if state.batch > 0:  # weights trained since the last dev evaluation
                evaluate_at_budget(run, rng_state())
            final_dev_report(run)
        finally:
            if run.log is not None:
                run.log.finish()
            dist_utils.cleanup()
    return run
