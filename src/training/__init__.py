"""Training, for every model family: ``train(cfg)`` runs epochs, evaluates on dev, checkpoints, resumes.

    loop.py        train, setup_run, train_one_epoch, end_of_epoch, probe_largest_batches
    state.py       TrainState, Run, RNG bookkeeping, checkpoint payloads, resume checks
    evaluation.py  compute_loss (the family's objective on a batch), evaluate (dev loss and decoding)
    hooks.py       attention-only features: teacher forcing, guided attention, alignment
    runlog.py      console, train.log and wandb
"""
from src.training.loop import train

__all__ = ["train"]
