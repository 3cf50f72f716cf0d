"""Up-front validation of the competition data: one clear line per problem.

    python -m src.data.check data/11-785-f23-hw4p2 [--partitions dev-clean test-clean] [--n-mels 28]

Without ``--partitions`` it checks the data a run needs, the competition
layout: a training partition (train-clean-100 and/or train-clean-360),
dev-clean and test-clean must all be there (a missing one is an error naming
it), and every split folder present is checked. ``--partitions`` checks only
the partitions named (train.py checks its train and dev partitions, test.py
the split it decodes).

Checks every split folder: folders present, features and transcripts paired
by name, then every ``.npy`` header (shape (T, n_mels), float dtype, T > 0, not
truncated), then - the deep pass - every array (no NaN/Inf, no magnitude
above ``MAX_FEATURE_MAGNITUDE`` = 1e4, far beyond any log-mel; transcripts
``<sos> ... <eos>`` over the vocabulary, not empty). A successful deep check
leaves a small stamp file in the split folder keyed by the files' names,
sizes and modification times, so the next run skips the reading.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from src.errors import UserError, run_cli

from .layout import (
    DOWNLOAD_HINT,
    FEATURES_ONLY,
    PARTITIONS,
    Utterance,
    check_root_layout,
    feature_problem,
    feature_values_problem,
    list_folder,
    load_npy,
    partition_folders,
    present_folders,
    read_npy_header,
    transcript_problem,
    truncation_problem,
)

STAMP_NAME = ".check-ok.json"
STAMP_VERSION = 2  # 2: the deep pass also bounds the magnitude of feature values
FRAME_SECONDS = 0.010


def _stamp_key(utts: list[Utterance], n_mels: int) -> str:
    """Digest of (file name, size, mtime) for every file of the split, plus the settings."""
    h = hashlib.sha1(f"v{STAMP_VERSION} n_mels={n_mels}\n".encode())
    for u in utts:
        for p in (u.features, u.transcript):
            if p is None:
                continue
            st = os.stat(p)
            h.update(f"{p.parent.name}/{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_stamp(path: Path, key: str) -> dict | None:
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(stamp, dict) and stamp.get("key") == key:
        return stamp
    return None


def _write_stamp(path: Path, stamp: dict) -> None:
    """Atomic write; silently skipped where the folder is read-only."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _check_headers(u: Utterance, n_mels: int) -> tuple[str | None, int]:
    """(problem or None, frames) from the headers of one utterance's files."""
    try:
        h = read_npy_header(u.features)
    except UserError as err:
        return str(err), 0
    problem = feature_problem(h, n_mels)
    if problem is not None:
        return f"{u.features}: {problem}", 0
    if u.transcript is not None:
        try:
            t = read_npy_header(u.transcript)
        except UserError as err:
            return str(err), 0
        if t.dtype.kind not in "USO":
            return f"{u.transcript}: transcript has dtype {t.dtype}, expected strings (one character per element); re-create it", 0
        if len(t.shape) != 1:
            return f"{u.transcript}: expected a 1-D transcript array, got shape {t.shape}; store one character per element", 0
        if t.shape[0] == 0:
            return f"{u.transcript}: empty transcript (0 elements); remove the utterance or fix its transcript", 0
        problem = truncation_problem(t)
        if problem is not None:
            return f"{u.transcript}: {problem}", 0
    return None, h.shape[0]


def _check_arrays(u: Utterance) -> str | None:
    """Problem found by reading one utterance's arrays (features, then transcript), or None."""
    checks = [(u.features, feature_values_problem)]
    if u.transcript is not None:
        checks.append((u.transcript, transcript_problem))
    for path, problem_of in checks:
        try:
            arr = load_npy(path)
        except UserError as err:
            return str(err)
        problem = problem_of(arr)
        if problem is not None:
            return f"{path}: {problem}"
    return None


def _progress(it, total: int, desc: str):
    # small splits show no bar off a terminal (keeps logs and error output one line)
    disable = None if total < 1000 else False
    return tqdm(it, total=total, desc=desc, unit="utt", leave=False, disable=disable)


