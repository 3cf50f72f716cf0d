"""The parts of the beam search (src/decoding/beam.py) against hand-built tensors and direct model calls."""
from __future__ import annotations

import math

import torch

from test_decoding import TinyAttentionModel, tiny_encoded

from src.decoding import greedy_decode
from src.decoding.beam import Beams, ModelScorer, Pruned, beam_search, finished, fuse, prune
from src.vocab import EOS, PAD, SOS, TOKEN_TO_ID, VOCAB_SIZE

V = VOCAB_SIZE
A, B, C = (TOKEN_TO_ID[c] for c in "ABC")
INF = math.inf


def two_utterances() -> Beams:
    """B = 2 utterances (original ids 5 and 7) x K = 2 beams, 2 characters each so far."""
    return Beams(scores=torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]),
                 tokens=torch.tensor([A, B, C, A]),
                 seqs=torch.tensor([[A, A, 0], [B, B, 0], [C, C, 0], [A, A, 0]]),
                 utt=torch.tensor([5, 7]), limits=torch.tensor([9, 9]), n_finished=torch.tensor([0, 1]),
                 pools=[[] for _ in range(8)])


def pruned(beam, token, scores, ended=None, top_scores=None, top_beam=None) -> Pruned:
    ended = torch.zeros(2, 4, dtype=torch.bool) if ended is None else ended
    return Pruned(scores=torch.tensor(scores), beam=torch.tensor(beam), token=torch.tensor(token), ended=ended,
                  top_scores=torch.zeros(2, 4) if top_scores is None else top_scores,
                  top_beam=torch.zeros(2, 4, dtype=torch.long) if top_beam is None else top_beam)


def test_select_follows_the_chosen_beams():
    beams = two_utterances()
    src = beams.select(pruned(beam=[[1, 1], [0, 1]], token=[[C, A], [B, B]], scores=[[-2.5, -2.7], [-3.1, -4.2]]), t=2)
    assert src.tolist() == [1, 1, 2, 3]  # rows of the same utterance only
    assert beams.seqs.tolist() == [[B, B, C], [B, B, A], [C, C, B], [A, A, B]]
    assert beams.tokens.tolist() == [C, A, B, B]
    assert torch.equal(beams.scores, torch.tensor([[-2.5, -2.7], [-3.1, -4.2]]))


def test_drop_done_removes_the_rows_of_finished_utterances():
    beams = two_utterances()
    src = beams.drop_done(torch.tensor([True, False]), torch.tensor([1, 0, 3, 2]))
    assert src.tolist() == [3, 2]
    assert beams.seqs.tolist() == [[C, C, 0], [A, A, 0]]
    assert beams.tokens.tolist() == [C, A]
    assert beams.scores.tolist() == [[-3.0, -4.0]]
    assert beams.utt.tolist() == [7] and beams.limits.tolist() == [9] and beams.n_finished.tolist() == [1]


def test_pool_keeps_the_ended_prefixes_under_their_original_utterance():
    beams = two_utterances()
    ended = torch.tensor([[False, True, False, False], [True, False, False, True]])
    top_scores = torch.tensor([[-1.5, -1.6, -2.0, -9.0], [-3.2, -3.3, -4.0, -4.5]])
    top_beam = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0]])
    beams.pool(pruned([[0, 0], [0, 0]], [[A, A], [A, A]], [[0.0, 0.0], [0.0, 0.0]], ended, top_scores, top_beam), t=2)
    assert beams.n_finished.tolist() == [1, 3]
    assert [(h.tokens, h.log_prob, h.length) for h in beams.pools[5]] == [([B, B], top_scores[0, 1].item(), 3)]
    assert [(h.tokens, h.log_prob, h.length) for h in beams.pools[7]] == [
        ([A, A], top_scores[1, 0].item(), 3), ([C, C], top_scores[1, 3].item(), 3)]


def test_start_keeps_one_live_beam_per_utterance():
    beams = Beams.start(torch.tensor([4, 6]), beam_size=3, device="cpu")
    assert beams.scores.tolist() == [[0.0, -INF, -INF]] * 2
    assert beams.tokens.tolist() == [SOS] * 6 and beams.seqs.shape == (6, 7)
    assert beams.utt.tolist() == [0, 1] and beams.n_finished.tolist() == [0, 0] and len(beams.pools) == 2


def scores_row(best: dict[int, float]) -> torch.Tensor:
    row = torch.full((V,), -50.0)
    for tok, s in best.items():
        row[tok] = s
    return row


