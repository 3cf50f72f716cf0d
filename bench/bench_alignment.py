"""What the CTC head's alignment costs per training batch: ``ctc_occupancy`` (src/models/alignment.py)
on batches shaped like the competition's train-clean-100, as each preset batches them.

    python bench/bench_alignment.py                  # cpu-las (12 utterances) and gpu-las (64), 1 and 2 threads

Windowed attention and the CTC-guided attention loss of LAS run this forward-backward recursion on
the host once per training batch (a GPU run copies the CTC head's log-probs to the host for it).
Lengths: train-clean-100's mean of 1,265 frames (up to 2,448), 0.148 characters per frame; the CTC
head reads T/4 frames in both presets. Prints milliseconds per batch (the median of ``--repeats``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from cli_args import count  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {"cpu-las": 12, "gpu-las": 64}  # utterances per batch (data.max_utterances_per_batch)
MEAN_FRAMES, MAX_FRAMES, CHARS_PER_FRAME, CTC_REDUCTION = 1265, 2448, 0.148, 4


def batch(utterances: int, seed: int):
    """Log-probs (B, T'', 31) of a CTC head that has begun to learn (peaky, mostly blank), lengths, characters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    frames = (MEAN_FRAMES + 350 * torch.randn(utterances, generator=g)).clamp(200, MAX_FRAMES).long()
    ctc_frames = (frames + CTC_REDUCTION - 1) // CTC_REDUCTION
    chars = (frames.float() * CHARS_PER_FRAME).long().clamp(max=400)
    logits = torch.randn(utterances, int(ctc_frames.max()), 31, generator=g) * 3
    logits[:, :, 0] += 3.0  # blank most of the time
    labels = torch.randint(3, 31, (utterances, int(chars.max())), generator=g)
    return torch.log_softmax(logits, dim=-1), ctc_frames, labels, chars


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=count, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated numba thread counts")
    args = parser.parse_args()
    import numba

    from host import describe, host_load
    from src.models.alignment import ctc_occupancy

    print(describe(host_load()))
    print(f"{'preset':<9}{'utts':>6}{'threads':>9}{'ms/batch':>10}")
    for preset, utterances in PRESETS.items():
        log_probs, lens, labels, label_lens = batch(utterances, seed=utterances)
        ctc_occupancy(log_probs[:1], lens[:1], labels[:1], label_lens[:1])  # compile outside the clock
        for threads in (int(t) for t in args.threads.split(",")):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ctc_occupancy(log_probs, lens, labels, label_lens)
                times.append(time.perf_counter() - start)
            print(f"{preset:<9}{utterances:>6}{threads:>9}{1000 * statistics.median(times):>10.1f}")
    return 0


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
