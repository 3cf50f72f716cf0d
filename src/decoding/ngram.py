"""The character n-gram LM (src/lm.py) packed into flat arrays, and its probabilities in numba.

    packed = pack(lm)                                      # PackedLM: arrays only, numba-friendly
    lp = lm_log_prob(*packed, history, c)                  # log p(c | history), inside numba code
    rows = lm_log_probs_batch(packed, histories (N, n-1))  # (N, V) log p(. | history), prange over rows

A context of k tokens (oldest first) is one int64 key, ``key = sum ctx[i] * 32 **
(k - 1 - i)`` (every token id is below 32, and k <= 11 keeps it under 2**55).
Contexts are sorted by key within their order, so a lookup is a binary search:

    keys[key_start[k] : key_start[k + 1]]     the contexts of k tokens, sorted
    row_start[i] : row_start[i + 1]           context i's (token, count) pairs in tok / cnt
    scale[i] = T / (C + T),  inv[i] = 1 / (C + T)

and the interpolated Witten-Bell probability of src/lm.py is, from order 0 up,
``p <- p * scale[i] + count(c) * inv[i]`` starting from the uniform 1/29 over
the events, stopping at the first unseen context. ``history`` is always the
last ``order - 1`` tokens, padded on the left with <sos> (:func:`history_of`).
The dictionary-based ``CharNgramLM.probs`` stays as the readable reference;
tests/test_lm.py checks that the two agree.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from src.vocab import EOS, PAD, SOS, VOCAB_SIZE

KEY_BASE = 32
N_EVENTS = VOCAB_SIZE - 2  # every token but <pad> and <sos>


class PackedLM(NamedTuple):
    order: int
    keys: np.ndarray  # (M,) int64 context keys, sorted within each order
    key_start: np.ndarray  # (order + 1,) int64: contexts of k tokens are keys[key_start[k]:key_start[k+1]]
    row_start: np.ndarray  # (M + 1,) int64 bounds into tok / cnt
    tok: np.ndarray  # (E,) int64 tokens seen after each context
    cnt: np.ndarray  # (E,) float64 their counts
    scale: np.ndarray  # (M,) float64 T / (C + T)
    inv: np.ndarray  # (M,) float64 1 / (C + T)


NO_LM = PackedLM(0, np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64),
                 np.zeros(0), np.zeros(1), np.zeros(1))  # order 0: "no LM" for kernels that take one


def context_key(context) -> int:
    key = 0
    for token in context:
        key = key * KEY_BASE + int(token)
    return key


def pack(lm) -> PackedLM:
    """Flatten a CharNgramLM's per-order dictionaries into sorted arrays (done once per LM)."""
    keys, key_start, row_start, tok, cnt, scale, inv = [], [0], [0], [], [], [], []
    for k, level in enumerate(lm.table):
        for key, ctx in sorted((context_key(ctx), ctx) for ctx in level):
            tokens, counts = level[ctx]
            total, types = float(counts.sum()), len(tokens)
            keys.append(key)
            tok.extend(int(t) for t in tokens)
            cnt.extend(float(c) for c in counts)
            row_start.append(len(tok))
            scale.append(types / (total + types))
            inv.append(1.0 / (total + types))
        key_start.append(len(keys))
    as_int = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return PackedLM(lm.order, as_int(keys), as_int(key_start), as_int(row_start), as_int(tok),
                    np.asarray(cnt, dtype=np.float64), np.asarray(scale), np.asarray(inv))


def history_of(tokens, order: int) -> np.ndarray:
    """The last ``order - 1`` of ``tokens``, left-padded with <sos>: (order - 1,) int64."""
    n = max(order - 1, 0)
    tail = [int(t) for t in tokens][-n:] if n else []
    return np.array([SOS] * (n - len(tail)) + tail, dtype=np.int64)


@njit(cache=True)
def _find(keys: np.ndarray, lo: int, hi: int, key: int) -> int:
    """Index of ``key`` in the sorted keys[lo:hi], or -1."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < end and keys[lo] == key else -1


@njit(cache=True)
def _seen_contexts(order, keys, key_start, history, found) -> int:
    """found[k] <- the index of the context of the last k tokens of history, for k = 0, 1, ..
    up to the first unseen one (every longer context is unseen too); returns how many were seen."""
    key, mult = 0, 1
    for k in range(order):
        if k > 0:  # the context grows by one older token
            key += history[order - 1 - k] * mult
            mult *= KEY_BASE
        i = _find(keys, key_start[k], key_start[k + 1], key)
        if i < 0:
            return k
        found[k] = i
    return order


@njit(cache=True)
def lm_log_prob(order, keys, key_start, row_start, tok, cnt, scale, inv, history, c) -> float:
    """log p(c | history) for one token; history (order - 1,) oldest first, <sos>-padded."""
    if c == PAD or c == SOS:
        return -np.inf
    found = np.empty(order, dtype=np.int64)
    p = 1.0 / N_EVENTS
    for k in range(_seen_contexts(order, keys, key_start, history, found)):
        i = found[k]
        count = 0.0
        for j in range(row_start[i], row_start[i + 1]):
            if tok[j] == c:
                count = cnt[j]
                break
        p = p * scale[i] + count * inv[i]
    return np.log(p)


@njit(cache=True)
def _log_probs_row(order, keys, key_start, row_start, tok, cnt, scale, inv, history, out) -> None:
    """out (V,) <- log p(. | history)."""
    for c in range(out.shape[0]):
        out[c] = 1.0 / N_EVENTS
    out[PAD] = 0.0
    out[SOS] = 0.0
    found = np.empty(order, dtype=np.int64)
    for k in range(_seen_contexts(order, keys, key_start, history, found)):
        i = found[k]
        for c in range(out.shape[0]):
            out[c] *= scale[i]
        for j in range(row_start[i], row_start[i + 1]):
            out[tok[j]] += cnt[j] * inv[i]
    for c in range(out.shape[0]):
        out[c] = np.log(out[c]) if out[c] > 0.0 else -np.inf


@njit(cache=True, parallel=True)
def _log_probs_batch(order, keys, key_start, row_start, tok, cnt, scale, inv, histories, out) -> None:
    for n in prange(histories.shape[0]):
        _log_probs_row(order, keys, key_start, row_start, tok, cnt, scale, inv, histories[n], out[n])


def lm_log_probs_batch(packed: PackedLM, histories: np.ndarray) -> np.ndarray:
    """histories (N, order - 1) int64 -> (N, V) float32 log p(. | history); -inf for <pad>, <sos>."""
    histories = np.ascontiguousarray(histories, dtype=np.int64).reshape(len(histories), max(packed.order - 1, 0))
    out = np.empty((histories.shape[0], VOCAB_SIZE), dtype=np.float64)  # (N, V)
    _log_probs_batch(*packed, histories, out)
    return out.astype(np.float32)


__all__ = ["EOS", "NO_LM", "PackedLM", "history_of", "lm_log_prob", "lm_log_probs_batch", "pack"]