def test_prune_pools_eos_ranked_above_the_kth_live_candidate():
    # K = 2, one utterance. Candidates by total: beam0+EOS -1.0, beam0+A -1.1, beam1+EOS -1.2, beam1+B -1.3,
    # beam0+C -1.4: the two <eos> ones rank above the 2nd live one (beam1+B), so both enter the pool.
    logp = torch.stack([scores_row({EOS: -1.0, A: -1.1, C: -1.4}), scores_row({EOS: -0.7, B: -0.8})])  # (K, V)
    out = prune(torch.tensor([[0.0, -0.5]]), logp, torch.tensor([False]))
    assert out.beam.tolist() == [[0, 1]] and out.token.tolist() == [[A, B]]
    torch.testing.assert_close(out.scores, torch.tensor([[-1.1, -1.3]]))
    assert out.ended.tolist() == [[True, False, True, False]]
    assert out.top_beam.tolist() == [[0, 0, 1, 1]]


def test_prune_does_not_pool_eos_below_the_kth_live_candidate():
    logp = torch.stack([scores_row({A: -0.1, B: -0.2, EOS: -3.0}), scores_row({C: -0.3, EOS: -0.4})])
    out = prune(torch.tensor([[0.0, -INF]]), logp, torch.tensor([False]))
    assert out.token.tolist() == [[A, B]] and not out.ended.any()


def test_prune_forces_eos_at_the_length_limit():
    logp = torch.stack([scores_row({A: -0.1, EOS: -3.0}), scores_row({B: -0.2, EOS: -2.0})] * 2)  # (2*K, V)
    out = prune(torch.tensor([[0.0, -1.0], [0.0, -1.0]]), logp, torch.tensor([True, False]))
    assert out.ended[0].tolist() == [True, True, False, False]  # both beams end, with their real score
    torch.testing.assert_close(out.top_scores[0, :2], torch.tensor([-3.0, -3.0]))
    assert not out.ended[1].any() and out.token[1].tolist() == [A, B]


def test_finished_at_k_pooled_or_at_the_limit():
    done = finished(torch.tensor([3, 2, 0]), torch.tensor([False, False, True]), beam_size=3)
    assert done.tolist() == [True, False, True]


def test_fuse_alone_is_the_score_and_together_the_weighted_sum():
    g = torch.Generator().manual_seed(0)
    model = torch.log_softmax(torch.randn(4, V, generator=g), -1)
    model[:, PAD] = model[:, SOS] = -INF
    other = torch.randn(4, V, generator=g)
    assert fuse([(0.7, model)]) is model
    fused = fuse([(0.7, model), (0.3, other), (0.5, torch.ones(4, V))])
    want = 0.7 * model.masked_fill(torch.isinf(model), 0.0) + 0.3 * other + 0.5
    want[:, PAD] = want[:, SOS] = -INF
    assert torch.equal(fused, want)
    assert not torch.isnan(fuse([(0.0, model), (1.0, other)])).any()  # a zero-weighted model gives no NaN


def test_model_scorer_equals_calling_the_model_directly():
    model = TinyAttentionModel(seed=3)
    encoded = tiny_encoded([5, 3, 4], seed=3)
    scorer = ModelScorer(model, encoded)
    state, tokens = model.init_state(encoded), torch.full((3,), SOS)
    index = torch.tensor([2, 2, 0])
    for t, nxt in enumerate([torch.tensor([A, B, C]), torch.tensor([C, C, EOS])]):
        logits, state, _ = model.step(tokens, state, encoded)
        want = torch.log_softmax(logits + torch.where(torch.isin(torch.arange(V), torch.tensor([PAD, SOS])),
                                                      -INF, 0.0), -1)
        assert torch.equal(scorer.score(t), want)
        scorer.select(index, nxt)
        state, tokens = model.reorder_state(state, index), nxt
    assert torch.equal(scorer.score(2), torch.log_softmax(
        model.step(tokens, state, encoded)[0].masked_fill(torch.isin(torch.arange(V), torch.tensor([PAD, SOS])),
                                                          -INF), -1))


def test_model_scorer_follows_leaving_utterances():
    model = TinyAttentionModel(seed=4)
    encoded = tiny_encoded([5, 3], seed=4)
    rows = encoded.index_select(torch.tensor([0, 0, 1, 1]))  # K = 2 rows per utterance
    scorer = ModelScorer(model, rows)
    scorer.score(0)
    scorer.select(torch.tensor([2, 3]), torch.tensor([A, B]))  # utterance 0 leaves
    alone = ModelScorer(model, encoded.index_select(torch.tensor([1, 1])))
    alone.score(0)
    alone.select(torch.tensor([0, 1]), torch.tensor([A, B]))
    torch.testing.assert_close(scorer.score(1), alone.score(1))  # equal up to the batch size's rounding


def test_beam_size_one_equals_greedy_with_a_zero_weighted_scorer():
    model = TinyAttentionModel(seed=5)
    encoded = tiny_encoded([6, 4, 5], seed=5)
    max_lens = torch.tensor([6, 3, 8])
    unused = [(0.0, lambda enc: (_ for _ in ()).throw(AssertionError("a zero weight builds no scorer")))]
    assert beam_search(model, encoded, max_lens, beam_size=1, scorers=unused) == greedy_decode(model, encoded, max_lens)
