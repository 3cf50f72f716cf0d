"""A stand-in for the competition's full data: its layout, counts and lengths, without speech.

    python -m src.corpus.fullsize bench/out/fullsize              # 28,539 + 2,703 + 2,620 utterances, 4.5 GB
    python -m src.corpus.fullsize bench/out/fullsize --scale 0.1  # a tenth of the counts, the same lengths

For measuring scale (start-up, memory, loader speed, an epoch, a test decode), not accuracy.
``train-clean-100``, ``dev-clean`` (both with transcripts) and ``test-clean`` (features only)
get the competition's utterance counts (times ``--scale``) and its length distributions
(``../shared/competition-data.md``):

    split             utterances   frames: mean  max    characters: per frame  max
    train-clean-100       28,539           1,265  2,448                 0.148   400
    dev-clean              2,703             713  3,260                 0.153   518
    test-clean             2,620             738  3,491                 0.148     -

Frames are drawn from a Gamma distribution with that mean and a standard deviation of 350 (train)
or 450 (dev, test), assumed: train as ``longest - Gamma`` (LibriSpeech's training segments are
skewed towards their cap), dev and test as ``1 s + Gamma`` (most read sentences are short); the
first utterance of each split is exactly the longest. Characters: frames x the split's characters per
frame x a random factor in [0.85, 1.15], capped. The text is words of a made-up lexicon (Zipf
frequencies); the features render it as a toy voice (``src/corpus/toy.py``'s idea): every
character has a random 28-dim prototype, held for a random share of the frames (at least one),
plus Gaussian noise, float32. A model can learn it, so the loss falls, but nothing here sounds
like speech.

Every utterance is a pure function of ``--seed``, its split and its index, so the corpus is the
same on every machine. Each split folder gets ``.fullsize.json`` (the settings it is made with,
marked complete at the end); a complete split is skipped next time, one made with other settings or
left half made is made again, and a split folder holding files without that stamp is refused
before anything is written, so real data is never overwritten.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from src.errors import UserError, run_cli

# split: (utterances, mean frames, longest, assumed standard deviation, characters per frame, most characters,
#         shortest: 0 = frames skewed towards the longest, else skewed towards this many)
SPLITS: dict[str, tuple[int, int, int, int, float, int, int]] = {
    "train-clean-100": (28539, 1265, 2448, 350, 0.148, 400, 0),
    "dev-clean": (2703, 713, 3260, 450, 0.153, 518, 100),
    "test-clean": (2620, 738, 3491, 450, 0.148, 518, 100),
}
WITHOUT_TRANSCRIPTS = ("test-clean",)
STAMP_NAME = ".fullsize.json"
VERSION = 2  # bump when what an utterance is changes (2: dev and test skewed towards short ones)
N_MELS = 28
LEXICON_WORDS = 3000
NOISE = 0.5


def draw_lengths(rng: np.random.Generator, n: int, mean: int, longest: int, sd: float,
                 scale: float = 1.0, shortest: int = 0) -> np.ndarray:
    """``n`` frame counts (int64) of the given mean and sd, never above ``longest``, the first one
    exactly ``longest``; all times ``scale``, at least 8. ``shortest`` 0: ``longest - Gamma``, skewed
    towards the cap like train-clean-100's segments; else ``shortest + Gamma``, skewed towards short
    utterances like dev-clean's and test-clean's."""
    span = (longest - mean) if shortest == 0 else (mean - shortest)
    shape = (span / sd) ** 2
    drawn = rng.gamma(shape, span / shape, size=n)
    lengths = longest - drawn if shortest == 0 else np.minimum(shortest + drawn, longest)
    lengths[0] = longest
    return np.clip(np.round(lengths * scale), 8, None).astype(np.int64)


def character_counts(rng: np.random.Generator, frames: np.ndarray, per_frame: float, most: int) -> np.ndarray:
    """Characters of each utterance: frames x per_frame x U(0.85, 1.15), in [2, min(most, frames)]."""
    n = np.round(frames * per_frame * rng.uniform(0.85, 1.15, size=len(frames)))
    return np.clip(n, 2, np.minimum(most, frames)).astype(np.int64)


def make_lexicon(rng: np.random.Generator, size: int = LEXICON_WORDS) -> tuple[list[str], np.ndarray]:
    """Made-up words of 1-10 letters (a few with an apostrophe) and their Zipf cumulative probabilities."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    freq = np.array([8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.2, 0.8, 4.0, 2.4,
                     6.7, 7.5, 1.9, 0.1, 6.0, 6.3, 9.1, 2.8, 1.0, 2.4, 0.2, 2.0, 0.1])  # English letters, %
    words = []
    for k in range(size):
        word = "".join(rng.choice(letters, size=int(rng.integers(1, 11)), p=freq / freq.sum()))
        if k % 50 == 49 and len(word) > 2:
            word = word[:-1] + "'" + word[-1]
        words.append(word)
    cdf = np.cumsum(1.0 / np.arange(1, size + 1))
    return words, cdf / cdf[-1]


