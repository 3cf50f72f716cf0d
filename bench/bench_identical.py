"""Bit-identical training across a restructuring: train each family briefly on the bundled sample with
two checkouts and compare every tensor of the final weights.

    python bench/bench_identical.py OLD_CHECKOUT NEW_CHECKOUT [--out /tmp/identical] [key=value ...]

Runs, in each checkout, ``python train.py [--preset=none] model.family=F training.epochs=E`` (LAS 2 epochs, DS2 and
the Conformer 1) on CPU with 2 threads, no final check, and prints per family how many tensors of
last.pt's model are equal bit for bit. Exit 1 when any differs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

RUNS = {"las": 2, "ds2": 1, "transformer": 1}


def train(checkout: Path, out: Path, family: str, epochs: int, extra: list[str]) -> Path:
    run_dir = out / family
    args = [sys.executable, "train.py", f"model.family={family}", f"training.epochs={epochs}",
            "logging.wandb=disabled", f"logging.run_dir={run_dir}", "training.final_check=false",
            "data.num_workers=0", "training.device=cpu", "training.resume=false", *extra]
    if "--preset" in (checkout / "train.py").read_text():
        args.insert(2, "--preset=none")  # config.yaml's settings alone, as before presets existed
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{family}.log", "w") as log:
        subprocess.run(args, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return run_dir / "last.pt"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]  # our own files: either format


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/identical"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both sides, e.g. to hold a setting "
                                                     "whose behaviour changed on purpose")
    args = parser.parse_intermixed_args()
    ok = True
    for family, epochs in RUNS.items():
        a = weights(train(args.old, args.out / "old", family, epochs, args.overrides))
        b = weights(train(args.new, args.out / "new", family, epochs, args.overrides))
        same = sum(1 for k in a if k in b and torch.equal(a[k], b[k]))
        print(f"{family}: {same}/{len(a)} tensors bit-identical ({epochs} epochs; keys equal: {a.keys() == b.keys()})")
        ok &= same == len(a) == len(b)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
