"""The training loop: it knows no model family.

    train(cfg)                        the whole run (train.py calls only this)
    train_one_epoch(run, epoch)       one pass over this rank's batches
    end_of_epoch(run, epoch, ...)     dev evaluation, hooks, checkpoints, the summary line

Each batch: ``out = model(features, feature_lens, tokens, token_lens, **options)``
(the family's objective, src/models/interface.py) with the options the family
asks of ``training:`` plus those of its hooks (src/training/hooks.py: teacher
forcing and guided attention for families with attention); then backward,
clip, step. A batch whose loss or gradient is not finite is skipped and
counted; a checkpoint is never written with a non-finite weight. Setting up
(src/training/setup.py), the schedules (schedule.py), dev scoring and the
final report (report.py) live beside it.

Run directory (``logging.run_dir``): config.yaml (resolved), last.pt (every
epoch, every ``checkpoint_every_minutes``, on the time budget, on Ctrl-C and on
SIGTERM), best.pt (by dev mean Levenshtein), attention/epoch_XXX.png (families
with attention), train.log.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from tqdm import tqdm

from src import distributed as dist_utils
from src.atomic import write_text_atomic
from src.config import Config, dump_yaml
from src.data.augment import normalize_batch
from src.data.dataset import make_loader
from src.errors import Terminated
from src.schedules import PlateauState, plateau_update
from src.training.evaluation import DevResult, compute_loss, save_attention_png
from src.training.precision import autocast
from src.training.report import epoch_position, evaluate_dev, final_dev_report
from src.training.schedule import augmentation_strength, lr_for_step, update_specaugment
from src.training.setup import probe_largest_batches, setup_run
from src.training.signals import TerminationRequest
from src.training.state import Run, new_epoch_sums, rng_neutral_iter, rng_state, save_best, save_last, save_snapshot


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


def train_step(run: Run, batch, options: dict, elapsed: float) -> tuple[Any, float]:
    """One optimizer step on ``batch`` (augmented, autocast, clipped; skipped when not finite):
    the family's LossOutput and the learning rate used."""
    state = run.state
    lr = lr_for_step(run, state.global_step, elapsed)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if state.global_step < run.ctc_warmup_steps:  # the encoder alone, on CTC (training.ctc_warmup_steps)
        options = {**options, "ctc_only": True}
    if run.channel is not None and state.global_step >= run.cfg.training.channel.start_step:
        # another channel on the log-mel features, before their normalisation
        batch = dataclasses.replace(batch, features=run.channel(batch.features, batch.feature_lens))
    if run.normalize_batches:  # the per-utterance normalisation the loader left to the device
        batch = dataclasses.replace(batch, features=normalize_batch(batch.features, batch.feature_lens))
    with autocast(run.device, run.amp_dtype):
        if run.specaugment is not None:
            strength, perturb = augmentation_strength(run, state.global_step, elapsed)
            features, lens = run.specaugment(batch.features, batch.feature_lens, strength, perturb)
            batch = dataclasses.replace(batch, features=features, feature_lens=lens)
        out = compute_loss(run.model, batch, **options)
    if not dist_utils.all_true(bool(torch.isfinite(out.loss)), run.info, run.device):
        skip_batch(run, batch, "loss")
        return out, lr
    run.scaler.scale(out.loss).backward()
    run.scaler.unscale_(run.optimizer)
    norm = gradient_norm(run)  # the same on every rank: DDP has averaged the gradients
    if not bool(torch.isfinite(norm)):
        skip_batch(run, batch, "gradient")
        run.scaler.update()  # fp16: lowers the scale after an overflow (no-op when disabled)
        return out, lr
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    sums, b = state.epoch_sums, len(batch)
    sums["loss"] += float(out.loss.detach()) * b
    for name, value in out.parts.items():
        sums[name] = sums.get(name, 0.0) + value * b
    sums["utts"] += b
    return out, lr


