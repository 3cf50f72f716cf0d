"""Edit distances in numba: the competition metric and friends.

    levenshtein("KITTEN", "SITTING")                 # 3
    levenshtein_batch(hyps, refs)                    # np.int64 array, parallel over pairs
    mean_levenshtein(hyps, refs)                     # the Kaggle score (lower is better)
    cer(hyps, refs), wer(hyps, refs)                 # total edits / total reference units

Two kernels compute the same number (unit-cost insert, delete, substitute):

* ``levenshtein_dp``: the textbook two-row dynamic programme, O(len(a) * len(b))
  time and O(min) memory. Obviously correct; kept as the readable reference
  kernel and for the benchmark.
* ``_levenshtein_bits``: Myers' bit-parallel algorithm (Myers 1999, in the
  block form of Hyyrö 2003): each column of the DP matrix is held as 64-bit
  words of vertical +1/-1 deltas, so one text character costs a few word
  operations per 64 pattern characters, O(ceil(min/64) * max) time. This is
  what rapidfuzz and python-Levenshtein do, and it is 10-30x faster than the
  DP on ~110-character transcripts (see bench/bench_levenshtein.py). Common
  prefixes and suffixes are stripped first (they never cost an edit).

Strings are compared by Unicode code point. Token sequences (lists or arrays
of ints) are compared by value. The batch functions turn every sequence into
one flat int32 array plus offsets, relabel the symbols densely (0..S-1), and
run the kernel over pairs with ``numba.prange``; ``threads`` sets numba's
thread count for the call. Kernels are compiled with ``cache=True``: the first
call in a fresh checkout compiles for a few seconds, later processes load the
cache from ``src/__pycache__``.
"""
from __future__ import annotations

from typing import Sequence, Union

import numba
import numpy as np
from numba import njit, prange

Tokens = Union[str, Sequence[int], np.ndarray]

_U1 = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


# --------------------------------------------------------------------------
# Kernels (int32 symbols)


@njit(cache=True, nogil=True)
def levenshtein_dp(a, b):
    """Two-row DP edit distance between int32 arrays; O(min(len)) memory."""
    if a.shape[0] < b.shape[0]:
        a, b = b, a  # b is the shorter: the row runs over it
    n, m = a.shape[0], b.shape[0]
    if m == 0:
        return n
    prev = np.arange(m + 1).astype(np.int64)
    cur = np.empty(m + 1, np.int64)
    for i in range(1, n + 1):
        cur[0] = i
        ai = a[i - 1]
        for j in range(1, m + 1):
            best = prev[j - 1] + (0 if ai == b[j - 1] else 1)  # substitute / match
            if prev[j] + 1 < best:  # delete a[i-1]
                best = prev[j] + 1
            if cur[j - 1] + 1 < best:  # insert b[j-1]
                best = cur[j - 1] + 1
            cur[j] = best
        prev, cur = cur, prev
    return prev[m]


