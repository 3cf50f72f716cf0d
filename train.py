"""Train a model: ``python train.py [--config config.yaml] [key=value ...]``.

Multi-GPU: ``torchrun --nproc_per_node=N train.py ...`` (DistributedDataParallel).
Everything lives in src/training/; see docs/training.md for the run directory.
"""
from __future__ import annotations

import argparse

from src.config import add_config_args, load_config
from src.errors import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description="Train a speech recogniser, LAS by default (model.family: las, "
                                                 "ds2, transformer); resumes from run_dir/last.pt.")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    from src.decoding.lm import check_decoding_lm

    check_decoding_lm(cfg.decoding)  # dev scoring and the final report decode with it
    from src.training import train  # after parsing: --help stays fast

    train(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
