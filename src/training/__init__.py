"""Training, for every model family: ``train(cfg)`` runs epochs, evaluates on dev, checkpoints, resumes.

    loop.py        train, train_one_epoch, train_step, end_of_epoch (the loop itself)
    setup.py       setup_run (device, data, model, optimizer, resume), probe_largest_batches
    schedule.py    the run's lr, progress and augmentation strength
    report.py      dev scoring each epoch, the final report with test.py's decoder
    state.py       TrainState, Run, RNG bookkeeping, saving last/best/snapshots, resume checks
    evaluation.py  compute_loss (the family's objective on a batch), evaluate (dev loss and decoding)
    hooks.py       attention-only features: teacher forcing, guided attention, alignment
    precision.py   autocast dtype and block (AMP)
    signals.py     SIGTERM handled like Ctrl-C
    runlog.py      console, train.log and wandb
"""
from src.training.loop import train

__all__ = ["train"]
