"""The submission file: written, checked as Kaggle reads it, and scored where references exist.

    write_submission("submission/submission.csv", labels)      # index,label rows, atomically
    check_submission(path, n_expected)                         # header, order, count, characters
    write_scores(path, names, refs, hyps, distances)           # per-utterance TSV, worst first
    score_against_reference(root / "test_reference.csv", hyps)  # a synthesised corpus keeps its answers

The submission is plain ``csv`` so that every error can name its line; the score tables go through
pandas.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from src.atomic import atomic_write
from src.errors import UserError
from src.vocab import ALLOWED_CHARACTERS

DEFAULT_SUBMISSION = "submission/submission.csv"
SUBMISSION_HEADER = ["index", "label"]



def write_submission(path: str | Path, labels: Sequence[str]) -> Path:
    """Write ``index,label`` rows (index 0..N-1 in the given order) atomically."""
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SUBMISSION_HEADER)
        writer.writerows((i, label) for i, label in enumerate(labels))
    return path


def check_submission(path: str | Path, n_expected: int | None = None) -> int:
    """Re-read a submission and check it as Kaggle would; returns the row count.

    Header ``index,label``; indices 0..N-1 in order; N == ``n_expected`` (the
    number of test files) when given; labels use only A-Z, apostrophe, space.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"{path}: submission file is missing or empty; run python test.py")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != SUBMISSION_HEADER:
        raise UserError(f"{path}: first line must be 'index,label', got {','.join(rows[0]) if rows else 'nothing'!r}")
    body = rows[1:]
    if n_expected is not None and len(body) != n_expected:
        raise UserError(f"{path}: {len(body)} rows but the test split has {n_expected} files; decode again")
    for line, row in enumerate(body, start=2):
        if len(row) != 2:
            raise UserError(f"{path}:{line}: expected 2 columns (index,label), got {len(row)}")
        if row[0] != str(line - 2):
            raise UserError(f"{path}:{line}: index {row[0]!r} out of order; expected {line - 2}")
        bad = set(row[1]) - ALLOWED_CHARACTERS
        if bad:
            raise UserError(f"{path}:{line}: characters {''.join(sorted(bad))!r} not allowed (A-Z, apostrophe, space)")
    return len(body)


def write_scores(path: str | Path, names: Sequence[str], refs: Sequence[str], hyps: Sequence[str],
                 distances: np.ndarray) -> Path:
    """Per-utterance TSV (name, distance, reference, hypothesis), worst first, atomically."""
    import pandas as pd

    path = Path(path)
    table = pd.DataFrame({"name": list(names), "distance": np.asarray(distances, dtype=np.int64),
                          "reference": list(refs), "hypothesis": list(hyps)})
    table = table.sort_values(["distance", "name"], ascending=[False, True], kind="stable")
    with atomic_write(path, "w", newline="") as f:
        table.to_csv(f, sep="\t", index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    return path


def score_against_reference(path: Path, hyps: list[str]) -> None:
    """A synthesised corpus (the bundled sample) keeps its test transcripts in test_reference.csv
    (index,label): score the submission as Kaggle would, and show a few lines."""
    if not path.is_file():
        return
    from src.metrics import cer, mean_levenshtein

    import pandas as pd

    refs = pd.read_csv(path, dtype=str, keep_default_na=False)["label"].tolist()
    if len(refs) != len(hyps):
        print(f"note: {path} has {len(refs)} rows for {len(hyps)} test files; not scored")
        return
    print(f"scored against {path}: mean Levenshtein {mean_levenshtein(hyps, refs):.2f} (the competition's metric), "
          f"CER {cer(hyps, refs):.3f}")
    for ref, hyp in list(zip(refs, hyps))[:3]:
        print(f"  ref: {ref}\n  hyp: {hyp}")
