"""Where one optimizer step of the default LAS config spends its time: a torch.profiler breakdown.

    python bench/bench_profile.py                        # bench/out/corpus (bench_accuracy.py makes it)
    python bench/bench_profile.py --root data/sample --steps 10 model.las.listener_layers=3

Runs ``--steps`` real training steps (the same step as ``bench_train.py``) under
``torch.profiler`` on the CPU, with a ``record_function`` region around each part:
data (waiting for the loader), listener, speller (the recurrence, attention
included), attention (within the speller), losses, backward, optimizer (clipping and
AdamW). The regions are added by wrapping methods here, so the model code has no
profiling in it. Prints ms per step for each region and the ten aten operators with
the most self time. The profiler adds a few microseconds to every operator, so the
total is a little above an unprofiled step; ratios are what to read.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from cli_args import count, natural  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

REGIONS = ["data", "listener", "speller", "attention", "losses", "backward", "optimizer"]


def wrap(obj, name: str, label: str) -> None:
    """Replace obj.name by the same call inside record_function(label)."""
    import torch

    inner = getattr(obj, name)

    @functools.wraps(inner)
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return inner(*args, **kwargs)

    setattr(obj, name, wrapped)


def main() -> int:
    import torch

    import src.models.las as las_module
    from src.config import load_config
    from src.data.dataset import make_loader
    from src.models import count_parameters
    from src.training.evaluation import compute_loss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="bench/out/corpus", help="data root in the competition layout")
    parser.add_argument("--partition", default="train-clean-100")
    parser.add_argument("--steps", type=count, default=20, help="profiled optimizer steps")
    parser.add_argument("--warmup", type=natural, default=5, help="unprofiled steps first")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import training_setup
    from host import describe, host_load

    load = host_load()
    cfg = load_config("config.yaml", args.overrides)
    if cfg.model.family != "las":
        sys.exit("bench_profile: the regions are LAS's (listener, speller, attention); use model.family=las")
    dataset, model, optimizer, options = training_setup(cfg, args.root, args.partition, torch.device("cpu"))

    wrap(model.listener, "forward", "listener")
    wrap(model, "teacher_forced", "speller")
    wrap(model.speller.attention, "forward", "attention")
    for name in ("attention_cross_entropy", "ctc_loss", "guided_attention_loss"):
        wrap(las_module, name, "losses")

    def step(batch) -> int:
        with torch.profiler.record_function("step"):
            return train_step(batch)

    def train_step(batch) -> int:
        loss = compute_loss(model, batch, **options).loss
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
            optimizer.step()
        return len(batch.names)

    def batches():
        epoch = 0
        while True:
            loader = iter(make_loader(dataset, cfg.data, shuffle=True, seed=cfg.training.seed, epoch=epoch))
            while True:
                with torch.profiler.record_function("step"), torch.profiler.record_function("data"):
                    batch = next(loader, None)
                if batch is None:
                    break
                yield batch
            epoch += 1

    source = batches()
    for _ in range(args.warmup):
        step(next(source))
    start = time.perf_counter()
    for _ in range(args.steps):  # the same number of steps without the profiler, for scale
        step(next(source))
    plain_ms = 1000 * (time.perf_counter() - start) / args.steps
    utts = 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            utts += step(next(source))

    events = {e.key: e for e in prof.key_averages()}
    print(describe(load))
    print(f"bench_profile: cpu ({torch.get_num_threads()} threads), {count_parameters(model) / 1e6:.2f}M parameters, "
          f"{args.root}/{args.partition}, {args.steps} steps of <= {cfg.data.max_utterances_per_batch} utt "
          f"({utts / args.steps:.1f} on average)")
    step_ms = events["step"].cpu_time_total / 1000 / args.steps  # data wait included
    print(f"{step_ms:.0f} ms per step under the profiler; {plain_ms:.0f} ms per step (other batches) without it")
    print(f"{'region':<16}{'ms/step':>9}{'share':>8}")
    for region in REGIONS:
        ms = events[region].cpu_time_total / 1000 / args.steps if region in events else 0.0
        print(f"{region:<16}{ms:>9.1f}{100 * ms / step_ms:>7.1f}%")
    rest = step_ms - sum(events[r].cpu_time_total / 1000 / args.steps for r in REGIONS if r in events and r != "attention")
    print(f"{'rest':<16}{rest:>9.1f}{100 * rest / step_ms:>7.1f}%")
    print("(attention is inside the speller; losses are attention CE, CTC and guided attention; rest: key/value "
          "and CTC projections, the output layer, zero_grad, Python)")
    ops = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
    print(f"\n{'aten operator (self time)':<36}{'ms/step':>9}{'calls/step':>12}")
    for e in ops[:10]:
        print(f"{e.key:<36}{e.self_cpu_time_total / 1000 / args.steps:>9.1f}{e.count / args.steps:>12.0f}")
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)  # a missing corpus or a bad override: one line, exit 2
