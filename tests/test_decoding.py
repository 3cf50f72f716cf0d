"""Greedy, beam search and CTC prefix scores against independent references.

Fake models implement the decoder interface (encode / init_state / step /
reorder_state) with answers that can be worked out by hand or by brute force;
the real LAS (small config) checks the same properties end to end.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.config import DecodingConfig, ModelConfig
from src.models.las import LASConfig
from src.decoding import beam_search, decode_batch, greedy_decode, max_output_lengths, score_sequences
from src.decoding.ctc_prefix import CTCPrefixScorer
from src.models import build_model
from src.models.interface import EncoderOutput
from src.vocab import EOS, PAD, SOS, TOKEN_TO_ID, VOCAB_SIZE

V = VOCAB_SIZE
A, B, C, D = (TOKEN_TO_ID[c] for c in "ABCD")


# --------------------------------------------------------------------------
# Fake models


class TinyAttentionModel(nn.Module):
    """A small random LAS-like decoder: GRU cell + dot attention over random keys."""

    def __init__(self, seed: int, hidden: int = 16, eos_bias: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(V, hidden, generator=g))
        self.cell = nn.GRUCell(2 * hidden, hidden)
        for p in self.cell.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.out = nn.Parameter(torch.randn(2 * hidden, V, generator=g))
        self.eos_bias = eos_bias
        self.hidden = hidden

    def encode(self, features, feature_lens):
        return EncoderOutput((features, features), feature_lens, None, None)

    def init_state(self, encoded):
        return (encoded.memory[0].new_zeros(encoded.memory[0].shape[0], self.hidden),)

    def step(self, tokens, state, encoded):
        (h,) = state
        energy = torch.einsum("bth,bh->bt", encoded.memory[0], h)  # (B, T')
        mask = torch.arange(energy.shape[1])[None, :] < encoded.lens[:, None]
        attn = torch.softmax(energy.masked_fill(~mask, -math.inf), dim=1)
        context = torch.einsum("bt,bth->bh", attn, encoded.memory[1])  # (B, H)
        h = self.cell(torch.cat([self.emb[tokens], context], dim=1), h)
        logits = torch.cat([h, context], dim=1) @ self.out
        logits[:, EOS] += self.eos_bias
        return logits, (h,), attn

    @staticmethod
    def reorder_state(state, index):
        return tuple(s.index_select(0, index) for s in state)


def tiny_encoded(lengths, hidden=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    keys = torch.randn(len(lengths), max(lengths), hidden, generator=g)
    return EncoderOutput((keys, keys), lens, None, None)


class MarkovModel:
    """Next-token distribution depends on the last token only: log_probs[last] (V,).

    The state carries each row's whole prefix, and every prefix fed to
    ``step`` is recorded, so tests can check what was extended.
    """

    def __init__(self, table: dict[int, dict[int, float]], max_steps: int = 12):
        self.logits = torch.full((V, V), -40.0)
        for prev, nxt in table.items():
            for tok, p in nxt.items():
                self.logits[prev, tok] = math.log(p)
        self.max_steps = max_steps
        self.fed: list[list[int]] = []
        self.training = False

    def parameters(self):
        return iter(())

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def init_state(self, encoded):
        n = encoded.lens.shape[0]
        return (torch.zeros(n, self.max_steps + 1, dtype=torch.long), torch.zeros(n, dtype=torch.long))

    def step(self, tokens, state, encoded):
        prefix, length = state
        prefix = prefix.clone()
        prefix[torch.arange(len(tokens)), length] = tokens
        length = length + 1
        for row, n in zip(prefix.tolist(), length.tolist()):
            self.fed.append(row[:n])
        attn = torch.ones(len(tokens), encoded.memory[0].shape[1]) / encoded.memory[0].shape[1]
        return self.logits[tokens].clone(), (prefix, length), attn

    @staticmethod
    def reorder_state(state, index):
        return tuple(s.index_select(0, index) for s in state)


def markov_log_prob(model: MarkovModel, seq: list[int]) -> float:
    """Brute-force reference: sum of log p(next | last) with the decoders' masking."""
    total, prev = 0.0, SOS
    for tok in list(seq) + [EOS]:
        row = model.logits[prev].clone()
        row[PAD] = row[SOS] = -math.inf
        total += torch.log_softmax(row, 0)[tok].item()
        prev = tok
    return total