@njit(cache=True, nogil=True)
def _levenshtein_bits(a, b, peq, vp, vn):
    """Bit-parallel edit distance between int32 arrays of dense symbols.

    ``peq`` is zeroed scratch of shape (S, n_words) uint64 (S = number of
    symbols); it is left zeroed on return. ``vp``/``vn`` are scratch of at
    least n_words uint64, n_words = ceil(min(len(a), len(b)) / 64).
    """
    # Strip the common prefix and suffix: they cost nothing.
    n_a, n_b = a.shape[0], b.shape[0]
    start = 0
    while start < n_a and start < n_b and a[start] == b[start]:
        start += 1
    end_a, end_b = n_a, n_b
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    len_a, len_b = end_a - start, end_b - start
    # The pattern (bits) is the shorter sequence, the text the longer.
    if len_a <= len_b:
        pat, pat_start, m = a, start, len_a
        txt, txt_start, n = b, start, len_b
    else:
        pat, pat_start, m = b, start, len_b
        txt, txt_start, n = a, start, len_a
    if m == 0:
        return n
    words = (m + 63) // 64
    for i in range(m):  # peq[c, w] bit k: pat[64 w + k] == c
        peq[pat[pat_start + i], i >> 6] |= _U1 << np.uint64(i & 63)
    last_shift = np.uint64((m - 1) & 63)  # the pattern's last row, in the last word
    score = m
    if words == 1:  # m <= 64: one word per column, kept in registers
        pv = _ALL  # column 0 of the DP goes up by one per row
        mv = np.uint64(0)
        for j in range(n):
            eq = peq[txt[txt_start + j], 0]
            xv = eq | mv
            xh = (((eq & pv) + pv) ^ pv) | eq
            ph = mv | ~(xh | pv)  # horizontal +1 deltas
            mh = pv & xh  # horizontal -1 deltas
            score += np.int64((ph >> last_shift) & _U1) - np.int64((mh >> last_shift) & _U1)
            ph = (ph << _U1) | _U1  # row 0 of the DP goes up by one per column
            mh = mh << _U1
            pv = mh | ~(xv | ph)
            mv = ph & xv
    elif words == 2:  # 64 < m <= 128 (most transcripts): the same, unrolled over two words
        top = np.uint64(63)
        pv0 = _ALL
        mv0 = np.uint64(0)
        pv1 = _ALL
        mv1 = np.uint64(0)
        for j in range(n):
            c = txt[txt_start + j]
            eq = peq[c, 0]
            xv = eq | mv0
            xh = (((eq & pv0) + pv0) ^ pv0) | eq
            ph = mv0 | ~(xh | pv0)
            mh = pv0 & xh
            hp_mid = ph >> top  # horizontal delta leaving word 0 upwards
            hn_mid = mh >> top
            ph = (ph << _U1) | _U1
            mh = mh << _U1
            pv0 = mh | ~(xv | ph)
            mv0 = ph & xv
            eq = peq[c, 1]
            xv = eq | mv1
            eq |= hn_mid
            xh = (((eq & pv1) + pv1) ^ pv1) | eq
            ph = mv1 | ~(xh | pv1)
            mh = pv1 & xh
            score += np.int64((ph >> last_shift) & _U1) - np.int64((mh >> last_shift) & _U1)
            ph = (ph << _U1) | hp_mid
            mh = (mh << _U1) | hn_mid
            pv1 = mh | ~(xv | ph)
            mv1 = ph & xv
    else:  # any length: words of 64 rows, carries passed from word to word
        for w in range(words):
            vp[w] = _ALL
            vn[w] = np.uint64(0)
        top = np.uint64(63)
        for j in range(n):
            c = txt[txt_start + j]
            hp_in = _U1  # horizontal delta entering word w from below: +1 in row 0
            hn_in = np.uint64(0)
            for w in range(words):
                pv = vp[w]
                mv = vn[w]
                eq = peq[c, w]
                xv = eq | mv
                eq |= hn_in  # a -1 entering from the word below carries into the add
                xh = (((eq & pv) + pv) ^ pv) | eq
                ph = mv | ~(xh | pv)
                mh = pv & xh
                shift = last_shift if w == words - 1 else top
                hp_out = (ph >> shift) & _U1
                hn_out = (mh >> shift) & _U1
                ph = (ph << _U1) | hp_in
                mh = (mh << _U1) | hn_in
                vp[w] = mh | ~(xv | ph)
                vn[w] = ph & xv
                hp_in = hp_out
                hn_in = hn_out
            score += np.int64(hp_in) - np.int64(hn_in)
    for i in range(m):  # leave peq zeroed for the next pair
        peq[pat[pat_start + i], i >> 6] = np.uint64(0)
    return score


@njit(cache=True, nogil=True)
def _levenshtein_pair(a, b, n_symbols):
    words = (min(a.shape[0], b.shape[0]) + 63) // 64 + 1
    peq = np.zeros((n_symbols, words), np.uint64)
    vp = np.empty(words, np.uint64)
    vn = np.empty(words, np.uint64)
    return _levenshtein_bits(a, b, peq, vp, vn)


@njit(cache=True, parallel=True)
def _levenshtein_many(flat_a, off_a, flat_b, off_b, n_symbols, n_chunks):
    """Distances of pairs (flat_a[off_a[i]:off_a[i+1]], flat_b[off_b[i]:off_b[i+1]])."""
    n = off_a.shape[0] - 1
    out = np.empty(n, np.int64)
    max_len = 1
    for i in range(n):
        max_len = max(max_len, min(off_a[i + 1] - off_a[i], off_b[i + 1] - off_b[i]))
    words = (max_len + 63) // 64
    per_chunk = (n + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):  # one scratch buffer per chunk, not per pair
        peq = np.zeros((n_symbols, words), np.uint64)
        vp = np.empty(words, np.uint64)
        vn = np.empty(words, np.uint64)
        for i in range(chunk * per_chunk, min(n, (chunk + 1) * per_chunk)):
            out[i] = _levenshtein_bits(
                flat_a[off_a[i]:off_a[i + 1]], flat_b[off_b[i]:off_b[i + 1]], peq, vp, vn
            )
    return out


@njit(cache=True)
def _dense_labels(codes, max_code):
    """Relabel non-negative ints to 0..S-1 (order of first appearance); returns (labels, S)."""
    table = np.full(max_code + 1, -1, np.int32)
    out = np.empty(codes.shape[0], np.int32)
    n_symbols = 0
    for i in range(codes.shape[0]):
        c = codes[i]
        if table[c] < 0:
            table[c] = n_symbols
            n_symbols += 1
        out[i] = table[c]
    return out, max(n_symbols, 1)


# --------------------------------------------------------------------------
# Python API


def _string_codes(text: str) -> np.ndarray:
    """Code points of ``text``: uint8 when all are below 256 (fast path), else int32."""
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.int32)


