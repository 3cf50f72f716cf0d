"""Does the second core help? Training throughput of train.py on 1 core, 1 process x 2 threads (with
loader workers, or features in memory without them), and 2 processes (torchrun, gloo
DistributedDataParallel, 1 thread each, the same effective batch).

    python bench/bench_cores.py                      # bench/out/corpus (bench_accuracy.py makes it)
    python bench/bench_cores.py --root data/sample --partition train-clean-100

Each row is one epoch of train.py (no SortaGrad, so batches are shuffled as in later
epochs; dev scoring limited to 20 utterances and not timed), read from its epoch line.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="bench/out/corpus", help="data root in the competition layout")
    parser.add_argument("--partition", default="train-clean-100")
    parser.add_argument("overrides", nargs="*", help="extra train.py key=value overrides")
    args = parser.parse_args()
    sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]
    from host import describe, host_load

    print(describe(host_load()), flush=True)
    from src.config import DataConfig

    batch, frames = DataConfig().max_utterances_per_batch, DataConfig().max_frames_per_batch
    work = Path(tempfile.mkdtemp(prefix="bench_cores-"))
    common = [f"data.root={args.root}", f"data.train_partition={args.partition}", "training.epochs=1",
              "training.sortagrad_epochs=0", "training.dev_max_utterances=20", "logging.wandb=disabled",
              "training.resume=false", "training.device=cpu", *args.overrides]
    rows = [
        ("1 core (taskset -c 0), 1 thread", ["taskset", "-c", "0", sys.executable, "train.py"], {"OMP_NUM_THREADS": "1"}, []),
        ("1 process, 2 threads", [sys.executable, "train.py"], {"OMP_NUM_THREADS": "2"}, []),
        ("1 process, 2 threads, in memory, no loader workers", [sys.executable, "train.py"], {"OMP_NUM_THREADS": "2"},
         ["data.in_memory=true", "data.num_workers=0"]),
        ("2 processes (torchrun, gloo DDP), 1 thread each",
         [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "train.py"], {"OMP_NUM_THREADS": "1"},
         [f"data.max_utterances_per_batch={batch // 2}", f"data.max_frames_per_batch={frames // 2}"]),
    ]
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
    print(f"\nbench_cores: {args.root}/{args.partition}, effective batch <= {batch} utterances in every row")
    print(f"{'setting':<50}{'utt/s':>8}{'vs 1 core':>11}")
    for name, rate in results:
        print(f"{name:<50}{rate:>8.1f}{rate / base:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