# A trap: greedy takes A (0.55) and then has at best 0.3 to finish; B then <eos> is worth 0.45.
TRAP = {
    SOS: {A: 0.55, B: 0.45},
    A: {A: 0.2, C: 0.25, D: 0.25, EOS: 0.3},
    B: {EOS: 0.97, C: 0.03},
    C: {EOS: 0.5, D: 0.5},
    D: {EOS: 0.6, A: 0.4},
}


def encoded_for(n: int, frames: int = 5) -> EncoderOutput:
    keys = torch.zeros(n, frames, 4)
    return EncoderOutput((keys, keys), torch.full((n,), frames), None, None)


# --------------------------------------------------------------------------
# Length limit


def test_max_output_lengths_formula_over_many_lengths():
    for ratio, minimum in [(2.0, 16), (1.3, 0), (0.5, 3)]:
        lens = torch.arange(0, 200)
        got = max_output_lengths(lens, ratio, minimum)
        want = [max(minimum, math.ceil(ratio * t)) for t in range(200)]
        assert got.tolist() == want


def test_default_limit_covers_the_longest_dev_transcript():
    # dev-clean: 3,260 input frames, 518 characters (the length policy is per input frame, any model)
    cfg = DecodingConfig()
    assert max_output_lengths(torch.tensor([3260]), cfg.max_chars_per_frame, cfg.max_length_min).item() >= 518


# --------------------------------------------------------------------------
# Greedy


def greedy_reference(model, encoded, max_lens):
    """One utterance at a time, one token at a time, with Python control flow."""
    out = []
    for b in range(encoded.lens.shape[0]):
        enc = encoded.index_select(torch.tensor([b]))
        state = model.init_state(enc)
        token, seq = SOS, []
        for _ in range(int(max_lens[b])):
            logits, state, _ = model.step(torch.tensor([token]), state, enc)
            logits = logits[0].clone()
            logits[PAD] = logits[SOS] = -math.inf
            token = int(logits.argmax())
            if token == EOS:
                break
            seq.append(token)
        out.append(seq)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_batched_equals_one_by_one(seed):
    model = TinyAttentionModel(seed, eos_bias=3.0)
    encoded = tiny_encoded([7, 3, 12, 5, 9], seed=seed)
    max_lens = torch.tensor([6, 20, 3, 15, 1])
    got = greedy_decode(model, encoded, max_lens)
    assert got == greedy_reference(model, encoded, max_lens)
    assert all(len(s) <= int(m) for s, m in zip(got, max_lens))
    assert all(EOS not in s and SOS not in s and PAD not in s for s in got)


def test_greedy_falls_into_the_trap():
    model = MarkovModel(TRAP)
    assert greedy_decode(model, encoded_for(1), torch.tensor([10])) == [[A]]


# --------------------------------------------------------------------------
# Beam search


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_size_one_equals_greedy(seed):
    model = TinyAttentionModel(seed, eos_bias=2.0)
    encoded = tiny_encoded([7, 3, 12, 5, 9], seed=seed)
    max_lens = torch.tensor([6, 20, 3, 15, 9])
    assert beam_search(model, encoded, max_lens, beam_size=1) == greedy_decode(model, encoded, max_lens)


def beam_reference(model, encoded, limit, k, length_penalty):
    """Textbook beam search for ONE utterance, Python lists, each prefix re-run from <sos>.

    Rules: candidates ranked by total score; walking down the top 2K, <eos> ones
    are pooled and the first K others kept; a hypothesis with ``limit``
    characters may only take <eos>; stop once K hypotheses are pooled.
    """
    beams, finished, t = [([], 0.0)], [], 0
    while True:
        cands = []
        for seq, score in beams:
            state = model.init_state(encoded)
            for tok in [SOS] + seq:
                logits, state, _ = model.step(torch.tensor([tok]), state, encoded)
            row = logits[0].float().clone()
            row[PAD] = row[SOS] = -math.inf
            lp = torch.log_softmax(row, 0)
            for c in range(V):
                if t < limit or c == EOS:
                    cands.append((score + lp[c].item(), seq, c))
        cands.sort(key=lambda x: -x[0])
        beams = []
        for total, seq, c in cands[: 2 * k]:
            if c == EOS:
                finished.append((seq, total))
            else:
                beams.append((seq + [c], total))
            if len(beams) == k:
                break
        t += 1
        if len(finished) >= k or t > limit:
            return max(finished, key=lambda h: h[1] / (len(h[0]) + 1) ** length_penalty)


