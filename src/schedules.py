"""Schedules as pure functions: learning rate, plateau cuts, teacher forcing, alignment.

Everything here is a function of numbers (step, epoch, metrics) and a small
plain-data state, so a checkpoint stores the state as a dict and a resumed run
computes exactly the same values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

# --------------------------------------------------------------------------
# Learning rate


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: (step + 1) / warmup_steps, reaching 1 after ``warmup_steps`` steps."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def progress_after_warmup(step: int, warmup_steps: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """0-1 over the steps after warmup, or the share of a time budget used when that runs ahead."""
    span = max(1, total_steps - warmup_steps)
    return min(1.0, max((step - warmup_steps) / span, time_fraction))


def cosine_lr(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
              time_fraction: float = 0.0) -> float:
    """Warmup, then cosine from ``base_lr`` to ``min_lr``.

    Progress after warmup is the larger of the step fraction and
    ``time_fraction`` (the share of a wall-clock budget used, 0 without one),
    so a budgeted run ends annealed whatever its epoch count.
    """
    if step < warmup_steps:
        return base_lr * warmup_factor(step, warmup_steps)
    progress = progress_after_warmup(step, warmup_steps, total_steps, time_fraction)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def wsd_lr(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
           decay_fraction: float, time_fraction: float = 0.0) -> float:
    """Warmup, stable, decay: warmup, then ``base_lr`` held, then a straight line down to
    ``min_lr`` over the last ``decay_fraction`` of the run.

    Progress after warmup is measured as in :func:`cosine_lr` (steps, or the share of a time
    budget when that runs ahead). A cosine spends most of a short budget below its peak; holding
    the peak and cooling down at the end keeps learning fast for longer and ends annealed all the
    same (Hu et al. 2024, MiniCPM; Hägele et al. 2024, who find it matches cosine at equal compute).
    """
    if step < warmup_steps:
        return base_lr * warmup_factor(step, warmup_steps)
    progress = progress_after_warmup(step, warmup_steps, total_steps, time_fraction)
    decay_start = 1.0 - decay_fraction
    if progress <= decay_start:
        return base_lr
    return base_lr + (min_lr - base_lr) * (progress - decay_start) / decay_fraction


def training_progress(step: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """How far a run is, 0-1: the larger of the step fraction and the share of a time budget used."""
    return min(1.0, max(step / max(1, total_steps), time_fraction))


def specaugment_deadline(until: float, scheduler: str, decay_fraction: float) -> float:
    """Progress by which the overfit trigger's masks must be at full width: ``until``, and never later
    than the start of wsd's cool-down (``1 - decay_fraction``), whatever ``until`` says."""
    cool_down = 1.0 - decay_fraction if scheduler == "wsd" else 1.0
    return min(until, cool_down)


def specaugment_begins(trigger: str, *, progress: float, start: float, train_loss: float, dev_loss: float,
                       deadline: float = 1.0, ramp: float = 0.0) -> bool:
    """Whether SpecAugment switches on after an epoch that ended at ``progress`` (latched by the caller).

    progress: once ``progress`` reaches ``start``.
    overfit:  once, past ``start``, the epoch's mean training loss is below the dev loss. Both are
              the same objective (label smoothing and CTC included); the training loss also carries
              dropout and scheduled sampling, so it is the higher of the two until the model fits the
              utterances it trains on better than unheard ones. Before that, masks only slow learning
              (an underfit 20-minute run lost 3 points of dev CER to them); after it, they are the
              cure. NaN losses never trigger, and neither does an epoch after which the masks could
              not reach full width (``progress + ramp``) by ``deadline`` (specaugment_deadline):
              masks that ramp in while the learning rate anneals cost 20-minute runs 0.8 and 1.3
              points of dev CER, against the same runs without them.
    A negative ``start`` disables SpecAugment.
    """
    if start < 0 or progress < start:
        return False
    if trigger == "progress":
        return True
    if trigger == "overfit":
        return progress + ramp <= deadline and bool(train_loss < dev_loss)  # False when either is NaN
    raise ValueError(f"unknown SpecAugment trigger {trigger!r}")


def specaugment_strength(progress: float, start: float, ramp: float) -> float:
    """Share of the full SpecAugment mask widths at ``progress``: 0 before ``start`` (or when
    ``start`` < 0), then rising linearly to 1 over ``ramp`` (at once when ``ramp`` is 0).

    A ramp instead of a switch: masks at full width from one batch to the next made the
    training loss jump by a quarter and dev CER rise for an epoch or two.
    """
    if start < 0 or progress < start:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (progress - start) / ramp)


@dataclass
class PlateauState:
    """Reduce-on-plateau bookkeeping: the lr is base_lr * scale (after warmup)."""

    best: float = math.inf
    bad_epochs: int = 0
    scale: float = 1.0


def plateau_update(state: PlateauState, metric: float, *, factor: float, patience: int) -> PlateauState:
    """After an epoch with dev ``metric`` (lower is better): cut ``scale`` by ``factor``
    once ``patience`` epochs in a row brought no improvement."""
    if metric < state.best:
        return PlateauState(best=metric, bad_epochs=0, scale=state.scale)
    bad = state.bad_epochs + 1
    if bad > patience:
        return PlateauState(best=state.best, bad_epochs=0, scale=state.scale * factor)
    return PlateauState(best=state.best, bad_epochs=bad, scale=state.scale)


def plateau_lr(step: int, state: PlateauState, *, base_lr: float, min_lr: float, warmup_steps: int) -> float:
    return max(min_lr, base_lr * state.scale) * warmup_factor(step, warmup_steps)


