"""CTC decoding against brute force: every alignment of tiny random log-probs enumerated."""
import itertools
import math

import numpy as np
import pytest

from src.decoding.ctc_decode import ctc_greedy, ctc_prefix_beam_search

LABELS = (3, 4, 5)  # A, B, C; blank is 0, <sos>/<eos> (1, 2) are never emitted
V = 6


def random_log_probs(rng, batch, frames, peak=0.0):
    x = rng.normal(size=(batch, frames, V)) * (1.0 + peak)
    x[:, :, 1:3] = -1e9  # never emitted: as if masked
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x.astype(np.float32)


def collapse(path):
    out, prev = [], None
    for s in path:
        if s != 0 and s != prev:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(lp):
    """Every labelling's probability, summed over all its alignments: {labelling: log-prob}."""
    totals = {}
    for path in itertools.product((0, *LABELS), repeat=lp.shape[0]):
        score = sum(float(lp[t, s]) for t, s in enumerate(path))
        key = collapse(path)
        totals[key] = np.logaddexp(totals.get(key, -math.inf), score)
    return totals


@pytest.mark.parametrize("seed", range(12))
def test_prefix_beam_search_finds_the_brute_force_best_labelling(seed):
    rng = np.random.default_rng(seed)
    frames = int(rng.integers(1, 6))
    lp = random_log_probs(rng, 1, frames)
    totals = brute_force(lp[0])
    best = max(totals, key=totals.get)
    ids, scores = ctc_prefix_beam_search(lp, np.array([frames]), beam_size=400, token_top_k=3,
                                         prune_log_prob=-1e9, return_scores=True)
    assert tuple(ids[0]) == best
    assert scores[0] == pytest.approx(totals[best], abs=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_is_the_collapsed_best_path(seed):
    rng = np.random.default_rng(100 + seed)
    lp = random_log_probs(rng, 3, 7)
    lens = np.array([7, 4, 1])
    for b, ids in enumerate(ctc_greedy(lp, lens)):
        best_path = [int(np.argmax(lp[b, t])) for t in range(lens[b])]
        assert ids == list(collapse(best_path))


def test_batched_equals_one_by_one_and_padding_is_ignored():
    rng = np.random.default_rng(7)
    lp = random_log_probs(rng, 4, 30, peak=2.0)
    lens = np.array([30, 17, 5, 22])
    garbage = lp.copy()
    for b, n in enumerate(lens):
        garbage[b, n:] = random_log_probs(rng, 1, 30 - n)[0]  # other values beyond the length
    batched = ctc_prefix_beam_search(garbage, lens, beam_size=5)
    alone = [ctc_prefix_beam_search(lp[b : b + 1, :n], np.array([n]), beam_size=5)[0] for b, n in enumerate(lens)]
    assert batched == alone
    assert ctc_greedy(garbage, lens) == [ctc_greedy(lp[b : b + 1, :n], np.array([n]))[0] for b, n in enumerate(lens)]


def test_peaked_outputs_decode_to_the_spelled_text_and_torch_inputs_work():
    import torch

    frames = [0, 3, 3, 0, 4, 0, 4, 4, 5, 0]  # "A B B C": a repeat needs the blank between
    lp = np.full((1, len(frames), V), -20.0, dtype=np.float32)
    for t, s in enumerate(frames):
        lp[0, t, s] = 0.0
    expected = [3, 4, 4, 5]
    assert ctc_greedy(torch.from_numpy(lp), torch.tensor([len(frames)])) == [expected]
    assert ctc_prefix_beam_search(torch.from_numpy(lp), torch.tensor([len(frames)]), beam_size=4) == [expected]
    assert ctc_prefix_beam_search(lp, np.array([len(frames)]), beam_size=1) == [expected]
    assert ctc_greedy(lp, np.array([0])) == [[]] and ctc_prefix_beam_search(lp, np.array([0])) == [[]]


@pytest.mark.parametrize("seed", range(8))
def test_lm_fusion_finds_the_brute_force_best_of_ctc_plus_lm(seed):
    """score(y) = log p_ctc(y) + alpha * log p_LM(y <eos>) + beta * |y|, every labelling enumerated."""
    from src.lm import CharNgramLM

    rng = np.random.default_rng(200 + seed)
    lm = CharNgramLM.build(["ABBA", "CAB", "ABC", "BAC", "AA"], order=int(rng.integers(1, 5)))
    alpha, beta = float(rng.uniform(0.2, 2.0)), float(rng.uniform(-1.0, 2.0))
    frames = int(rng.integers(1, 6))
    lp = random_log_probs(rng, 1, frames)

    def fused(labels, ctc):
        lm_total, _ = lm.log_prob("".join("ABC"[t - 3] for t in labels))  # the reference LM, <eos> included
        return ctc + alpha * lm_total + beta * len(labels)

    totals = {y: fused(y, ctc) for y, ctc in brute_force(lp[0]).items()}
    best = max(totals, key=totals.get)
    ids, scores = ctc_prefix_beam_search(lp, np.array([frames]), beam_size=400, token_top_k=3, prune_log_prob=-1e9,
                                         return_scores=True, lm=lm.packed(), lm_weight=alpha, length_bonus=beta)
    assert tuple(ids[0]) == best
    assert scores[0] == pytest.approx(totals[best], abs=1e-4)


def test_zero_lm_weight_is_the_plain_search():
    from src.lm import CharNgramLM

    rng = np.random.default_rng(3)
    lp = random_log_probs(rng, 3, 40, peak=1.0)
    lens = np.array([40, 25, 9])
    lm = CharNgramLM.build(["ABC", "CBA"], order=3).packed()
    plain = ctc_prefix_beam_search(lp, lens, beam_size=4, return_scores=True)
    with_lm = ctc_prefix_beam_search(lp, lens, beam_size=4, return_scores=True, lm=lm, lm_weight=0.0)
    assert plain[0] == with_lm[0]
    np.testing.assert_allclose(plain[1], with_lm[1])
