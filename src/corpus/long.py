"""Long utterances: join each speaker's consecutive utterances of a split into ones of 25-35 s.

    python -m src.corpus.long ROOT [--split dev-clean] [--min-seconds 25] [--max-seconds 35]

writes ``ROOT/<split>-long/{mfcc,transcripts}/NAME.npy`` in the competition layout, NAME
being the first joined utterance's. LibriSpeech's test-clean reaches 35 s (3,491 frames,
about 500 characters) while a benchmark's sentences rarely pass 15 s; this split asks
whether a model keeps its alignment that long (it must not stop early, loop, or take
more than a few seconds per utterance to decode).

Utterances are joined in name order within a speaker (the first field of
``SPEAKER-CHAPTER-UTT``): features frame after frame, transcripts with one space. A
group closes once it reaches ``--min-seconds``; an utterance that would carry it past
``--max-seconds`` starts a new group instead, and what is left of a speaker below the
minimum is dropped. The result is a pure function of the split's files.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from src.data.features import HOP_LENGTH, SAMPLE_RATE, save_npy_atomic
from src.errors import UserError, run_cli


def plan_groups(names: list[str], frames: list[int], min_frames: int, max_frames: int) -> list[list[int]]:
    """Indices of ``names`` (sorted) joined into groups of min_frames..max_frames frames, per speaker."""
    groups, current, total, speaker = [], [], 0, None
    for i, (name, n) in enumerate(zip(names, frames)):
        this_speaker = name.split("-")[0]
        if this_speaker != speaker or total + n > max_frames:
            current, total, speaker = [], 0, this_speaker
        if n > max_frames:
            continue
        current.append(i)
        total += n
        if total >= min_frames:
            groups.append(current)
            current, total = [], 0
    return groups


def join_split(root: str | Path, split: str = "dev-clean", min_seconds: float = 25.0,
               max_seconds: float = 35.0) -> tuple[str, int]:
    """Write ``root/<split>-long``; returns (its split name, utterances). Rewrites it if it exists."""
    root = Path(root)
    mfcc, transcripts = root / split / "mfcc", root / split / "transcripts"
    if not mfcc.is_dir() or not transcripts.is_dir():
        raise UserError(f"{root / split}: needs mfcc/ and transcripts/ folders (a split with references)")
    if not 0 < min_seconds <= max_seconds:
        raise UserError(f"--min-seconds {min_seconds} and --max-seconds {max_seconds}: need 0 < min <= max")
    names = sorted(p.stem for p in mfcc.glob("*.npy"))
    frames = [int(np.load(mfcc / f"{n}.npy", mmap_mode="r").shape[0]) for n in names]
    per_second = SAMPLE_RATE / HOP_LENGTH  # 100 frames a second
    groups = plan_groups(names, frames, round(min_seconds * per_second), round(max_seconds * per_second))
    out_split = f"{split}-long"
    out = root / out_split
    shutil.rmtree(out, ignore_errors=True)
    for group in groups:
        feats = np.concatenate([np.load(mfcc / f"{names[i]}.npy") for i in group])  # (sum T_i, D)
        texts = ["".join(np.load(transcripts / f"{names[i]}.npy")[1:-1]) for i in group]
        tokens = np.array(["<sos>", *" ".join(texts), "<eos>"])  # (U,) single characters
        save_npy_atomic(out / "transcripts" / f"{names[group[0]]}.npy", tokens)
        save_npy_atomic(out / "mfcc" / f"{names[group[0]]}.npy", feats)
    return out_split, len(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.corpus.long", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="a corpus in the competition layout")
    parser.add_argument("--split", default="dev-clean", help="the split to join (default dev-clean)")
    parser.add_argument("--min-seconds", type=float, default=25.0, help="shortest joined utterance (default 25)")
    parser.add_argument("--max-seconds", type=float, default=35.0, help="longest joined utterance (default 35)")
    args = parser.parse_args(argv)
    out_split, n = join_split(args.root, args.split, args.min_seconds, args.max_seconds)
    print(f"long: {n} utterances of {args.min_seconds:g}-{args.max_seconds:g} s -> {Path(args.root) / out_split}")
    return 0


if __name__ == "__main__":
    run_cli(main)
