"""The course's 31-token character vocabulary.

    ['<pad>', '<sos>', '<eos>', 'A', ..., 'Z', "'", ' ']
    PAD = 0, SOS = 1, EOS = 2
"""
from __future__ import annotations

import string
from typing import Iterable, Sequence

SPECIALS = ["<pad>", "<sos>", "<eos>"]
CHARACTERS = list(string.ascii_uppercase) + ["'", " "]
VOCAB: list[str] = SPECIALS + CHARACTERS
PAD, SOS, EOS = 0, 1, 2
VOCAB_SIZE = len(VOCAB)  # 31
TOKEN_TO_ID = {tok: i for i, tok in enumerate(VOCAB)}
ALLOWED_CHARACTERS = frozenset(CHARACTERS)


def encode(text: str) -> list[int]:
    """Characters of ``text`` to ids, without <sos>/<eos>. KeyError on others."""
    return [TOKEN_TO_ID[c] for c in text]


def decode(ids: Iterable[int]) -> str:
    """Ids to text: stops at the first <eos>, drops <pad> and <sos>."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i in (PAD, SOS):
            continue
        out.append(VOCAB[i])
    return "".join(out)


def transcript_to_text(tokens: Sequence[str]) -> str:
    """A competition transcript array (['<sos>', 'H', 'I', '<eos>']) to 'HI'."""
    return "".join(t for t in tokens if t not in SPECIALS)
