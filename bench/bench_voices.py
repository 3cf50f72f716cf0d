"""CER per voice of a scored split: which voices a model's errors come from.

    python test.py --checkpoint bench/out/run-20min/best.pt --split dev-clean data.root=bench/out/corpus
    python bench/bench_voices.py bench/out/run-20min/scores_dev-clean.tsv

Reads the per-utterance file that ``test.py --split`` writes (name, distance, reference,
hypothesis) and the speakers.tsv that ``python -m src.corpus.synth`` wrote into the corpus
(``--speakers``; by default bench/out/corpus/speakers.tsv). An utterance's speaker is the
first field of its name. Prints one line per speaker, best first: its engine, voice,
variant, speaking rate and pitch, and its CER (the sum of its edit distances over the sum of
its reference lengths, as the split's CER); then the spread.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a tab-separated file with a header that holds ``columns``; a one-line SystemExit otherwise."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as err:
        raise SystemExit(f"error: {path}: cannot read it ({err.strerror}); "
                         "see the usage at the top of bench/bench_voices.py") from None
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise SystemExit(f"error: {path}: expected a header with {', '.join(columns)} and rows; "
                         "see the usage at the top of bench/bench_voices.py")
    return rows


def per_speaker(scores: list[dict]) -> dict[str, tuple[int, int, int]]:
    """speaker -> (utterances, edit distance, reference characters), summed over its utterances."""
    totals: dict[str, tuple[int, int, int]] = {}
    for row in scores:
        speaker = row["name"].split("-")[0]
        n, dist, chars = totals.get(speaker, (0, 0, 0))
        totals[speaker] = (n + 1, dist + int(row["distance"]), chars + len(row["reference"]))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, help="scores_<split>.tsv written by test.py --split")
    parser.add_argument("--speakers", type=Path, default=ROOT / "bench" / "out" / "corpus" / "speakers.tsv",
                        help="the corpus' speakers.tsv (python -m src.corpus.synth writes it)")
    args = parser.parse_args()

    scores = read_tsv(args.scores, ("name", "distance", "reference"))
    speakers = {row["speaker"]: row for row in read_tsv(args.speakers, ("speaker", "engine", "voice"))}
    totals = per_speaker(scores)
    # (CER, speaker, utterances, edits), best first
    ranked = sorted((dist / max(chars, 1), spk, n, dist) for spk, (n, dist, chars) in totals.items())
    print(f"{args.scores}: {len(scores)} utterances, {len(ranked)} speakers")
    print(f"{'speaker':<9} {'engine':<7} {'voice':<16} {'variant':<10} {'rate':>5} {'pitch':>5} {'utts':>5} {'CER %':>7}")
    for rate, spk, n, _ in ranked:
        info = speakers.get(spk, {})
        print(f"{spk:<9} {info.get('engine', '?'):<7} {info.get('voice', '?'):<16} {info.get('variant', ''):<10} "
              f"{info.get('speed', ''):>5} {info.get('pitch', ''):>5} {n:>5} {100 * rate:>7.2f}")
    edits = sum(d for *_, d in ranked)
    chars = sum(c for _, _, c in totals.values())
    worst = ranked[len(ranked) - -(-len(ranked) // 4):]  # the quarter (rounded up) with the highest CER
    print(f"split CER {100 * edits / max(chars, 1):.2f}%; per speaker {100 * ranked[0][0]:.2f}-"
          f"{100 * ranked[-1][0]:.2f}% (median {100 * ranked[len(ranked) // 2][0]:.2f}%); the worst quarter of "
          f"the speakers holds {100 * sum(d for *_, d in worst) / max(edits, 1):.0f}% of the edits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
