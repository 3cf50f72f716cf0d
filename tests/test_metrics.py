"""Edit distances against a brute-force recursion and against rapidfuzz."""
from __future__ import annotations

import random
import sys
from functools import lru_cache

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein as rf_lev

from src.metrics import cer, levenshtein, levenshtein_batch, levenshtein_dp, mean_levenshtein, wer

sys.setrecursionlimit(10_000)


def brute_force(a, b) -> int:
    """The definition, memoised: d(i, j) over suffixes a[i:], b[j:]."""

    @lru_cache(maxsize=None)
    def d(i: int, j: int) -> int:
        if i == len(a):
            return len(b) - j
        if j == len(b):
            return len(a) - i
        return min(d(i + 1, j) + 1, d(i, j + 1) + 1, d(i + 1, j + 1) + (a[i] != b[j]))

    return d(0, 0)


def mutate(rng: random.Random, s: str, alphabet: str, n_edits: int) -> str:
    out = list(s)
    for _ in range(n_edits):
        k = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.4 and k < len(out):
            out[k] = rng.choice(alphabet)
        elif op < 0.7 and k < len(out):
            del out[k]
        else:
            out.insert(k, rng.choice(alphabet))
    return "".join(out)


ADVERSARIAL = [
    ("", ""),
    ("", "A"),
    ("ABC", ""),
    ("KITTEN", "SITTING"),
    ("SAME TEXT", "SAME TEXT"),
    ("AAAA", "BBBB"),  # disjoint alphabets
    ("A" * 700, ""),
    ("", "B" * 650),
    ("A" * 640, "B" * 640),
    ("AB" * 320, "BA" * 320),
    ("A" * 64, "A" * 65),  # word boundaries of the bit-parallel kernel
    ("A" * 63 + "B", "A" * 64),
    ("X" * 128, "X" * 127 + "Y"),
    ("HELLO WORLD", "WORLD HELLO"),
    ("É Ü ŒÇ", "E U OC"),  # beyond ASCII: code points, not bytes
    ("日本語", "日本"),
]


@pytest.mark.parametrize("a,b", ADVERSARIAL)
def test_adversarial_pairs_match_references(a, b):
    want = rf_lev.distance(a, b)
    if len(a) * len(b) <= 20_000:
        assert brute_force(a, b) == want
    assert levenshtein(a, b) == want
    assert levenshtein(b, a) == want
    assert levenshtein_batch([a], [b])[0] == want
    codes = lambda s: np.array([ord(c) for c in s], dtype=np.int32)  # noqa: E731
    assert levenshtein_dp(codes(a), codes(b)) == want


def test_random_pairs_match_brute_force_and_rapidfuzz():
    rng = random.Random(0)
    hyps, refs = [], []
    for _ in range(400):
        alphabet = rng.choice(["AB", "ABC ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ' "])
        ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        hyp = mutate(rng, ref, alphabet, rng.randint(0, 12)) if rng.random() < 0.7 else \
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        hyps.append(hyp)
        refs.append(ref)
    got = levenshtein_batch(hyps, refs)
    for h, r, d in zip(hyps, refs, got):
        assert d == brute_force(h, r) == rf_lev.distance(h, r), (h, r)


@pytest.mark.parametrize("threads", [1, 2])
def test_long_random_pairs_match_rapidfuzz_in_batch(threads):
    # Lengths cross the 64- and 128-character word boundaries of the bit-parallel kernel.
    rng = random.Random(threads)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ' "
    hyps, refs = [], []
    for _ in range(600):
        ref = "".join(rng.choice(alphabet) for _ in range(rng.choice([rng.randint(0, 700), rng.randint(55, 140)])))
        hyps.append(mutate(rng, ref, alphabet, rng.randint(0, len(ref) // 4 + 1)))
        refs.append(ref)
    got = levenshtein_batch(hyps, refs, threads=threads)
    want = np.array([rf_lev.distance(h, r) for h, r in zip(hyps, refs)])
    assert np.array_equal(got, want)


def test_token_sequences_and_large_ids():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.integers(0, 31, rng.integers(0, 200))
        b = rng.integers(0, 31, rng.integers(0, 200))
        assert levenshtein(a, b) == rf_lev.distance(a.tolist(), b.tolist())
    # ids far apart or negative are compared by value
    assert levenshtein([10**12, -5, 7], [-5, 7]) == 1
    assert levenshtein_batch([[1, 2, 3], []], [[1, 3], [4]]).tolist() == [1, 1]


def test_mixing_strings_and_tokens_is_an_error():
    with pytest.raises(TypeError):
        levenshtein("AB", [1, 2])
    with pytest.raises(TypeError):
        levenshtein_batch(["AB"], [[1, 2]])
    with pytest.raises(ValueError):
        levenshtein_batch(["A"], ["A", "B"])


def test_mean_cer_wer_against_formulas():
    hyps = ["THE CAT SAT", "", "A B C", "HELLO"]
    refs = ["THE CAT SAT ON", "NOT EMPTY", "A B C", "HELO"]
    dists = [rf_lev.distance(h, r) for h, r in zip(hyps, refs)]
    assert mean_levenshtein(hyps, refs) == pytest.approx(np.mean(dists))
    assert cer(hyps, refs) == pytest.approx(sum(dists) / sum(len(r) for r in refs))
    # words: THE CAT SAT vs THE CAT SAT ON: 1; "" vs NOT EMPTY: 2; equal: 0; HELLO vs HELO: 1
    assert wer(hyps, refs) == pytest.approx((1 + 2 + 0 + 1) / (4 + 2 + 3 + 1))
    assert wer(["A  B"], ["A B"]) == 0.0  # words split on any whitespace
    assert cer([""], [""]) == 0.0
    assert cer(["X"], [""]) == float("inf")
    with pytest.raises(ValueError):
        mean_levenshtein([], [])


def test_the_competition_score_on_a_known_case():
    # Kaggle: mean over utterances of the unnormalised character distance
    assert mean_levenshtein(["HELLO WORLD", "GOOD"], ["HELLO WORD", "GOOD"]) == 0.5

