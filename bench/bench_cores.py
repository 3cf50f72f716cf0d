"""Does the second core help? Training throughput of train.py over torch threads {1, 2} x loader
workers {0, 1, 2} x features in memory or read per batch, against one pinned core, and two
processes (torchrun, gloo DistributedDataParallel, 1 thread each, the same effective batch).

    python bench/bench_cores.py                      # bench/out/corpus (bench_accuracy.py makes it)
    python bench/bench_cores.py --utterances 0       # whole epochs (4,000 utterances) instead of 1,000
    python bench/bench_cores.py --root data/sample --partition train-clean-100

Each row is one epoch of train.py over the first ``--utterances`` training utterances
(symlinked into a temporary copy of the layout; no SortaGrad, so batches are shuffled as in
later epochs; dev scoring limited to 20 utterances and not timed), read from its epoch line.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epoch_throughput(cmd: list[str], env: dict) -> float:
    """utt/s from the epoch line of a train.py run (the run's throughput, all ranks)."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_cores: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    match = re.search(r"^epoch 1/1 .* ([0-9.]+) utt/s", proc.stdout, flags=re.M)
    if match is None:
        sys.exit(f"bench_cores: no epoch line in the output of {' '.join(cmd)}")
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
    parser.add_argument("--utterances", type=int, default=1000,
                        help="train on the first N utterances of the partition (0 = all)")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args()
    sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
    from host import describe, host_load

    print(describe(host_load()), flush=True)
    from src.config import DataConfig

    batch, frames = DataConfig().max_utterances_per_batch, DataConfig().max_frames_per_batch
    work = Path(tempfile.mkdtemp(prefix="bench_cores-"))
    root = subset_root(Path(args.root).resolve(), args.partition, args.utterances, work / "data")
    common = [f"data.root={root}", f"data.train_partition={args.partition}", "training.epochs=1",
              "training.sortagrad_epochs=0", "training.dev_max_utterances=20", "logging.wandb=disabled",
              "training.resume=false", "training.device=cpu", *args.overrides]
    rows = [("1 core (taskset -c 0), 1 thread, 2 workers", ["taskset", "-c", "0", sys.executable, "train.py"],
             {"OMP_NUM_THREADS": "1"}, [])]
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
    results = []
    try:
        for i, (name, prefix, env_extra, extra) in enumerate(rows):
            env = dict(os.environ, **env_extra)
            rate = epoch_throughput([*prefix, *common, f"logging.run_dir={work / str(i)}", *extra], env)
            results.append((name, rate))
            print(f"{name:<50}{rate:>8.1f} utt/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0][1]
    print(f"\nbench_cores: {args.root}/{args.partition} ({args.utterances or 'all'} utterances), effective batch <= {batch} utterances in every row")
    print(f"{'setting':<50}{'utt/s':>8}{'vs 1 core':>11}")
    for name, rate in results:
        print(f"{name:<50}{rate:>8.1f}{rate / base:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
