"""Where a command's memory grows: its resident memory (VmRSS) every half second beside its output lines.

    python bench/rss_trace.py -- train.py data.root=bench/out/fullsize-tenth training.epochs=1
    MALLOC_MMAP_THRESHOLD_=4194304 python bench/rss_trace.py -- train.py ...    # glibc's setting, inherited

Runs ``python ARGS`` in the repository (bench_fullsize.Watched: output split at \\n and \\r, VmHWM
polled), then prints the peak, the RSS reached by each of its epoch, done, report and start-up lines,
and the series (40 samples).
"""
from __future__ import annotations

import argparse
import re
import time

from bench_fullsize import Watched, status_kb  # bench/, this script's folder, is on sys.path

LINES = r"(start-up|epoch \d+/\d+ |done|resumed|attention|best\.pt on|wrote)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="+", help="the python command line to watch (after --)")
    argv = parser.parse_args().args
    w = Watched(argv)
    series = []
    while w.proc.poll() is None:
        series.append((time.monotonic() - w.began, status_kb(w.proc.pid, "VmRSS")))
        time.sleep(0.5)
    rc = w.finish()
    if not series:
        series = [(0.0, 0)]
    peak_t, peak = max(series, key=lambda s: s[1])
    print(f"exit {rc}; peak RSS {peak / 2**20:.2f} GiB at {peak_t:.0f} s (VmHWM {w.memory()[0]:.2f} GiB)")
    for t, line in w.lines:
        if re.match(LINES, line):
            reached = max((r for s, r in series if s <= t), default=0)
            print(f"{t:7.1f} s  RSS so far {reached / 2**20:.2f} GiB  {line[:100]}")
    step = max(1, len(series) // 40)
    print("series (s: GiB):", " ".join(f"{s:.0f}:{r / 2**20:.2f}" for s, r in series[::step]))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    from src.errors import run_cli

    run_cli(main)
