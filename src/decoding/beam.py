"""Batched beam search: all B utterances x K beams in one tensor.

Each output step makes ONE ``model.step`` call for every live hypothesis of
every unfinished utterance (rows flattened to (B*K,)), then:

1. log-softmax (<pad>, <sos> at -inf), fused with the scorers when there are
   any: score = attention_weight * attention + sum of weight_i * scorer_i, each
   scorer giving a (rows, V) score of every next token (the CTC prefix scorer,
   a language model ...); adding a scorer never edits this loop;
2. candidate totals: (B*K, V) -> (B, K*V), top 2K per utterance;
3. walking down that ranked list as one tensor op: <eos> candidates ranked
   above the K-th non-<eos> one enter the utterance's pool of finished
   hypotheses, the first K non-<eos> candidates become the new beams
   (at most K of 2K candidates end in <eos>, one per beam, so K live ones
   always remain). A finished hypothesis is never extended: it leaves the beam
   the moment it is chosen;
4. ``model.reorder_state`` (and every scorer's ``select``) follow the chosen beams.

An utterance is done when its pool holds K hypotheses (fairseq's and
whisper's rule; with K = 1 this is exactly greedy decoding, whatever the
length penalty). Hypotheses that reach the utterance's length limit may only
take <eos> next, with its real probability, so every pooled hypothesis is
scored alike. Done utterances leave
the batch (``EncoderOutput.index_select``), and the search stops when all are done.
The answer is the pooled hypothesis the ranker likes best; the default
:func:`length_normalised` ranks by ``score / length ** length_penalty``
(length = characters + 1 for the <eos>); length_penalty 0 ranks by total
log-probability.

The per-step bookkeeping is a handful of tensor ops on (B, 2K) and stays on
the model's device; the only host transfer per step is the small (B, 2K)
mask of finished candidates. Numba would not help here: the work per step is
already a few microseconds next to the model's step (bench/bench_decode.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from src.decoding.greedy import next_token_log_probs
from src.vocab import EOS, PAD, SOS


@dataclass
class Hypothesis:
    tokens: list[int]  # characters, without <sos>/<eos>
    log_prob: float  # total score (attention, plus every weighted scorer)
    length: int  # characters + 1 (the <eos>)

    def rank(self, length_penalty: float) -> float:
        return self.log_prob / max(self.length, 1) ** length_penalty


class Scorer(Protocol):
    """Scores of the next token for N rows of equal-length prefixes (one beam-search step)."""

    def score(self, prefix_len: int) -> torch.Tensor:
        """(N, V) score of every token c after each row's prefix (added to the beam score)."""

    def select(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        """Continue from rows ``index`` (N',) extended by ``tokens`` (N',)."""


# A scorer factory is called once per search with the encoder output repeated K times
# per utterance (B*K rows) and returns that search's Scorer.
ScorerFactory = Callable[[object], Scorer]
Ranker = Callable[[Hypothesis], float]


def length_normalised(length_penalty: float) -> Ranker:
    """Rank finished hypotheses by total score / length ** length_penalty."""
    return lambda h: h.rank(length_penalty)


@torch.no_grad()
def beam_search(
    model,
    encoded,
    max_lens: torch.Tensor,
    beam_size: int = 10,
    length_penalty: float = 1.0,
    scorers: Sequence[tuple[float, ScorerFactory]] = (),
    attention_weight: float = 1.0,
    ranker: Ranker | None = None,
    return_hypotheses: bool = False,
):
    """Beam search over B utterances at once.

    encoded: the model's EncoderOutput for B utterances; max_lens (B,) long:
    most characters per utterance (``max_output_lengths``). ``scorers``:
    (weight, factory) pairs fused with the model's own log-probabilities,
    which get ``attention_weight``. ``ranker`` picks the answer among an
    utterance's finished hypotheses (default: length_normalised(length_penalty)).
    Returns B lists of token ids without <sos>/<eos>; with ``return_hypotheses``
    the B best :class:`Hypothesis` objects instead.
    """
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size must be at least 1, got {beam_size}")
    ranker = ranker or length_normalised(length_penalty)
    lens = encoded.lens
    n_utt, k = lens.shape[0], beam_size
    if n_utt == 0:
        return []
    device = lens.device
    limits = max_lens.cpu().long()  # (B_live,) on the host: step control needs no device sync
    steps = int(limits.max().item())

    utt = torch.arange(n_utt)  # (B_live,) original utterance of each live one, on the host
    rows = torch.arange(n_utt, device=device).repeat_interleave(k)  # (B,) -> (B*K,): K rows per utterance
    enc = encoded.index_select(rows)  # every tensor (B, ...) -> (B*K, ...)
    state = model.init_state(enc)
    scores = torch.full((n_utt, k), -math.inf, device=device)  # (B, K) total score per beam
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step has no duplicates
    tokens = torch.full((n_utt * k,), SOS, dtype=torch.long, device=device)  # (B*K,)
    seqs = torch.zeros((n_utt * k, steps + 1), dtype=torch.long, device=device)  # (B*K, U)
    n_finished = torch.zeros(n_utt, dtype=torch.long)  # (B_live,) on the host
    pools: list[list[Hypothesis]] = [[] for _ in range(n_utt)]

    fused = [(weight, make(enc)) for weight, make in scorers if weight != 0.0]

    for t in range(steps + 1):  # t: characters in every live hypothesis
        n_live = int(utt.shape[0])
        logits, state, _ = model.step(tokens, state, enc)
        logp = next_token_log_probs(logits)  # (B_live*K, V)
        if fused:
            logp = attention_weight * logp.masked_fill(torch.isinf(logp), 0.0)
            for weight, scorer in fused:
                logp = logp + weight * scorer.score(t).to(logp.device)
            logp[:, PAD] = -math.inf
            logp[:, SOS] = -math.inf
        vocab = logp.shape[1]
        at_limit = limits <= t  # (B_live,) no room for another character: <eos> only
        if bool(at_limit.any()):
            forced = at_limit.to(device).repeat_interleave(k)  # (B_live,) -> (B_live*K,)
            logp[forced] = torch.where(torch.arange(vocab, device=device) == EOS, logp[forced], -math.inf)
        cand = (scores.reshape(-1, 1) + logp).reshape(n_live, k * vocab)  # (B_live*K, V) -> (B_live, K*V)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B_live, 2K), best first
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        is_eos = top_tok == EOS
        not_eos = (~is_eos).long()
        live_above = torch.cumsum(not_eos, dim=1) - not_eos  # non-<eos> candidates ranked above
        takes_eos = is_eos & (live_above < k) & torch.isfinite(top_scores)  # (B_live, 2K)
        is_live = (~is_eos) & (live_above < k)  # the first K non-<eos> candidates
        order = (~is_live).long() * (2 * k) + torch.arange(top_idx.shape[1], device=device)
        chosen = order.argsort(dim=1)[:, :k]  # (B_live, K) positions of the live ones, best first
        new_scores = top_scores.gather(1, chosen)  # (B_live, K)
        new_beam = top_beam.gather(1, chosen)
        new_tok = top_tok.gather(1, chosen)
        takes_eos_cpu = takes_eos.cpu()  # the one host transfer per step
        n_finished = n_finished + takes_eos_cpu.sum(dim=1)
        done = (n_finished >= k) | at_limit  # (B_live,); at the limit every beam takes <eos>
        if bool(takes_eos_cpu.any()):  # pool the hypotheses that just ended with <eos>
            u_idx, pos = takes_eos_cpu.nonzero(as_tuple=True)
            src_rows = (u_idx.to(device) * k + top_beam[u_idx, pos]).long()
            prefixes = seqs[src_rows, :t].tolist()
            totals = top_scores[u_idx, pos].tolist()
            for u, prefix, total in zip(u_idx.tolist(), prefixes, totals):
                pools[int(utt[u])].append(Hypothesis(prefix, total, t + 1))

        # Follow the chosen beams: row (u, j) continues from row (u, new_beam[u, j]).
        src = (torch.arange(n_live, device=device)[:, None] * k + new_beam).reshape(-1)  # (B_live*K,)
        seqs = seqs[src]
        seqs[:, t] = new_tok.reshape(-1)
        if bool(done.all()):
            break
        if bool(done.any()):  # done utterances leave the batch
            keep_cpu = (~done).nonzero().squeeze(1)  # (B_live',)
            keep_utt = keep_cpu.to(device)
            keep_rows = (keep_utt[:, None] * k + torch.arange(k, device=device)).reshape(-1)  # (B_live'*K,)
            src = src.reshape(n_live, k)[keep_utt].reshape(-1)
            seqs = seqs[keep_rows]
            new_scores, new_tok = new_scores[keep_utt], new_tok[keep_utt]
            utt, limits, n_finished = utt[keep_cpu], limits[keep_cpu], n_finished[keep_cpu]
            enc = enc.index_select(keep_rows)
        state = model.reorder_state(state, src)
        for _, scorer in fused:
            scorer.select(src, new_tok.reshape(-1))
        scores = new_scores
        tokens = new_tok.reshape(-1)

    # A pool is only empty when every score was NaN (a broken model): answer nothing rather than crash.
    best = [max(pool, key=ranker) if pool else Hypothesis([], -math.inf, 1) for pool in pools]
    return best if return_hypotheses else [h.tokens for h in best]
