"""Batched beam search: all B utterances x K beams in one tensor, in small parts.

    ModelScorer         the model's own next-token log-probs (``init_state``/``step``/``reorder_state``)
                        as a scorer, beside the CTC prefix scorer, the LM, the length bonus ...
    fuse                the weighted scores of every scorer -> one (N, V) total
    prune               top 2K candidates per utterance -> K live beams, and the <eos> ones to pool
    Beams               the live beams (scores, last tokens, sequences, utterance of each row) and the
                        pools of finished hypotheses; ``pool``, ``select``, ``drop_done``
    finished            which utterances are done
    length_normalised   the ranker that picks each utterance's answer from its pool

The main loop of :func:`beam_search` reads: score, prune, finish, follow.

Score. Every scorer gives a (N, V) score of every next token for the N = B_live * K
live rows; ``fuse`` weighs and adds them. The first scorer is the model, with
``attention_weight``; alone, its log-probs are the total as they are. Fused, its
-inf entries count 0 (a zero weight gives no NaN) and <pad>, <sos> are barred
after the sum. Adding a scorer never edits the loop.

Prune. Candidate totals (B_live*K, V) -> (B_live, K*V), top 2K per utterance.
Walking down that ranked list as one tensor op: <eos> candidates ranked above
the K-th non-<eos> one enter the utterance's pool of finished hypotheses, the
first K non-<eos> candidates become the new beams (at most K of 2K candidates
end in <eos>, one per beam, so K live ones always remain). A finished
hypothesis is never extended. Hypotheses at the utterance's length limit may
only take <eos> next, with its real score, so every pooled hypothesis is scored
alike.

Finish. An utterance is done when its pool holds K hypotheses (fairseq's and
whisper's rule; with K = 1 this is exactly greedy decoding, whatever the length
penalty), or at its length limit. Done utterances leave the batch, and the
search stops when all are done.

Follow. The beams and every scorer continue from the chosen rows.

The answer is the pooled hypothesis the ranker likes best; the default
:func:`length_normalised` ranks by ``score / length ** length_penalty``
(length = characters + 1 for the <eos>); length_penalty 0 ranks by total score.

The per-step bookkeeping is a handful of tensor ops on (B, 2K) and stays on
the model's device; the only host transfer per step is the small (B, 2K)
mask of finished candidates.
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


class ModelScorer:
    """The model's own next-token log-probabilities (<pad>, <sos> at -inf) as a :class:`Scorer`.

    Holds the decoder state and last token of each of the N rows; one
    ``model.step`` per :meth:`score` for all rows.
    """

    def __init__(self, model, encoded):
        """``encoded``: the EncoderOutput with one row per hypothesis (N rows)."""
        self.model, self.encoded = model, encoded
        n = encoded.lens.shape[0]
        self.state = model.init_state(encoded)
        self.tokens = torch.full((n,), SOS, dtype=torch.long, device=encoded.lens.device)  # (N,)
        self._next_state = None

    def score(self, prefix_len: int) -> torch.Tensor:
        """(N, V) float32 log p(c | each row's prefix); keeps the stepped state for :meth:`select`."""
        logits, self._next_state, _ = self.model.step(self.tokens, self.state, self.encoded)
        return next_token_log_probs(logits)  # (N, V)

    def select(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        """Continue from rows ``index`` (N',) extended by ``tokens`` (N',).

        ``index`` only maps a row to one of the same utterance, whose encoder
        rows are equal, so ``encoded`` is re-indexed only when utterances leave.
        """
        if index.numel() != self.tokens.numel():
            self.encoded = self.encoded.index_select(index)  # every tensor (N, ...) -> (N', ...)
        self.state = self.model.reorder_state(self._next_state, index)
        self.tokens = tokens
        self._next_state = None


def fuse(weighted: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """(N, V) total score of every next token from [(weight, (N, V) score), ...], the model's first.

    A lone score is the total as it is. Otherwise: weight_0 * score_0 (its -inf
    counted as 0) + the sum of weight_i * score_i, with <pad> and <sos> at -inf.
    """
    (w0, first), rest = weighted[0], weighted[1:]
    if not rest:
        return first
    total = w0 * first.masked_fill(torch.isinf(first), 0.0)
    for weight, score in rest:
        total = total + weight * score.to(total.device)
    total[:, PAD] = -math.inf
    total[:, SOS] = -math.inf
    return total


@dataclass
class Pruned:
    """One step's choice for B_live utterances: K live beams each, and the <eos> candidates to pool."""

    scores: torch.Tensor  # (B_live, K) totals of the new live beams, best first
    beam: torch.Tensor  # (B_live, K) the beam each one extends
    token: torch.Tensor  # (B_live, K) the token it adds
    ended: torch.Tensor  # (B_live, 2K) bool, on the host: candidates that end with <eos> and enter the pool
    top_scores: torch.Tensor  # (B_live, 2K) the candidates' totals, best first
    top_beam: torch.Tensor  # (B_live, 2K) the beam each candidate extends


def prune(scores: torch.Tensor, logp: torch.Tensor, at_limit: torch.Tensor) -> Pruned:
    """The K live beams and the <eos> candidates of each utterance, from the top 2K candidates.

    scores (B_live, K): total per beam; logp (B_live*K, V): fused score of every
    next token (overwritten where <eos> is forced); at_limit (B_live,) bool on the
    host: utterances whose beams may only take <eos>.
    """
    n_live, k = scores.shape
    vocab = logp.shape[1]
    device = logp.device
    if bool(at_limit.any()):
        forced = at_limit.to(device).repeat_interleave(k)  # (B_live,) -> (B_live*K,)
        logp[forced] = torch.where(torch.arange(vocab, device=device) == EOS, logp[forced], -math.inf)
    cand = (scores.reshape(-1, 1) + logp).reshape(n_live, k * vocab)  # (B_live*K, V) -> (B_live, K*V)
    top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B_live, 2K), best first
    top_beam, top_tok = top_idx // vocab, top_idx % vocab
    is_eos = top_tok == EOS
    not_eos = (~is_eos).long()
    live_above = torch.cumsum(not_eos, dim=1) - not_eos  # non-<eos> candidates ranked above
    ended = is_eos & (live_above < k) & torch.isfinite(top_scores)  # (B_live, 2K)
    is_live = (~is_eos) & (live_above < k)  # the first K non-<eos> candidates
    order = (~is_live).long() * (2 * k) + torch.arange(top_idx.shape[1], device=device)
    chosen = order.argsort(dim=1)[:, :k]  # (B_live, K) positions of the live ones, best first
    return Pruned(scores=top_scores.gather(1, chosen), beam=top_beam.gather(1, chosen),
                  token=top_tok.gather(1, chosen), ended=ended.cpu(), top_scores=top_scores, top_beam=top_beam)


def finished(n_finished: torch.Tensor, at_limit: torch.Tensor, beam_size: int) -> torch.Tensor:
    """(B_live,) bool: utterances whose pool holds ``beam_size`` hypotheses, or at their length limit
    (where every beam took <eos>)."""
    return (n_finished >= beam_size) | at_limit


@dataclass
class Beams:
    """The live beams of the B_live unfinished utterances (K per utterance, rows N = B_live * K,
    utterance-major), and the finished hypotheses of all B utterances."""

    scores: torch.Tensor  # (B_live, K) total score per beam
    tokens: torch.Tensor  # (B_live*K,) last token per row
    seqs: torch.Tensor  # (B_live*K, U) characters so far per row
    utt: torch.Tensor  # (B_live,) on the host: original utterance of each live one
    limits: torch.Tensor  # (B_live,) on the host: most characters per utterance
    n_finished: torch.Tensor  # (B_live,) on the host: hypotheses in each one's pool
    pools: list[list[Hypothesis]]  # B pools, by original utterance

    @classmethod
    def start(cls, limits: torch.Tensor, beam_size: int, device) -> "Beams":
        """K beams per utterance, one of them live (score 0), the others -inf so the first step has
        no duplicates; limits (B,): most characters per utterance."""
        n_utt, k = limits.shape[0], beam_size
        limits = limits.cpu().long()  # on the host: step control needs no device sync
        scores = torch.full((n_utt, k), -math.inf, device=device)  # (B, K)
        scores[:, 0] = 0.0
        return cls(scores=scores,
                   tokens=torch.full((n_utt * k,), SOS, dtype=torch.long, device=device),  # (B*K,)
                   seqs=torch.zeros((n_utt * k, int(limits.max().item()) + 1), dtype=torch.long,
                                    device=device),  # (B*K, U)
                   utt=torch.arange(n_utt), limits=limits, n_finished=torch.zeros(n_utt, dtype=torch.long),
                   pools=[[] for _ in range(n_utt)])

    @property
    def beam_size(self) -> int:
        return self.scores.shape[1]

    def pool(self, pruned: Pruned, t: int) -> None:
        """Add the hypotheses ``pruned`` ends with <eos> after ``t`` characters to their utterance's pool."""
        k = self.beam_size
        self.n_finished = self.n_finished + pruned.ended.sum(dim=1)
        if not bool(pruned.ended.any()):
            return
        u_idx, pos = pruned.ended.nonzero(as_tuple=True)
        rows = (u_idx.to(self.seqs.device) * k + pruned.top_beam[u_idx, pos]).long()  # rows of (B_live*K,)
        prefixes = self.seqs[rows, :t].tolist()
        totals = pruned.top_scores[u_idx, pos].tolist()
        for u, prefix, total in zip(u_idx.tolist(), prefixes, totals):
            self.pools[int(self.utt[u])].append(Hypothesis(prefix, total, t + 1))

    def select(self, pruned: Pruned, t: int) -> torch.Tensor:
        """Follow the chosen beams: row (u, j) continues from row (u, pruned.beam[u, j]) with
        pruned.token[u, j] as character ``t``. Returns those source rows (B_live*K,)."""
        n_live, k = self.scores.shape
        src = (torch.arange(n_live, device=self.seqs.device)[:, None] * k + pruned.beam).reshape(-1)  # (B_live*K,)
        self.seqs = self.seqs[src]
        self.tokens = pruned.token.reshape(-1)  # (B_live, K) -> (B_live*K,)
        self.seqs[:, t] = self.tokens
        self.scores = pruned.scores
        return src

    def drop_done(self, done: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Remove the utterances ``done`` (B_live,) bool on the host; returns ``src`` (B_live*K,)
        without their rows (B_live'*K,)."""
        n_live, k = self.scores.shape
        keep_cpu = (~done).nonzero().squeeze(1)  # (B_live',)
        keep = keep_cpu.to(self.seqs.device)
        keep_rows = (keep[:, None] * k + torch.arange(k, device=keep.device)).reshape(-1)  # (B_live'*K,)
        self.seqs = self.seqs[keep_rows]
        self.tokens = self.tokens.reshape(n_live, k)[keep].reshape(-1)  # (B_live*K,) -> (B_live'*K,)
        self.scores = self.scores[keep]
        self.utt, self.limits, self.n_finished = self.utt[keep_cpu], self.limits[keep_cpu], self.n_finished[keep_cpu]
        return src.reshape(n_live, k)[keep].reshape(-1)  # (B_live*K,) -> (B_live'*K,)

    def best(self, ranker: Ranker) -> list[Hypothesis]:
        """The ranker's favourite of each pool, by original utterance. A pool is only empty when every
        score was NaN (a broken model): its answer is empty rather than a crash."""
        return [max(pool, key=ranker) if pool else Hypothesis([], -math.inf, 1) for pool in self.pools]


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
    most characters per utterance (``max_output_lengths``). The model is the
    first scorer, weighted ``attention_weight``; ``scorers``: further (weight,
    factory) pairs (zero weights are left out). ``ranker`` picks the answer among
    an utterance's finished hypotheses (default: length_normalised(length_penalty)).
    Returns B lists of token ids without <sos>/<eos>; with ``return_hypotheses``
    the B best :class:`Hypothesis` objects instead.
    """
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size must be at least 1, got {beam_size}")
    ranker = ranker or length_normalised(length_penalty)
    n_utt, k = encoded.lens.shape[0], beam_size
    if n_utt == 0:
        return []
    device = encoded.lens.device
    beams = Beams.start(max_lens, k, device)
    rows = torch.arange(n_utt, device=device).repeat_interleave(k)  # (B,) -> (B*K,): K rows per utterance
    enc = encoded.index_select(rows)  # every tensor (B, ...) -> (B*K, ...)
    weighted = [(attention_weight, ModelScorer(model, enc))]
    weighted += [(weight, make(enc)) for weight, make in scorers if weight != 0.0]

    for t in range(int(beams.limits.max().item()) + 1):  # t: characters in every live hypothesis
        logp = fuse([(weight, scorer.score(t)) for weight, scorer in weighted])  # (B_live*K, V)
        at_limit = beams.limits <= t  # (B_live,) no room for another character: <eos> only
        pruned = prune(beams.scores, logp, at_limit)
        beams.pool(pruned, t)
        done = finished(beams.n_finished, at_limit, k)
        src = beams.select(pruned, t)
        if bool(done.all()):
            break
        if bool(done.any()):
            src = beams.drop_done(done, src)
        for _, scorer in weighted:
            scorer.select(src, beams.tokens)

    best = beams.best(ranker)
    return best if return_hypotheses else [h.tokens for h in best]
