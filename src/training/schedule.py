"""The run's schedules, read off its state: learning rate, training progress, augmentation strength.

The formulas are pure functions in src/schedules.py; this module feeds them a run's settings and
position, so the loop asks one question per step (``lr_for_step``, ``augmentation_strength``) and one
per epoch (``update_specaugment``).
"""
from __future__ import annotations

from src import distributed as dist_utils
from src.schedules import (PlateauState, cosine_lr, plateau_lr, specaugment_begins, specaugment_deadline,
                           specaugment_strength, training_progress, wsd_lr)
from src.training.state import Run


def lr_for_step(run: Run, step: int, elapsed_minutes: float) -> float:
    """The learning rate of optimizer step ``step`` under ``training.scheduler``."""
    t = run.cfg.training
    if t.scheduler == "plateau":
        return plateau_lr(step, PlateauState(**run.state.plateau), base_lr=t.lr, min_lr=t.min_lr,
                          warmup_steps=t.warmup_steps)
    time_fraction = elapsed_minutes / t.max_minutes if (t.anneal_by_time and t.max_minutes > 0) else 0.0
    if t.scheduler == "wsd":
        return wsd_lr(step, base_lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps, total_steps=run.total_steps,
                      decay_fraction=t.decay_fraction, time_fraction=time_fraction)
    return cosine_lr(step, base_lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps,
                     total_steps=run.total_steps, time_fraction=time_fraction)


def progress_of(run: Run, step: int, elapsed_minutes: float) -> float:
    """Training progress 0-1 (schedules.training_progress): steps, or the share of a time budget."""
    t = run.cfg.training
    return training_progress(step, run.total_steps, elapsed_minutes / t.max_minutes if t.max_minutes > 0 else 0.0)


def specaugment_from(run: Run) -> float:
    """Progress from which the SpecAugment masks grow: ``start`` (trigger progress), or the progress
    at which the overfit trigger latched (-1, no masks, until then)."""
    sa = run.cfg.training.specaugment
    return sa.start if sa.trigger == "progress" or sa.start < 0 else run.state.specaugment_from


def augmentation_strength(run: Run, step: int, elapsed_minutes: float) -> tuple[float, float]:
    """(masks' strength, perturbation share) for a training step: see src/data/augment.py."""
    sa = run.cfg.training.specaugment
    strength = specaugment_strength(progress_of(run, step, elapsed_minutes), specaugment_from(run), sa.ramp)
    return strength, 1.0 if sa.perturb == "always" else strength


def update_specaugment(run: Run, train_loss: float, dev_loss: float, batches: int) -> str:
    """After an epoch of ``batches`` steps: latch the overfit trigger (rank 0 decides, every rank
    follows) and describe the masks' strength for the epoch line ("" without SpecAugment). An epoch
    with steps of the CTC warm-up never latches it: its training loss is not the dev loss's objective."""
    if run.specaugment is None:
        return ""
    t, state = run.cfg.training, run.state
    sa = t.specaugment
    progress = progress_of(run, state.global_step, run.elapsed_minutes())
    warming_up = state.global_step - batches < run.ctc_warmup_steps
    if sa.trigger == "overfit" and state.specaugment_from < 0 and not warming_up:
        deadline = specaugment_deadline(sa.until, t.scheduler, t.decay_fraction)
        begins = specaugment_begins(sa.trigger, progress=progress, start=sa.start, train_loss=train_loss,
                                    dev_loss=dev_loss, deadline=deadline, ramp=sa.ramp)
        begins, progress = dist_utils.broadcast_object((begins, progress), run.info)  # rank 0's decision
        if begins:
            state.specaugment_from = progress
    return f"sa {specaugment_strength(progress, specaugment_from(run), sa.ramp):.2f}"
