"""A tiny corpus in the competition layout, made in milliseconds: a toy 'voice' renders each
character as 3-5 noisy frames of its own random prototype. For tests and the reliability bench,
where a model must be able to learn something but speech itself does not matter."""
from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["CAT", "DOG", "BIRD", "FISH", "A", "THE", "RED", "BLUE", "SEES", "ONE"]


def make_toy_corpus(root: str | Path, n_train: int = 16, n_dev: int = 4, n_test: int = 0, n_mels: int = 28,
                    seed: int = 0) -> Path:
    """train-clean-100 and dev-clean with transcripts, test-clean (features only) when n_test > 0."""
    from src.vocab import SPECIALS, VOCAB

    root = Path(root)
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(VOCAB), n_mels)).astype(np.float32)
    for split, n in (("train-clean-100", n_train), ("dev-clean", n_dev), ("test-clean", n_test)):
        if n == 0:
            continue
        (root / split / "mfcc").mkdir(parents=True, exist_ok=True)
        if split != "test-clean":
            (root / split / "transcripts").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            frames = [np.repeat(protos[VOCAB.index(c)][None], int(rng.integers(3, 6)), 0) for c in text]
            x = np.concatenate(frames) + 0.1 * rng.normal(size=(sum(map(len, frames)), n_mels))
            name = f"{split}-{i:04d}.npy"
            np.save(root / split / "mfcc" / name, x.astype(np.float32))
            if split != "test-clean":
                np.save(root / split / "transcripts" / name, np.array([SPECIALS[1], *text, SPECIALS[2]]))
    return root
