"""A character n-gram language model with interpolated Witten-Bell smoothing, for shallow fusion.

    python -m src.lm build --root data/11-785-f23-hw4p2 --partition train-clean-100 --order 6 --out lm/char6.npz
    python -m src.lm build --text sentences.txt --order 8 --out lm/char8.npz --dev-root data/11-785-f23-hw4p2
    python test.py decoding.lm=lm/char6.npz decoding.lm_weight=0.3      # fused into the beam search

Events are the 28 characters and ``<eos>``; a history is the previous ``order - 1``
tokens, padded with ``<sos>`` at the start of a sentence. Witten-Bell (Witten and
Bell, 1991; Chen and Goodman, 1998) interpolates every order with the next
shorter one:

    p(c | h) = (C(h c) + T(h) p(c | h')) / (C(h) + T(h))      h' = h without its oldest token

with C(h) the count of h, T(h) the number of distinct tokens seen after h, and
p(c | no history) interpolated the same way with the uniform distribution over
the 29 events. An unseen history falls back to h'. Every distribution sums to
one over the vocabulary (<pad> and <sos> get 0). The file stores the counts
sparsely (``.npz``: per order, the contexts and their (token, count) pairs) and
the vocabulary it was built with.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from src.atomic import atomic_write
from src.decoding.ngram import history_of, lm_log_probs_batch, pack
from src.errors import UserError, first_line
from src.vocab import EOS, PAD, SOS, TOKEN_TO_ID, VOCAB

EVENTS = [i for i in range(len(VOCAB)) if i not in (PAD, SOS)]  # <eos> and the characters
MAX_ORDER = 12


class CharNgramLM:
    """Counts per order: ``table[k][context of k tokens] = (tokens, counts)``; probabilities on demand."""

    def __init__(self, order: int, table: list[dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]]):
        self.order = order
        self.table = table
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self._packed = None  # the numba form, made by packed()
        self._base = np.zeros(len(VOCAB))
        self._base[EVENTS] = 1.0 / len(EVENTS)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, sentences: Iterable[str], order: int) -> "CharNgramLM":
        """Count every event of every sentence (A-Z, apostrophe, space) with its histories up to order - 1.

        Counted with numpy, not a loop per character, so that millions of sentences take seconds: each
        (history of k tokens, event) pair is one integer, the tokens as base-32 digits, oldest first
        (31 tokens fit 5 bits; 12 tokens fit an int64), and np.unique counts them. Sorted integers give
        the contexts in order and each context's events in order."""
        if not 1 <= order <= MAX_ORDER:
            raise UserError(f"--order: expected 1..{MAX_ORDER}, got {order}")
        sentences = list(sentences)
        if not sentences:
            raise UserError("no sentences to count; give a text file with one sentence per line, or a partition "
                            "with transcripts")
        # every sentence as <sos> x (order - 1), its characters, <eos>: one byte string, one token id a byte
        pad = chr(SOS) * (order - 1)
        text = "".join(f"{pad}{sentence}{chr(EOS)}" for sentence in sentences)
        lut = np.full(256, -1, dtype=np.int64)
        for token, i in TOKEN_TO_ID.items():
            if len(token) == 1:
                lut[ord(token)] = i
        lut[SOS], lut[EOS] = SOS, EOS
        try:
            seq = lut[np.frombuffer(text.encode("latin-1"), dtype=np.uint8)]  # (N,) token ids
        except UnicodeEncodeError:
            seq = np.array([-1])
        if (seq < 0).any():
            raise UserError("lm: the sentences hold characters outside the vocabulary (A-Z, apostrophe, space); "
                            "normalise them first (src/corpus/text.py)")
        events = np.flatnonzero(seq != SOS)  # (E,) positions of the characters and <eos>
        table = []
        context = np.zeros(len(events), dtype=np.int64)  # the k tokens before each event, base 32
        for k in range(order):  # context lengths 0 .. order-1
            if k:
                context += seq[events - k] << (5 * (k - 1))  # the new oldest token is the highest digit
            keys, counts = np.unique((context << 5) | seq[events], return_counts=True)  # (M',) sorted
            contexts, tokens = keys >> 5, keys & 31
            starts = np.flatnonzero(np.r_[True, contexts[1:] != contexts[:-1]])  # (M,) first pair of each context
            ends = np.r_[starts[1:], len(keys)]
            digits = (contexts[starts, None] >> (5 * np.arange(k - 1, -1, -1))) & 31  # (M, k), oldest first
            table.append({tuple(row): (tokens[a:b], counts[a:b].astype(np.float64))
                          for row, a, b in zip(digits.tolist(), starts.tolist(), ends.tolist())})
        return cls(order, table)

    # ------------------------------------------------------------------ probabilities

    def probs(self, history: tuple[int, ...]) -> np.ndarray:
        """p(. | history) over the vocabulary (V,), summing to one; history: the tokens so far."""
        history = tuple(history[-(self.order - 1):]) if self.order > 1 else ()
        if len(history) < self.order - 1:
            history = (SOS,) * (self.order - 1 - len(history)) + history
        cached = self._cache.get(history)
        if cached is not None:
            return cached
        p = self._base.copy()
        for k in range(self.order):
            entry = self.table[k].get(history[len(history) - k:] if k else ())
            if entry is None:  # an unseen context: its longer ones are unseen too
                break
            tokens, counts = entry
            total, types = counts.sum(), len(tokens)
            p *= types / (total + types)
            p[tokens] += counts / (total + types)
        if len(self._cache) < 2_000_000:
            self._cache[history] = p
        return p

    def log_prob(self, sentence: str) -> tuple[float, int]:
        """(total natural log-probability, number of events) of one sentence, <eos> included."""
        ids = [TOKEN_TO_ID[ch] for ch in sentence] + [EOS]
        total, history = 0.0, (SOS,) * max(self.order - 1, 0)
        for token in ids:
            total += math.log(self.probs(history)[token])
            history = history + (token,)
        return total, len(ids)

    def perplexity(self, sentences: Iterable[str]) -> float:
        """Per-character perplexity (exp of the mean negative log-probability per event)."""
        total, n = 0.0, 0
        for sentence in sentences:
            lp, k = self.log_prob(sentence)
            total, n = total + lp, n + k
        return math.exp(-total / max(n, 1))

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        arrays: dict[str, np.ndarray] = {"order": np.array(self.order), "vocab": np.array(VOCAB)}
        for k, level in enumerate(self.table):
            contexts = sorted(level)
            arrays[f"ctx{k}"] = np.array(contexts, dtype=np.int8).reshape(len(contexts), k)  # (M, k)
            sizes = [len(level[c][0]) for c in contexts]
            arrays[f"start{k}"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (M + 1,)
            arrays[f"tok{k}"] = np.concatenate([level[c][0] for c in contexts] or [[]]).astype(np.int8)
            arrays[f"cnt{k}"] = np.concatenate([level[c][1] for c in contexts] or [[]]).astype(np.float32)
        with atomic_write(path, "wb") as f:
            np.savez_compressed(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CharNgramLM":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: language model not found; build one with python -m src.lm build ... --out {path}")
        try:
            data = np.load(path, allow_pickle=False)
            vocab, order = [str(v) for v in data["vocab"]], int(data["order"])
        except Exception as err:
            raise UserError(f"{path}: not a language model file of this project ({first_line(err)}); "
                            "rebuild it") from None
        if vocab != VOCAB:
            raise UserError(f"{path}: built for another vocabulary ({len(vocab)} tokens, this project has {len(VOCAB)}); "
                            "rebuild it with python -m src.lm build")
        table = []
        for k in range(order):
            ctx, start, tok, cnt = (data[f"{name}{k}"] for name in ("ctx", "start", "tok", "cnt"))
            table.append({tuple(int(t) for t in ctx[i]): (tok[start[i]:start[i + 1]].astype(np.int64),
                                                         cnt[start[i]:start[i + 1]].astype(np.float64))
                          for i in range(len(ctx))})
        return cls(order, table)


    def packed(self):
        """The numba form (src/decoding/ngram.py), built once."""
        if self._packed is None:
                        self._packed = pack(self)
        return self._packed


_LOADED: dict[str, CharNgramLM] = {}


def load_lm(path: str | Path) -> CharNgramLM:
    """CharNgramLM.load, once per path and process."""
    key = str(Path(path).resolve())
    if key not in _LOADED:
        _LOADED[key] = CharNgramLM.load(path)
    return _LOADED[key]


def check_decoding_lm(decoding_cfg, warn_unused: bool = True) -> None:
    """Load ``decoding.lm`` up front whenever it is named, so that a missing or foreign LM file stops
    train.py / test.py with one line before any training or decoding, not after; warn once when it is
    named with ``lm_weight`` 0 (it would not be used)."""
    if not decoding_cfg.lm:
        return
    load_lm(decoding_cfg.lm)
    if decoding_cfg.lm_weight == 0.0 and warn_unused:
        warnings.warn(f"decoding.lm={decoding_cfg.lm} is not used while decoding.lm_weight=0; set a weight "
                      "(python test.py --split dev-clean --tune-lm finds one)", RuntimeWarning, stacklevel=2)


def load_packed_lm(path: str | Path):
    """The LM file as numba arrays (PackedLM), once per path and process."""
    return load_lm(path).packed()


class CharLMScorer:
    """A beam-search scorer (src/decoding/beam.py): log p_LM of every next token for N rows, in numba."""

    def __init__(self, lm: CharNgramLM, n_rows: int):
        self.packed = lm.packed()
        self.histories = np.tile(history_of((), lm.order), (n_rows, 1))  # (N, order - 1), <sos>-padded

    def score(self, prefix_len: int):
        """(N, V) float32 log-probabilities of the next token after each row's prefix (-inf for <pad>, <sos>)."""
        import torch

        return torch.from_numpy(lm_log_probs_batch(self.packed, self.histories))

    def select(self, index, tokens) -> None:
        """Continue from rows ``index`` (N',) extended by ``tokens`` (N',)."""
        index, tokens = index.cpu().numpy(), tokens.cpu().numpy()
        grown = np.concatenate([self.histories[index], tokens[:, None]], axis=1)  # (N', order)
        self.histories = grown[:, 1:]  # (N', order) -> (N', order - 1): the oldest token drops out