def _codes(seq: Tokens) -> np.ndarray:
    if isinstance(seq, str):
        return _string_codes(seq)
    return np.asarray(seq, dtype=np.int64).reshape(-1)


def _is_text(seqs: Sequence[Tokens]) -> bool:
    """True for a list of strings, False for a list of token sequences; TypeError on a mix."""
    n_str = sum(isinstance(s, str) for s in seqs)
    if 0 < n_str < len(seqs):
        raise TypeError("levenshtein: mix of strings and token sequences; pass one kind")
    return n_str > 0


def _flatten(seqs: Sequence[Tokens], text: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sequences -> (flat codes, offsets (n + 1,)); strings by code point."""
    if text:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = _string_codes("".join(seqs))
    else:
        arrays = [_codes(s) for s in seqs]
        lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return flat, offsets


def _symbols(flat_a: np.ndarray, flat_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes of two sequences -> symbols 0..S-1 (equal codes <-> equal symbols), and S."""
    if flat_a.dtype == np.uint8 and flat_b.dtype == np.uint8:  # Latin-1 text: index peq directly
        return flat_a, flat_b, 256
    flat = np.concatenate([flat_a.astype(np.int64), flat_b.astype(np.int64)])
    if flat.size == 0:
        dense, n_symbols = flat.astype(np.int32), 1
    elif flat.min() >= 0 and flat.max() < (1 << 22):  # code points (< 0x110000) and token ids
        dense, n_symbols = _dense_labels(flat, int(flat.max()))
    else:
        uniq, inverse = np.unique(flat, return_inverse=True)
        dense, n_symbols = inverse.astype(np.int32).reshape(-1), max(len(uniq), 1)
    return dense[: len(flat_a)], dense[len(flat_a):], n_symbols


def _check_kinds(a_text: bool, b_text: bool) -> None:
    if a_text != b_text:
        raise TypeError("levenshtein: compare strings with strings, token sequences with token sequences")


def levenshtein(a: Tokens, b: Tokens) -> int:
    """Edit distance between two strings (by code point) or two int sequences."""
    _check_kinds(isinstance(a, str), isinstance(b, str))
    sym_a, sym_b, n_symbols = _symbols(_codes(a), _codes(b))
    return int(_levenshtein_pair(sym_a, sym_b, n_symbols))


def levenshtein_batch(
    hyps: Sequence[Tokens], refs: Sequence[Tokens], threads: int | None = None
) -> np.ndarray:
    """Distances of each pair (hyps[i], refs[i]) as np.int64 (n,), parallel over pairs.

    Strings are compared by code point, int sequences by value. ``threads``:
    numba threads for this call (default: numba's default, the number of
    cores or NUMBA_NUM_THREADS).
    """
    if len(hyps) != len(refs):
        raise ValueError(f"levenshtein_batch: {len(hyps)} hypotheses but {len(refs)} references")
    if len(hyps) == 0:
        return np.zeros(0, np.int64)
    text = _is_text(hyps)
    _check_kinds(text, _is_text(refs))
    flat_h, off_h = _flatten(hyps, text)
    flat_r, off_r = _flatten(refs, text)
    sym_h, sym_r, n_symbols = _symbols(flat_h, flat_r)
    previous = numba.get_num_threads()
    n_threads = previous if threads is None else max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n_threads)
    try:
        n_chunks = min(len(hyps), 4 * n_threads)  # a few chunks per thread balance the load
        return _levenshtein_many(sym_h, off_h, sym_r, off_r, n_symbols, n_chunks)
    finally:
        numba.set_num_threads(previous)


def mean_levenshtein(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """The competition score: mean over utterances of the character edit distance."""
    if len(refs) == 0:
        raise ValueError("mean_levenshtein: no pairs to score")
    return float(levenshtein_batch(hyps, refs).mean())


def _rate(edits: int, total: int) -> float:
    if total == 0:  # nothing to compare against: perfect only if nothing was produced
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def cer(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Character error rate: total edits / total reference characters."""
    if len(refs) == 0:
        raise ValueError("cer: no pairs to score")
    edits = int(levenshtein_batch(hyps, refs).sum())
    return _rate(edits, sum(len(r) for r in refs))


def _word_ids(texts: Sequence[str], vocab: dict[str, int]) -> list[np.ndarray]:
    return [np.fromiter((vocab.setdefault(w, len(vocab)) for w in t.split()), dtype=np.int64)
            for t in texts]


def wer(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Word error rate: total word edits / total reference words (words split on whitespace)."""
    if len(refs) == 0:
        raise ValueError("wer: no pairs to score")
    vocab: dict[str, int] = {}
    ref_ids = _word_ids(refs, vocab)
    hyp_ids = _word_ids(hyps, vocab)
    edits = int(levenshtein_batch(hyp_ids, ref_ids).sum())
    return _rate(edits, sum(len(r) for r in ref_ids))