def check_folder(
    root: str | Path, folder: str, n_mels: int = 28, deep: bool = True, stamp: bool = True
) -> tuple[int, int]:
    """Check one split folder; (utterances, frames). UserError on the first problem.

    ``stamp``: use and write the stamp that records a successful deep check.
    """
    utts = list_folder(root, folder, with_transcripts=folder not in FEATURES_ONLY)
    stamp_path = Path(root) / folder / STAMP_NAME
    key = _stamp_key(utts, n_mels) if deep and stamp else ""
    if deep and stamp:
        done = _read_stamp(stamp_path, key)
        if done is not None:
            return int(done["utterances"]), int(done["frames"])

    workers = min(8, 2 * (os.cpu_count() or 1))
    frames = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            results = pool.map(lambda u: _check_headers(u, n_mels), utts)
            for problem, t in _progress(results, len(utts), f"{folder} headers"):
                if problem is not None:
                    raise UserError(problem)
                frames += t
            if deep:
                results = pool.map(_check_arrays, utts)
                for problem in _progress(results, len(utts), f"{folder} arrays"):
                    if problem is not None:
                        raise UserError(problem)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # stop at the first problem
            raise
    if deep and stamp:
        _write_stamp(stamp_path, {"key": key, "utterances": len(utts), "frames": frames, "n_mels": n_mels})
    return len(utts), frames


TRAIN_FOLDERS = ("train-clean-100", "train-clean-360")  # at least one of them
NEEDED_FOLDERS = ("dev-clean", "test-clean")


def required_folders_problem(root: Path, present: list[str]) -> str | None:
    """One line naming the first split folder the competition layout needs but ``root`` lacks, or None."""
    missing = [] if any(f in present for f in TRAIN_FOLDERS) else [TRAIN_FOLDERS[0]]
    missing += [f for f in NEEDED_FOLDERS if f not in present]
    if not missing:
        return None
    notes = [f"nor {TRAIN_FOLDERS[1]}"] if missing[0] == TRAIN_FOLDERS[0] else []
    if missing[1:]:
        notes.append(f"also missing: {', '.join(missing[1:])}")
    note = f" ({'; '.join(notes)})" if notes else ""
    return (
        f"{root / missing[0]}: split folder not found{note}; the competition layout has a training partition, "
        f"dev-clean and test-clean: restore it (re-unzip the data or run: {DOWNLOAD_HINT}), "
        f"or check only the splits you have with --partitions {' '.join(present)}"
    )


def check_data(
    root: str | Path,
    partitions: list[str] | None = None,
    deep: bool = True,
    n_mels: int = 28,
    stamp: bool = True,
) -> dict[str, tuple[int, int]]:
    """Validate ``partitions`` under ``root``.

    ``partitions=None`` (the command line without --partitions) checks the
    whole competition layout: every split folder present, and a UserError
    unless a training partition, dev-clean and test-clean are all present.

    Returns {folder: (utterances, frames)}; raises UserError (one line: file,
    problem, fix) on the first problem. train-clean-460 checks its two folders.
    ``deep=False`` reads headers only; ``stamp=False`` neither trusts nor
    writes the stamp of an earlier successful deep check.
    """
    root = Path(root)
    check_root_layout(root)
    if partitions is None:
        folders = present_folders(root)
        problem = required_folders_problem(root, folders)
        if problem is not None:
            raise UserError(problem)
    else:
        folders = []
        for p in partitions:
            for f in partition_folders(p):
                if f not in folders:
                    folders.append(f)
    return {f: check_folder(root, f, n_mels=n_mels, deep=deep, stamp=stamp) for f in folders}


def summary_line(root: str | Path, summary: dict[str, tuple[int, int]]) -> str:
    """One line: utterances and hours per split folder and in total."""
    parts = [f"{f} {n} utt {frames * FRAME_SECONDS / 3600:.3f} h" for f, (n, frames) in summary.items()]
    total_n = sum(n for n, _ in summary.values())
    total_h = sum(fr for _, fr in summary.values()) * FRAME_SECONDS / 3600
    return f"OK {root}: " + ", ".join(parts) + f"; total {total_n} utterances, {total_h:.3f} hours"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.data.check", description="Validate competition-layout data before training."
    )
    parser.add_argument("root", metavar="DIR", help="data root, e.g. data/11-785-f23-hw4p2")
    parser.add_argument("--partitions", nargs="+", choices=list(PARTITIONS), default=None,
                        help="partitions to check (default: every split folder present, and a train partition, "
                             "dev-clean and test-clean must be)")
    parser.add_argument("--n-mels", type=int, default=28, help="feature dimension D (default 28)")
    parser.add_argument("--headers-only", action="store_true", help="skip the deep pass that reads every array")
    args = parser.parse_args(argv)
    summary = check_data(args.root, args.partitions, deep=not args.headers_only, n_mels=args.n_mels)
    print(summary_line(args.root, summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