@pytest.mark.parametrize("seed,k,length_penalty", [(0, 2, 0.0), (1, 3, 1.0), (4, 5, 0.0), (3, 4, 0.5)])
def test_batched_beam_equals_textbook_beam(seed, k, length_penalty):
    model = TinyAttentionModel(seed, eos_bias=2.5)
    encoded = tiny_encoded([6, 9, 4, 11], seed=seed)
    limits = [14, 9, 12, 6]
    hyps = beam_search(model, encoded, torch.tensor(limits), beam_size=k, length_penalty=length_penalty,
                       return_hypotheses=True)
    for b in range(4):
        tokens, total = beam_reference(model, encoded.index_select(torch.tensor([b])), limits[b], k, length_penalty)
        assert hyps[b].tokens == tokens
        assert hyps[b].log_prob == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_not_worse_than_greedy_in_total_log_prob(seed):
    # Not a theorem: a narrow beam can prune the greedy path and end worse (for
    # K <= 5 this random decoder has such cases, and the textbook search above
    # agrees with them). A wide beam on these models does not.
    model = TinyAttentionModel(seed, eos_bias=2.5)
    encoded = tiny_encoded([6, 9, 4, 11], seed=seed)
    max_lens = torch.tensor([40, 40, 40, 40])
    greedy = greedy_decode(model, encoded, max_lens)
    beam = beam_search(model, encoded, max_lens, beam_size=10, length_penalty=0.0)
    g_lp = score_sequences(model, encoded, greedy)
    b_lp = score_sequences(model, encoded, beam)
    assert torch.all(b_lp >= g_lp - 1e-5), (b_lp, g_lp)


def test_beam_escapes_the_trap_and_finds_the_brute_force_best():
    model = MarkovModel(TRAP)
    alphabet = [A, B, C, D]
    candidates = [list(s) for n in range(0, 6) for s in itertools.product(alphabet, repeat=n)]
    best = max(candidates, key=lambda s: markov_log_prob(model, s))
    assert best == [B]
    for k in (2, 3, 6):
        hyps = beam_search(model, encoded_for(1), torch.tensor([10]), beam_size=k, length_penalty=0.0,
                           return_hypotheses=True)
        assert hyps[0].tokens == best
        assert hyps[0].log_prob == pytest.approx(markov_log_prob(model, best), abs=1e-4)


def test_finished_hypotheses_are_never_extended():
    model = MarkovModel(TRAP)
    beam_search(model, encoded_for(3), torch.tensor([10, 4, 7]), beam_size=4, length_penalty=1.0)
    assert model.fed, "the model was never stepped"
    for prefix in model.fed:
        assert EOS not in prefix, prefix  # no step ever continues a hypothesis that ended
        assert prefix[0] == SOS and SOS not in prefix[1:]
    greedy_decode(model, encoded_for(3), torch.tensor([10, 4, 7]))
    assert all(EOS not in prefix for prefix in model.fed)


def test_length_limit_is_respected_and_pooled():
    # <eos> is (almost) impossible: every hypothesis runs into its limit
    model = TinyAttentionModel(5, eos_bias=-100.0)
    encoded = tiny_encoded([4, 8, 6], seed=5)
    max_lens = torch.tensor([3, 7, 1])
    for k in (1, 3):
        out = beam_search(model, encoded, max_lens, beam_size=k)
        assert [len(s) for s in out] == [3, 7, 1]
    assert [len(s) for s in greedy_decode(model, encoded, max_lens)] == [3, 7, 1]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batching_does_not_change_answers(length_penalty):
    model = TinyAttentionModel(7, eos_bias=2.5)
    lengths = [7, 3, 12, 5, 9, 2]
    encoded = tiny_encoded(lengths, seed=7)
    max_lens = torch.tensor([14, 6, 24, 10, 18, 4])
    together = beam_search(model, encoded, max_lens, beam_size=4, length_penalty=length_penalty)
    for b in range(len(lengths)):
        enc = encoded.index_select(torch.tensor([b]))
        enc = EncoderOutput((enc.memory[0][:, : lengths[b]], enc.memory[1][:, : lengths[b]]), enc.lens, None, None)
        alone = beam_search(model, enc, max_lens[b : b + 1], beam_size=4, length_penalty=length_penalty)
        assert alone[0] == together[b], b