def train_one_epoch(run: Run, epoch: int, stop: TerminationRequest | None = None) -> dict[str, float]:
    """One pass over this rank's batches of ``epoch`` (resuming at run.state.batch).

    Ctrl-C or SIGTERM: last.pt is saved with the state from before the interrupted batch, and the
    exception goes on with ``checkpoint_saved`` set. The time budget: last.pt, then StopTraining."""
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
    start = last_save = time.monotonic()
    lr, rng_at_batch_start = math.nan, None
    try:
        stop.in_batch_loop = True
        for batch in rng_neutral_iter(loader):
            rng_at_batch_start = rng_state()
            if dist_utils.any_true(stop.requested, run.info, run.device):
                raise Terminated("SIGTERM")
            elapsed = shared_elapsed_minutes(run)
            if 0 < t.max_minutes <= elapsed:  # checked before the batch: nothing of it is consumed
                save_last(run)
                raise StopTraining
            out, lr = train_step(run, batch.to(run.device), options, elapsed)
            run.note_first_step()
            state.global_step += 1
            if state.global_step == run.ctc_warmup_steps:
                run.log.line(f"CTC warm-up over at step {state.global_step} ({shared_elapsed_minutes(run):.1f} min): "
                             "the decoder joins")
            state.batch += 1
            state.epoch_sums["batches"] += 1
            bar.update(len(batch))
            if run.info.is_main and state.global_step % max(1, cfg.logging.log_every) == 0:
                log_step(run, bar, out, lr, options, epoch)
            rng_at_batch_start = None
            if t.checkpoint_every_minutes > 0 and time.monotonic() - last_save >= t.checkpoint_every_minutes * 60:
                save_last(run)
                last_save = time.monotonic()
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated) between batches
        save_last(run, rng=rng_at_batch_start)  # an interrupted batch is dropped: the state from before it
        err.checkpoint_saved = True  # type: ignore[attr-defined]
        bar.close()
        run.log.line(f"{_interruption(stop)}: saved {run.run_dir / 'last.pt'} at epoch {epoch + 1}, "
                     f"batch {state.batch}")
        raise
    finally:
        stop.in_batch_loop = False
        bar.close()
    sums, seconds = state.epoch_sums, time.monotonic() - start
    utts = max(1, sums["utts"])
    parts = {k: v / utts for k, v in sums.items() if k not in new_epoch_sums()}
    # every rank has the same number of batches of about the same size: the run's throughput is world_size x this
    utts_per_s = n_utts * run.info.world_size / max(seconds, 1e-9)
    return {"train_loss": sums["loss"] / utts, "parts": parts, "utts_per_s": utts_per_s, "lr": lr,
            "batches": sums["batches"], "skipped": sums["skipped"]}


def log_step(run: Run, bar, out, lr: float, options: dict, epoch: int) -> None:
    """The progress bar's postfix and a wandb step log."""
    state = run.state
    postfix = {"loss": f"{state.epoch_sums['loss'] / max(1, state.epoch_sums['utts']):.3f}", "lr": f"{lr:.2e}"}
    for hook in run.hooks:
        postfix.update(hook.progress())
    bar.set_postfix(postfix)
    run.log.log({"train/loss": float(out.loss.detach()), "train/lr": lr,
                 **{f"train/{k}": v for k, v in out.parts.items()}, **{f"train/{k}": v for k, v in options.items()},
                 "train/epoch": epoch + state.batch / max(1, run.steps_per_epoch)}, step=state.global_step)


def _interruption(stop: TerminationRequest) -> str:
    return "terminated (SIGTERM)" if stop.requested else "interrupted"


def improves_best(run: Run, dev_lev: float) -> bool:
    """Whether ``dev_lev`` beats the run's best dev score (then it becomes the best)."""
    improved = not math.isnan(dev_lev) and dev_lev < run.state.best_dev_lev
    if improved:
        run.state.best_dev_lev = dev_lev
    return improved


def evaluate_at_budget(run: Run, rng: dict[str, Any]) -> bool:
    """The time budget ended mid-epoch: score dev once more, so that best.pt gets the last weights
    when they are the best (returned). ``rng``: the RNG state saved in last.pt at the stop, kept so
    that a resume continues exactly from there."""
    _, dev_metrics = evaluate_dev(run)
    metrics = {**dev_metrics, "epoch": epoch_position(run)}
    improved = improves_best(run, dev_metrics["dev_lev"])
    if improved:
        save_last(run, metrics, rng=rng)  # same position and RNG, new best_dev_lev
        save_best(run, metrics)
    save_snapshot(run, run.state.epoch + 1, metrics)  # the epoch in progress; a resume finishes and rewrites it
    run.log.line(f"at the budget: dev lev {dev_metrics['dev_lev']:.2f} cer {dev_metrics['dev_cer']:.3f}"
                 f"{'  *best*' if improved else ''}")
    return improved