# --------------------------------------------------------------------------
# Teacher forcing


@dataclass
class TeacherForcingState:
    """rate: the teacher forcing rate of the coming epoch; triggered: the decay
    has started (latched); stage: index into TeacherForcingConfig.stages."""

    rate: float = 1.0
    triggered: bool = False
    stage: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def teacher_forcing_triggered(tf_cfg, *, epoch: int, alignment: float, dev_cer: float) -> bool:
    """Whether the decay condition holds after (0-based) ``epoch``.

    epoch:     epoch >= trigger_epoch
    aligned:   dev attention alignment (:func:`attention_alignment`) >= trigger_alignment
    dev_error: greedy dev CER < trigger_dev_cer
    """
    if tf_cfg.trigger == "epoch":
        return epoch >= tf_cfg.trigger_epoch
    if tf_cfg.trigger == "aligned":
        return alignment >= tf_cfg.trigger_alignment
    if tf_cfg.trigger == "dev_error":
        return dev_cer < tf_cfg.trigger_dev_cer
    raise ValueError(f"unknown teacher forcing trigger {tf_cfg.trigger!r}")


def next_teacher_forcing(state: TeacherForcingState, tf_cfg, *, epoch: int, alignment: float,
                         dev_cer: float) -> TeacherForcingState:
    """The state for the epoch after ``epoch``.

    Once triggered (and from then on, whatever the metrics do), each epoch
    multiplies the rate by the current stage's factor, never going below that
    stage's floor; a stage whose floor is reached hands over to the next one.
    After the last stage the rate stays at its floor.
    """
    triggered = state.triggered or teacher_forcing_triggered(
        tf_cfg, epoch=epoch, alignment=alignment, dev_cer=dev_cer
    )
    if not triggered:
        return TeacherForcingState(rate=state.rate, triggered=False, stage=state.stage)
    rate, stage = state.rate, state.stage
    stages = tf_cfg.stages
    while stage < len(stages) and rate <= float(stages[stage][1]):
        stage += 1  # this stage's floor is already reached
    if stage < len(stages):
        factor, floor = float(stages[stage][0]), float(stages[stage][1])
        rate = max(floor, rate * factor)
    return TeacherForcingState(rate=rate, triggered=True, stage=stage)


# --------------------------------------------------------------------------
# Alignment


FOCUS_HALF_WIDTH = 1  # frames either side of the peak that count as focused (a pBLSTM frame's neighbours)
BACKWARD_TOLERANCE = 1  # a peak flickering back one frame between two near-equal frames is not penalised


def attention_alignment(attn: torch.Tensor, out_lens: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
    """How well each attention map aligns output to input: (B,) in [0, 1], focus x monotonic coverage.

    attn (B, U, T') attention weights; out_lens (B,) the real output steps of each row; enc_lens (B,)
    its listener frames. Only the (out_lens[b], enc_lens[b]) rectangle counts (each row renormalised
    over it), so padding never changes the figure. With n = out_lens[b], T = enc_lens[b] and p_u the
    frame step u's attention peaks on:

    focus     mean over steps of the weight within FOCUS_HALF_WIDTH frames of p_u: 1 for sharp
              attention, about 3/T for attention spread over the utterance.
    coverage  the share of the T frames passed in order: the peak path 0, p_0, ..., p_{n-1}, T-1
              (from the first frame to the last) covers the frames between two consecutive points
              when it moves forward by at most ``max(2, 2 T / n)`` frames (twice the mean pace),
              minus the length of every backward move longer than BACKWARD_TOLERANCE frames.
              Attention that stalls (stuck on the first frames), never reaches the end, skips part
              of the utterance or runs backwards (the "THE SAME THE SAME" loops of a LAS that has
              not aligned) leaves frames uncovered or pays for its backward moves.

    A clean diagonal scores 1 (sharp) or close to it (spread over a frame or two), so
    ``training.teacher_forcing.trigger_alignment`` (0.9) means: sharp, in order, start to end.
    """
    scores = torch.zeros(attn.size(0), dtype=torch.float64)
    for b in range(attn.size(0)):
        n, frames = int(out_lens[b]), int(enc_lens[b])
        if n < 1 or frames < 1:
            continue
        weights = attn[b, :n, :frames].detach().double().cpu()  # (n, T)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        peaks = weights.argmax(dim=1)  # (n,)
        near = (torch.arange(frames).unsqueeze(0) - peaks.unsqueeze(1)).abs() <= FOCUS_HALF_WIDTH  # (n, T)
        focus = float((weights * near).sum(dim=1).mean())
        path = torch.cat([peaks.new_zeros(1), peaks, peaks.new_full((1,), frames - 1)])  # (n + 2,)
        start, end = path[:-1], path[1:]  # consecutive points (n + 1,)
        max_step = max(2, math.ceil(2 * frames / n))
        forward = (end >= start) & (end - start <= max_step)
        edges = torch.zeros(frames + 1, dtype=torch.long)  # +1 where a covered span starts, -1 after it ends
        edges.index_add_(0, start[forward], torch.ones_like(start[forward]))
        edges.index_add_(0, end[forward] + 1, -torch.ones_like(end[forward]))
        covered = int((edges.cumsum(0)[:frames] > 0).sum())
        back = start - end  # > 0 for a backward move
        backward = int(back[back > BACKWARD_TOLERANCE].sum())
        coverage = min(1.0, max(0.0, (covered - backward) / frames))
        scores[b] = focus * coverage
    return scores
