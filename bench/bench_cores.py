"""Does the second core help? Training throughput of train.py over torch threads {1, 2} x loader
workers {0, 1, 2} x features in memory or read per batch, against one pinned core, and two
processes (torchrun, gloo DistributedDataParallel, 1 thread each, the same effective batch).

    python bench/bench_cores.py                      # bench/out/corpus (bench_accuracy.py makes it)
    python bench/bench_cores.py --utterances 0       # whole epochs (4,000 utterances) instead of 1,000
    python bench/bench_cores.py --root data/sample --partition train-clean-100
    python bench/bench_cores.py --repeat 3 --match "2 threads"   # 1 core and the 2-thread rows, 3 runs each

Each row is one epoch of train.py over the first ``--utterances`` training utterances
(symlinked into a temporary copy of the layout; no SortaGrad, so batches are shuffled as in
later epochs; dev scoring limited to 20 utterances and not timed), read from its epoch line.
With ``--repeat N`` every row runs N times, interleaved (row 1, row 2, ..., row 1, ...) so a
slow minute of the host hits all rows alike; the table shows the median and the range.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli_args import count, natural  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]


def epoch_throughput(cmd: list[str], env: dict) -> float:
    """utt/s from the epoch line of a train.py run (the run's throughput, all ranks)."""
    from src.errors import UserError

    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"bench_cores: train.py exited with code {proc.returncode} ({last}); command: {' '.join(cmd)}")
    match = re.search(r"^epoch 1/1 .* ([0-9.]+) utt/s", proc.stdout, flags=re.M)
    if match is None:
        raise UserError(f"bench_cores: no epoch line in the output of {' '.join(cmd)}")
    return float(match.group(1))


def subset_root(root: Path, partition: str, n: int, out: Path) -> Path:
    """A copy of the layout under ``out`` whose ``partition`` holds its first ``n`` utterances
    (symlinks; other partitions linked whole). ``n`` = 0: ``root`` itself."""
    if n <= 0:
        return root
    for child in root.iterdir():
        if child.name != partition:
            (out / child.name).parent.mkdir(parents=True, exist_ok=True)
            (out / child.name).symlink_to(child)
    for sub in (root / partition).iterdir():  # mfcc/ and transcripts/, paired by file name
        if not sub.is_dir():
            continue  # e.g. the validator's cache of this partition: not valid for the subset
        (out / partition / sub.name).mkdir(parents=True)
        for f in sorted(sub.iterdir())[:n]:
            (out / partition / sub.name / f.name).symlink_to(f)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="bench/out/corpus", help="data root in the competition layout")
    parser.add_argument("--partition", default="train-clean-100")
    parser.add_argument("--utterances", type=natural, default=1000,
                        help="train on the first N utterances of the partition (0 = all)")
    parser.add_argument("--repeat", type=count, default=1, help="runs of every row (median and range shown)")
    parser.add_argument("--match", action="append", default=[],
                        help="keep only the rows whose name contains this text (repeatable; the 1-core row is kept)")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args()
    sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
    from host import describe, host_load

    from src.errors import UserError

    if not (Path(args.root) / args.partition).is_dir():
        raise UserError(f"bench_cores: no {args.partition} under {args.root}; make the corpus with "
                        "python bench/bench_accuracy.py, or pass --root and --partition")

    print(describe(host_load()), flush=True)
    from src.config import DataConfig

    batch, frames = DataConfig().max_utterances_per_batch, DataConfig().max_frames_per_batch
    work = Path(tempfile.mkdtemp(prefix="bench_cores-"))
    root = subset_root(Path(args.root).resolve(), args.partition, args.utterances, work / "data")
    common = [f"data.root={root}", f"data.train_partition={args.partition}", "training.epochs=1",
              "training.sortagrad_epochs=0", "training.dev_max_utterances=20", "logging.wandb=disabled",
              "training.resume=false", "training.device=cpu", *args.overrides]
    # The baseline is issue #11's one-core command: 1 thread, no loader workers, pinned to core 0.
    rows = [("1 core (taskset -c 0), 1 thread, 0 workers", ["taskset", "-c", "0", sys.executable, "train.py"],
             {"OMP_NUM_THREADS": "1"}, ["data.num_workers=0"])]
    for threads in (1, 2):
        for in_memory in (False, True):
            for workers in (0, 1, 2):
                rows.append((f"1 process, {threads} thread{'s' if threads > 1 else ''}, {workers} workers"
                             f"{', in memory' if in_memory else ''}", [sys.executable, "train.py"],
                             {"OMP_NUM_THREADS": str(threads)},
                             [f"data.num_workers={workers}", f"data.in_memory={str(in_memory).lower()}"]))
    for workers in (0, 2):
        rows.append((f"2 processes (torchrun, gloo DDP), 1 thread, {workers} workers each",
                     [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py"],
                     {"OMP_NUM_THREADS": "1"},
                     [f"data.max_utterances_per_batch={batch // 2}", f"data.max_frames_per_batch={frames // 2}",
                      f"data.num_workers={workers}"]))
    if args.match:
        rows = rows[:1] + [row for row in rows[1:] if any(text in row[0] for text in args.match)]
    rates: dict[str, list[float]] = {name: [] for name, *_ in rows}
    try:
        for run in range(args.repeat):
            for i, (name, prefix, env_extra, extra) in enumerate(rows):
                env = dict(os.environ, **env_extra)
                rate = epoch_throughput([*prefix, *common, f"logging.run_dir={work / f'{run}-{i}'}", *extra], env)
                rates[name].append(rate)
                print(f"{name:<50}{rate:>8.1f} utt/s" + (f"  (run {run + 1})" if args.repeat > 1 else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rates[rows[0][0]])
    print(describe(host_load()) + "  (after the runs)")
    print(f"\nbench_cores: {args.root}/{args.partition} ({args.utterances or 'all'} utterances), effective batch "
          f"<= {batch} utterances in every row" + (f", median of {args.repeat} runs (range)" if args.repeat > 1 else ""))
    print(f"{'setting':<50}{'utt/s':>8}{'vs 1 core':>11}")
    for name, values in rates.items():
        rate = statistics.median(values)
        spread = f"  ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
        print(f"{name:<50}{rate:>8.1f}{rate / base:>10.2f}x{spread}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from src.errors import run_cli

    run_cli(main)  # a missing corpus, a failing row or a bad override: one line, exit 2
