"""Levenshtein throughput: our numba kernels against rapidfuzz and python-Levenshtein.

    python bench/bench_levenshtein.py            # 10,000 pairs, best of 5
    python bench/bench_levenshtein.py --quick    # 2,000 pairs, best of 3

Pairs look like the competition's: references of about 110 characters
(A-Z, apostrophe, space; lengths 60-160), hypotheses with 10-20% character
edits. Every timing includes turning Python strings into whatever the method
needs, and is the best of several repeats; numba's compile (or cache load)
time is measured once, first, and reported on its own line. All methods must
agree on every distance or the script fails.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from src import metrics  # noqa: E402

from cli_args import count  # noqa: E402  (bench/, this script's folder, is on sys.path)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ' "


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(ALPHABET[:-2]) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    hyps, refs = [], []
    for _ in range(n):
        target = rng.randint(60, 160)
        ref = ""
        while len(ref) < target:
            ref = (ref + " " + rng.choice(words)).strip()
        hyp = list(ref)
        for _ in range(int(len(ref) * rng.uniform(0.10, 0.20))):
            k = rng.randrange(len(hyp) + 1)
            op = rng.random()
            if op < 0.5 and k < len(hyp):
                hyp[k] = rng.choice(ALPHABET)
            elif op < 0.75 and k < len(hyp):
                del hyp[k]
            else:
                hyp.insert(k, rng.choice(ALPHABET))
        hyps.append("".join(hyp))
        refs.append(ref)
    return hyps, refs


def best_of(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, np.asarray(out, dtype=np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=count, default=10_000)
    parser.add_argument("--repeats", type=count, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 pairs, 3 repeats")
    parser.add_argument("--with-dp", action="store_true", help="also time the two-row DP kernel (slow)")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.repeats = 2_000, 3
    hyps, refs = make_pairs(args.pairs)
    mean_chars = np.mean([len(r) for r in refs])

    start = time.perf_counter()
    metrics.levenshtein_batch(hyps[:4], refs[:4], threads=1)
    metrics.levenshtein_batch(hyps[:4], refs[:4], threads=2)
    metrics.levenshtein(hyps[0], refs[0])
    warmup = time.perf_counter() - start

    methods = {
        "numba bit-parallel, batch, 1 thread": lambda: metrics.levenshtein_batch(hyps, refs, threads=1),
        "numba bit-parallel, batch, 2 threads": lambda: metrics.levenshtein_batch(hyps, refs, threads=2),
        "numba, one call per pair": lambda: [metrics.levenshtein(h, r) for h, r in zip(hyps, refs)],
    }
    if args.with_dp:
        codes = [(np.frombuffer(h.encode("utf-32-le"), np.int32), np.frombuffer(r.encode("utf-32-le"), np.int32))
                 for h, r in zip(hyps, refs)]
        metrics.levenshtein_dp(codes[0][0], codes[0][1])
        methods["numba two-row DP, 1 thread"] = lambda: [metrics.levenshtein_dp(h, r) for h, r in codes]
    try:
        from rapidfuzz.distance import Levenshtein as rf_lev
        from rapidfuzz import process as rf_process

        methods["rapidfuzz Levenshtein.distance loop"] = lambda: [rf_lev.distance(h, r) for h, r in zip(hyps, refs)]
        if hasattr(rf_process, "cpdist"):
            methods["rapidfuzz process.cpdist, workers=1"] = lambda: rf_process.cpdist(
                hyps, refs, scorer=rf_lev.distance, workers=1)
            methods["rapidfuzz process.cpdist, workers=2"] = lambda: rf_process.cpdist(
                hyps, refs, scorer=rf_lev.distance, workers=2)
    except ImportError:
        print("rapidfuzz not installed: skipped")
    try:
        import Levenshtein as py_lev

        methods["python-Levenshtein distance loop"] = lambda: [py_lev.distance(h, r) for h, r in zip(hyps, refs)]
    except ImportError:
        print("python-Levenshtein not installed: skipped")

    print(f"{args.pairs} pairs, mean reference {mean_chars:.0f} chars, best of {args.repeats}; "
          f"numba compile/cache load (excluded): {warmup:.2f} s")
    reference = None
    rows = []
    for name, fn in methods.items():
        seconds, out = best_of(fn, args.repeats)
        if reference is None:
            reference = out
        elif not np.array_equal(out, reference):
            print(f"MISMATCH: {name} disagrees with the first method")
            return 1
        rows.append((name, seconds))
    base = dict(rows).get("rapidfuzz Levenshtein.distance loop")
    print(f"{'method':40s} {'ms':>9s} {'pairs/s':>12s} {'vs rapidfuzz loop':>18s}")
    for name, seconds in rows:
        ratio = f"{base / seconds:17.2f}x" if base else ""
        print(f"{name:40s} {seconds * 1e3:9.2f} {args.pairs / seconds:12,.0f} {ratio}")
    print(f"all {len(rows)} methods agree on all {args.pairs} distances (mean {reference.mean():.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
