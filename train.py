"""Train a model: ``python train.py [--preset auto|none|NAME] [--config config.yaml] [key=value ...]``.

A preset (configs/NAME.yaml) is a complete training recipe applied over the config file; without
--preset, train.py picks gpu-FAMILY with a CUDA GPU and cpu-FAMILY without, and says which.
Multi-GPU: ``torchrun --nproc_per_node=N train.py ...`` (DistributedDataParallel).
Everything lives in src/training/; see docs/training.md for the run directory.
"""
from __future__ import annotations

import argparse

from src.config import add_config_args, choose_preset, load_config
from src.errors import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description="Train a speech recogniser, LAS by default (model.family: las, "
                                                 "ds2, transformer); resumes from run_dir/last.pt.")
    add_config_args(parser, presets=True)
    args = parser.parse_args()
    preset, why = choose_preset(args.preset, args.config, args.overrides)
    cfg = load_config(args.config, args.overrides, preset=preset)
    print(f"preset {preset} ({why})", flush=True)
    from src.decoding.lm import check_decoding_lm

    check_decoding_lm(cfg.decoding)  # dev scoring and the final report decode with it
    from src.training import train  # after parsing: --help stays fast

    train(cfg)
    return 0


if __name__ == "__main__":
    run_cli(main)