def test_length_penalty_prefers_longer_hypotheses():
    # "B <eos>" (0.45 * 0.97) against "A <eos>" (0.55 * 0.3) and the longer ones;
    # with a strong length penalty the longest good hypothesis wins instead.
    model = MarkovModel(TRAP)
    hyp0 = beam_search(model, encoded_for(1), torch.tensor([10]), beam_size=6, length_penalty=0.0,
                       return_hypotheses=True)[0]
    hyp3 = beam_search(model, encoded_for(1), torch.tensor([10]), beam_size=6, length_penalty=3.0,
                       return_hypotheses=True)[0]
    assert hyp0.tokens == [B]
    assert len(hyp3.tokens) > 1
    assert hyp3.rank(3.0) > hyp0.log_prob / (len(hyp0.tokens) + 1) ** 3.0


# --------------------------------------------------------------------------
# CTC prefix scores


def brute_force_prefix_probs(log_probs: torch.Tensor, labels: list[int], max_len: int):
    """Every CTC alignment path over ``labels`` + blank: P(output == y), P(output starts with y)."""
    frames = log_probs.shape[0]
    exact: dict[tuple, float] = {}
    for path in itertools.product([PAD] + labels, repeat=frames):
        p = math.exp(sum(log_probs[t, s].item() for t, s in enumerate(path)))
        out, prev = [], None
        for s in path:
            if s != PAD and s != prev:
                out.append(s)
            prev = s
        exact[tuple(out)] = exact.get(tuple(out), 0.0) + p
    prefix = {}
    for y in exact:
        for n in range(len(y) + 1):
            prefix[y[:n]] = prefix.get(y[:n], 0.0) + exact[y]
    return exact, prefix