def utterance_text(rng: np.random.Generator, n_chars: int, words: list[str], cdf: np.ndarray) -> str:
    """Words of the lexicon joined by spaces, cut to exactly ``n_chars`` characters, no space at either end."""
    text = ""
    while len(text) < n_chars:
        picks = np.searchsorted(cdf, rng.random(n_chars // 4 + 1), side="right").clip(max=len(words) - 1)
        text = " ".join([text, *(words[k] for k in picks)]) if text else " ".join(words[k] for k in picks)
    text = text[:n_chars]
    return text[:-1] + "E" if text.endswith(" ") else text


def render(rng: np.random.Generator, text: str, frames: int, prototypes: np.ndarray) -> np.ndarray:
    """(frames, D) float32: each character's prototype held for a random share of the frames, plus noise."""
    from src.vocab import TOKEN_TO_ID

    ids = np.array([TOKEN_TO_ID[c] for c in text])
    durations = 1 + rng.multinomial(frames - len(ids), np.full(len(ids), 1.0 / len(ids)))  # (U,), sums to frames
    x = np.repeat(prototypes[ids], durations, axis=0)  # (frames, D)
    x += NOISE * rng.standard_normal(x.shape, dtype=np.float32)
    return x


def split_plan(split: str, seed: int, scale: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(utterances, frames (N,), characters (N,)) of ``split`` at ``scale``: a pure function of its arguments."""
    count, mean, longest, sd, per_frame, most, shortest = SPLITS[split]
    n = max(1, round(count * scale))
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    frames = draw_lengths(rng, n, mean, longest, sd, shortest=shortest)
    return n, frames, character_counts(rng, frames, per_frame, most)


def utterance_name(i: int) -> str:
    """LibriSpeech-style SPEAKER-CHAPTER-UTTERANCE, in index order when sorted."""
    return f"{100 + i // 120:04d}-{10000 + i // 40:06d}-{i % 40:04d}"


def _stamp(split: str, seed: int, scale: float, n: int) -> dict:
    return {"version": VERSION, "split": split, "seed": seed, "scale": scale, "utterances": n, "complete": True}


def _write_stamp(folder: Path, stamp: dict) -> None:
    from src.atomic import write_text_atomic

    write_text_atomic(folder / STAMP_NAME, json.dumps(stamp))


def _read_stamp(folder: Path) -> dict | None:
    """The stamp this module left in ``folder`` ({} when unreadable), or None when there is none."""
    path = folder / STAMP_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _files(folder: Path) -> list[Path]:
    return [p for sub in ("mfcc", "transcripts") if (folder / sub).is_dir() for p in (folder / sub).iterdir()]


def refuse_foreign(root: Path) -> None:
    """UserError when a split folder under ``root`` holds files that this module did not write."""
    for split in SPLITS:
        files = _files(root / split)
        if files and _read_stamp(root / split) is None:
            raise UserError(f"{root / split}: holds {len(files)} files but no {STAMP_NAME}, so they are not a "
                            "stand-in made by this command; give another output folder")


def _write_split(root: Path, split: str, seed: int, scale: float, progress: bool) -> int:
    """Write (or keep, when already made with these settings) one split; returns its utterances.
    make_fullsize has refused foreign files already: any files here are a stand-in's."""
    from tqdm import tqdm

    from src.data.features import save_npy_atomic
    from src.vocab import EOS, SOS, VOCAB

    n, frames, chars = split_plan(split, seed, scale)
    folder = root / split
    stamp = _stamp(split, seed, scale, n)
    if _read_stamp(folder) == stamp:
        return n
    for p in _files(folder):  # a stand-in made with other settings, or left half made
        p.unlink()
    with_text = split not in WITHOUT_TRANSCRIPTS
    (folder / "mfcc").mkdir(parents=True, exist_ok=True)
    _write_stamp(folder, {**stamp, "complete": False})  # ours from the first file on
    if with_text:
        (folder / "transcripts").mkdir(parents=True, exist_ok=True)
    shared = np.random.default_rng([seed, 999])  # one lexicon and one voice for every split
    words, cdf = make_lexicon(shared)
    prototypes = (2.0 * shared.standard_normal((len(VOCAB), N_MELS))).astype(np.float32)
    split_id = list(SPLITS).index(split)
    for i in tqdm(range(n), desc=f"fullsize {split}", unit="utt", disable=not progress or None):
        rng = np.random.default_rng([seed, split_id, i])
        text = utterance_text(rng, int(chars[i]), words, cdf)
        name = utterance_name(i)
        save_npy_atomic(folder / "mfcc" / f"{name}.npy", render(rng, text, int(frames[i]), prototypes))
        if with_text:
            save_npy_atomic(folder / "transcripts" / f"{name}.npy", np.array([VOCAB[SOS], *text, VOCAB[EOS]]))
    _write_stamp(folder, stamp)
    return n


def make_fullsize(root: str | Path, seed: int = 0, scale: float = 1.0, progress: bool = True) -> dict[str, int]:
    """Every split of the stand-in under ``root``; {split: utterances}."""
    if not 0 < scale <= 1:
        raise UserError(f"--scale {scale}: needs 0 < scale <= 1 (a share of the competition's counts)")
    root = Path(root)
    refuse_foreign(root)  # before writing anything
    return {split: _write_split(root, split, seed, scale, progress) for split in SPLITS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.corpus.fullsize", description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="DIR", help="output folder (competition layout), e.g. bench/out/fullsize")
    parser.add_argument("--scale", type=float, default=1.0, help="share of the competition's utterance counts")
    parser.add_argument("--seed", type=int, default=0, help="the corpus is a pure function of the seed")
    args = parser.parse_args(argv)
    counts = make_fullsize(args.root, args.seed, args.scale)
    print("fullsize: " + ", ".join(f"{s} {n} utt" for s, n in counts.items()) + f" -> {args.root}")
    return 0


if __name__ == "__main__":
    run_cli(main)
