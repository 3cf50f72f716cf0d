"""Checkpoint averaging: one model whose weights are the mean of several checkpoints' weights.

Averaging the weights of the last few epochs of a run (as ESPnet and icefall do
before decoding) smooths out the noise of the last updates. A run keeps
weights-only snapshots ``epoch_NNN.pt`` of its last ``training.keep_epochs``
epochs (and of the epoch in progress when ``training.max_minutes`` ends it):

    python -m src.average runs/las                 # the last 5 snapshots -> runs/las/average.pt
    python -m src.average runs/las --last 3 --out avg3.pt
    python -m src.average a.pt b.pt --out ab.pt    # any checkpoints of the same model
    python test.py --checkpoint runs/las/average.pt

Every file must hold the same family, model sizes, vocabulary and front end.
Floating-point tensors are averaged in float64 and stored in their own dtype;
integer tensors (counters) are taken from the newest file. The result is a
weights-only checkpoint (no optimizer state): test.py, transcribe.py and
bench_accuracy.py read it, train.py does not resume from it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


from src.checkpoint import front_end, load_checkpoint, model_spec, save_checkpoint, snapshots, weights_only
from src.errors import UserError, run_cli


def _identity(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What two checkpoints must share to be averaged."""
    family, model_cfg = model_spec(ckpt)
    return {"family": family, "model sizes": model_cfg, "vocabulary": list(ckpt["vocab"]),
            "front end": tuple(front_end(ckpt))}


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The weights-only payload whose tensors are the mean of ``paths``' (UserError when they differ in kind)."""
    if not paths:
        raise UserError("nothing to average: give checkpoint files or a run folder with epoch_*.pt snapshots")
    first = load_checkpoint(paths[0])
    identity, reference = _identity(first), first["model"]
    sums = {k: v.double().clone() if v.is_floating_point() else v for k, v in reference.items()}
    newest = first
    for path in paths[1:]:
        ckpt = load_checkpoint(path)
        other = _identity(ckpt)
        for what, value in identity.items():
            if other[what] != value:
                raise UserError(f"{path}: its {what} differ from {paths[0]}'s; average checkpoints of one model only")
        state = ckpt["model"]
        if state.keys() != reference.keys() or any(state[k].shape != reference[k].shape for k in reference):
            raise UserError(f"{path}: its weights do not match {paths[0]}'s (other names or shapes); "
                            "average checkpoints of one model only")
        for k, v in state.items():
            sums[k] = sums[k] + v.double() if v.is_floating_point() else v  # counters: the newest value
        newest = ckpt
    model = {k: (v / len(paths)).to(reference[k].dtype) if reference[k].is_floating_point() else v
             for k, v in sums.items()}
    return weights_only({**newest, "model": model}, metrics={"averaged": [str(p) for p in paths]})


def resolve_inputs(inputs: list[str], last: int) -> tuple[list[Path], Path]:
    """(checkpoints to average, default output) for the command line's paths."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        run_dir = paths[0]
        found = snapshots(run_dir)
        if not found:
            raise UserError(f"{run_dir}: no epoch_*.pt snapshots; train with training.keep_epochs > 0 "
                            "(or pass checkpoint files)")
        if len(found) < 2:
            raise UserError(f"{run_dir}: averaging needs at least two checkpoints; it has one snapshot "
                            f"({found[0].name}); train longer with training.keep_epochs >= 2, or use {found[0]} as it is")
        if len(found) < last:
            print(f"note: {run_dir} has {len(found)} snapshots; averaging those", file=sys.stderr)
        return found[-last:], run_dir / "average.pt"
    for p in paths:
        if p.is_dir():
            raise UserError(f"{p}: a folder among files; pass one run folder, or checkpoint files only")
    twice = next((p for i, p in enumerate(paths) if p.resolve() in {q.resolve() for q in paths[:i]}), None)
    if twice is not None:
        raise UserError(f"{twice}: given twice; averaging needs distinct checkpoints, pass each file once")
    if len(paths) < 2:
        raise UserError(f"{paths[0]}: averaging needs at least two checkpoints; pass two or more files "
                        "(or a run folder with epoch_*.pt snapshots), or use this one as it is")
    return paths, paths[-1].parent / "average.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.average", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="a run folder (its epoch_*.pt snapshots) or checkpoint files")
    parser.add_argument("--last", type=int, default=5, help="with a run folder: average its newest N snapshots")
    parser.add_argument("--out", default=None, help="output checkpoint (default: average.pt next to the inputs)")
    args = parser.parse_args(argv)
    if args.last < 2:
        raise UserError(f"--last {args.last}: averaging needs at least two checkpoints; use --last 2 or more")
    paths, default_out = resolve_inputs(args.inputs, args.last)
    out = Path(args.out) if args.out else default_out
    if out.resolve() in {p.resolve() for p in paths}:
        raise UserError(f"{out}: is one of the inputs; choose another --out")
    payload = average_checkpoints(paths)
    save_checkpoint(out, payload)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