def random_ctc_log_probs(frames: int, labels: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((frames, V), -1e4)
    for s in [PAD] + labels:
        logits[:, s] = torch.randn(frames, generator=g) * 2
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_ctc_prefix_scores_match_brute_force(seed):
    frames, labels = 6, [A, B]
    lp = random_ctc_log_probs(frames, labels, seed)
    exact, prefix = brute_force_prefix_probs(lp, labels, frames)
    for path in ([A, B, A], [B, B], [A, A, B]):
        scorer = CTCPrefixScorer(lp[None], torch.tensor([frames]))
        total = 0.0
        for n, tok in enumerate(path):
            delta = scorer.score(n)
            want_eos = math.log(exact.get(tuple(path[:n]), 1e-300))
            assert total + delta[0, EOS].item() == pytest.approx(want_eos, abs=1e-4)
            for c in labels:
                want = math.log(prefix.get(tuple(path[:n] + [c]), 1e-300))
                assert total + delta[0, c].item() == pytest.approx(want, abs=1e-4)
            total += delta[0, tok].item()
            scorer.select(torch.tensor([0]), torch.tensor([tok]))


def test_ctc_prefix_eos_score_equals_ctc_loss_with_padding():
    # Rows of different lengths share one padded tensor; frames past a row's length change nothing.
    labels = [A, B, C]
    lens = torch.tensor([9, 5])
    lp = torch.stack([random_ctc_log_probs(9, labels, 3), random_ctc_log_probs(9, labels, 4)])
    target = [C, A, A]
    scorer = CTCPrefixScorer(lp, lens)
    total = torch.zeros(2)
    for n, tok in enumerate(target):
        total += scorer.score(n)[:, tok]
        scorer.select(torch.tensor([0, 1]), torch.tensor([tok, tok]))
    total += scorer.score(len(target))[:, EOS]
    want = -F.ctc_loss(lp.transpose(0, 1), torch.tensor([target, target]), lens, torch.tensor([3, 3]),
                       blank=PAD, reduction="none")
    assert torch.allclose(total, want, atol=1e-4)


class UniformAttentionModel(MarkovModel):
    """Attention says nothing (uniform over the characters); only CTC can decide."""

    def __init__(self, ctc_log_probs):
        super().__init__({})
        self.logits = torch.zeros(V, V)
        self.ctc_log_probs = ctc_log_probs


def test_ctc_weighted_beam_follows_the_ctc_head():
    frames = 8
    peaky = torch.full((frames, V), -20.0)
    for t, s in enumerate([PAD, A, A, PAD, B, B, PAD, PAD]):  # the CTC head reads "AB"
        peaky[t, s] = 0.0
    lp = torch.log_softmax(peaky, -1)[None]
    keys = torch.zeros(1, frames, 4)
    encoded = EncoderOutput((keys, keys), torch.tensor([frames]), lp, torch.tensor([frames]))
    model = UniformAttentionModel(lp)
    from src.decoding import ctc_prefix_scorer

    out = beam_search(model, encoded, torch.tensor([10]), beam_size=3, length_penalty=0.0,
                      scorers=[(0.5, ctc_prefix_scorer)], attention_weight=0.5)
    assert out == [[A, B]]
    # the same through the configured decoder: decoding.ctc_weight builds that scorer list
    from src.decoding import scorers_for

    weight, scorers = scorers_for(encoded, DecodingConfig(ctc_weight=0.5))
    assert weight == 0.5 and [w for w, _ in scorers] == [0.5]


# --------------------------------------------------------------------------
# The real LAS


SMALL = ModelConfig(las=LASConfig(conv_channels=16, listener_hidden=16, listener_layers=2, attention_dim=8,
                                  embedding_dim=8, speller_hidden=16, ctc_head=True))


def las_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([64, 40, 23, 50])
    return SimpleNamespace(features=torch.randn(4, 64, 28, generator=g), feature_lens=lens)


def test_las_beam_size_one_equals_greedy_and_beats_it():
    torch.manual_seed(0)
    model = build_model(SMALL, 28, V).eval()
    batch = las_batch()
    with torch.no_grad():
        encoded = model.encode(batch.features, batch.feature_lens)
    max_lens = max_output_lengths(encoded.lens, 2.0, 16)
    greedy = greedy_decode(model, encoded, max_lens)
    assert beam_search(model, encoded, max_lens, beam_size=1) == greedy
    beam = beam_search(model, encoded, max_lens, beam_size=4, length_penalty=0.0)
    assert torch.all(score_sequences(model, encoded, beam) >= score_sequences(model, encoded, greedy) - 1e-4)


def test_decode_batch_returns_text_and_restores_train_mode():
    torch.manual_seed(1)
    model = build_model(SMALL, 28, V)
    model.train()
    batch = las_batch(1)
    for cfg in (DecodingConfig(method="greedy"), DecodingConfig(method="beam", beam_size=3),
                DecodingConfig(method="beam", beam_size=3, ctc_weight=0.3)):
        texts = decode_batch(model, batch, cfg)
        assert model.training
        assert len(texts) == 4
        assert all(set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ") for t in texts)
    model.eval()
    greedy = decode_batch(model, batch, DecodingConfig(method="greedy"))
    assert not model.training
    assert decode_batch(model, batch, DecodingConfig(method="beam", beam_size=1, ctc_weight=0.0)) == greedy


def test_joint_ctc_weight_without_a_ctc_head_warns_and_decodes_with_attention_alone():
    torch.manual_seed(2)
    no_ctc = ModelConfig(las=LASConfig(conv_channels=16, listener_hidden=16, listener_layers=2, attention_dim=8,
                                       embedding_dim=8, speller_hidden=16, ctc_head=False))
    model = build_model(no_ctc, 28, V).eval()
    batch = las_batch(2)
    with pytest.warns(RuntimeWarning, match="no CTC head"):
        joint = decode_batch(model, batch, DecodingConfig(method="beam", beam_size=3, ctc_weight=0.3))
    assert joint == decode_batch(model, batch, DecodingConfig(method="beam", beam_size=3, ctc_weight=0.0))