def end_of_epoch(run: Run, epoch: int, train_metrics: dict[str, Any]) -> bool:
    """Dev evaluation (rank 0), hooks and schedule updates (all ranks), checkpoints, the summary line.
    Returns whether this epoch's weights became best.pt."""
    state, t = run.state, run.cfg.training
    dev, dev_metrics = evaluate_dev(run)
    hook_summary = "  ".join(hook.end_of_epoch(epoch, dev_metrics, step=state.global_step,
                                               minutes=run.elapsed_minutes()) for hook in run.hooks)
    hook_summary = "  ".join(filter(None, [hook_summary, update_specaugment(run, train_metrics["train_loss"],
                                                                            dev_metrics["dev_loss"],
                                                                            train_metrics["batches"])]))
    dev_lev = dev_metrics["dev_lev"]
    if t.scheduler == "plateau" and not math.isnan(dev_lev):
        state.plateau = dataclasses.asdict(plateau_update(PlateauState(**state.plateau), dev_lev,
                                                          factor=t.plateau_factor, patience=t.plateau_patience))
    improved = improves_best(run, dev_lev)
    state.epoch, state.batch, state.epoch_sums = epoch + 1, 0, new_epoch_sums()
    state.finished = state.epoch >= t.epochs
    metrics = {"train_loss": train_metrics["train_loss"], **train_metrics["parts"], **dev_metrics,
               "epoch": epoch + 1, "nan_skips": state.nan_skips}
    save_last(run, metrics)
    if improved:
        save_best(run, metrics)
    save_snapshot(run, epoch + 1, metrics)
    if run.info.is_main:
        log_epoch(run, epoch, dev, dev_metrics, train_metrics, hook_summary, improved)
        for hook in run.hooks:
            for line in hook.notices():
                run.log.line(line)
    return improved


def log_epoch(run: Run, epoch: int, dev: DevResult, dev_metrics: dict, train_metrics: dict, hook_summary: str,
              improved: bool) -> None:
    """The attention plot, wandb's epoch log and the epoch line (rank 0)."""
    state, t = run.state, run.cfg.training
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
        f"dev loss {dev_metrics['dev_loss']:.3f} lev {dev_metrics['dev_lev']:.2f} cer {dev_metrics['dev_cer']:.3f}"
        f"{' ' + hook_summary if hook_summary else ''}  "
        f"lr {train_metrics['lr']:.2e}  {train_metrics['utts_per_s']:.1f} utt/s  "
        f"{run.elapsed_minutes():.1f} min{'  *best*' if improved else ''}"
        f"{f'  skipped {skipped} non-finite batches' if skipped else ''}"
        f"  ({train_metrics['batches']} batches)"
    )


def train(cfg: Config) -> Run:
    """Train per ``cfg`` (resuming when asked and possible); returns the finished Run."""
    with TerminationRequest() as stop:
        run = setup_run(cfg)
        state, t = run.state, cfg.training
        final_is_best = False  # whether the last dev evaluation made best.pt (training.final_check)
        try:
            if state.epoch >= t.epochs:
                run.log.line(f"nothing to do: {run.run_dir / 'last.pt'} has finished {state.epoch} of "
                             f"{t.epochs} epochs; raise training.epochs to continue")
                return run
            if t.max_minutes > 0 and state.elapsed_minutes >= t.max_minutes:
                run.log.line(f"nothing to do: the run has used its budget training.max_minutes={t.max_minutes}")
                return run
            if run.info.is_main:  # once the config, data and checkpoint are accepted and there is work to do
                write_text_atomic(run.run_dir / "config.yaml", dump_yaml(cfg))
            if state.global_step == 0 and run.device.type == "cuda":
                probe_largest_batches(run)
            for epoch in range(state.epoch, t.epochs):
                train_metrics = train_one_epoch(run, epoch, stop)
                final_is_best = end_of_epoch(run, epoch, train_metrics)
            decoder = "greedy" if t.dev_decoder == "greedy" else "test.py's decoder"
            run.log.line(f"done: {t.epochs} epochs, best dev lev {state.best_dev_lev:.2f} ({decoder}), "
                         f"{run.elapsed_minutes():.1f} min; checkpoints in {run.run_dir}")
            final_dev_report(run, final_is_best)
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM
            if not getattr(err, "checkpoint_saved", False):  # e.g. during the dev evaluation: resume redoes it
                save_last(run)
                run.log.line(f"{_interruption(stop)}: saved {run.run_dir / 'last.pt'}")
            raise
        except StopTraining:
            run.log.line(f"time budget training.max_minutes={t.max_minutes} reached at epoch {state.epoch + 1}, "
                         f"batch {state.batch}: saved {run.run_dir / 'last.pt'}")
            if state.batch > 0:  # weights trained since the last dev evaluation
                final_is_best = evaluate_at_budget(run, rng_state())
            final_dev_report(run, final_is_best)
        finally:
            if run.log is not None:
                run.log.finish()
            dist_utils.cleanup()
    return run
