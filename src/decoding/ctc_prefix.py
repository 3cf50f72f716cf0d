"""CTC prefix scores for the hypotheses of a beam search (Watanabe et al., 2017).

For a prefix g the CTC head gives, at every frame t, the probability of all
alignments of frames 0..t that emit exactly g, split by whether frame t is
blank (r_b) or a label (r_n). The prefix score psi(g + c) is the probability of
every alignment whose first |g| + 1 labels are g + c; psi(g + <eos>) is the
probability of exactly g. Beam search adds ``ctc_weight * (psi(g + c) - psi(g))``
to each candidate's score, so a finished hypothesis collects
``ctc_weight * log p_ctc(hypothesis)`` in total.

Everything is vectorised over the N = B * K hypotheses and the V candidate
tokens; only the recursion over frames is a Python loop, and it starts at the
first frame that can hold |g| + 1 labels. Frames beyond an utterance's length
are padded as certain blanks (log p = 0 for blank, -inf for the rest): that
leaves every score of the unpadded utterance unchanged, so utterances of
different lengths share one tensor. Blank is <pad> (id 0).

The same recursion written in numba (one row and token per inner loop, rows
in parallel) was measured against this one and lost: 8.9 s against 5.2 s on
one thread, 5.1 s against 5.0 s on two, for a 110-step search over 320 rows
(bench/bench_ctc_prefix.py, which keeps that version), so this one stays.
"""
from __future__ import annotations

import math

import torch

from src.vocab import EOS, PAD

BLANK = PAD


class CTCPrefixScorer:
    """Prefix scores for N live hypotheses, all of the same length (one beam-search step)."""

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor):
        """log_probs (N, T'', V) log-softmax of the CTC head; lens (N,) valid frames per row."""
        n, frames, vocab = log_probs.shape
        valid = torch.arange(frames, device=log_probs.device)[None, :] < lens[:, None]  # (N, T'')
        x = log_probs.float().masked_fill(~valid[:, :, None], -math.inf)
        x[:, :, BLANK] = torch.where(valid, x[:, :, BLANK], torch.zeros_like(x[:, :, BLANK]))
        self.x = x.transpose(0, 1).contiguous()  # (N, T'', V) -> (T'', N, V)
        self.frames, self.vocab = frames, vocab
        # The empty prefix: no label yet, blanks only.
        self.r_n = torch.full((frames, n), -math.inf, device=x.device)  # (T'', N)
        self.r_b = torch.cumsum(self.x[:, :, BLANK], dim=0)  # (T'', N)
        self.psi = torch.zeros(n, device=x.device)  # (N,) psi of each current prefix
        self.last = torch.full((n,), -1, dtype=torch.long, device=x.device)  # last label or -1
        self._new = None

    def score(self, prefix_len: int) -> torch.Tensor:
        """Delta psi(g + c) - psi(g) for every current prefix g and token c: (N, V).

        ``prefix_len``: |g|, the number of labels every current prefix holds.
        Keeps the extended states for :meth:`select`.
        """
        x, frames = self.x, self.frames
        n = x.shape[1]
        prev = torch.logaddexp(self.r_n, self.r_b)  # (T'', N) all alignments of g up to t
        phi = prev[:, :, None].expand(frames, n, self.vocab).clone()  # (T'', N, V)
        rows = torch.arange(n, device=x.device)
        has_last = self.last >= 0
        if bool(has_last.any()):  # repeating g's last label needs a blank in between
            r_idx, l_idx = rows[has_last], self.last[has_last]
            phi[:, r_idx, l_idx] = self.r_b[:, r_idx]
        r_n = torch.full((frames, n, self.vocab), -math.inf, device=x.device)  # (T'', N, V)
        r_b = torch.full((frames, n, self.vocab), -math.inf, device=x.device)
        start = max(1, prefix_len)  # g + c needs at least |g| + 1 frames
        if prefix_len == 0:
            r_n[0] = x[0]
        blank = x[:, :, BLANK, None]  # (T'', N, 1)
        for t in range(start, frames):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + x[t]
            r_b[t] = torch.logaddexp(r_n[t - 1], r_b[t - 1]) + blank[t]
        if start < frames:
            terms = phi[start - 1 : frames - 1] + x[start:frames]  # (T''-start, N, V)
            psi = torch.logsumexp(terms, dim=0)  # (N, V)
            if prefix_len == 0:
                psi = torch.logaddexp(psi, r_n[0])
        else:
            psi = r_n[0] if prefix_len == 0 else torch.full((n, self.vocab), -math.inf, device=x.device)
        psi = psi.clone()
        psi[:, EOS] = prev[-1]  # g itself, complete
        self._new = (r_n, r_b, psi)
        return psi - self.psi[:, None]

    def select(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        """Continue from prefixes ``index`` (N',) extended by ``tokens`` (N',).

        ``index`` only ever maps a hypothesis to one of the same utterance, so
        the frames ``x`` need re-indexing only when utterances leave (N' < N).
        """
        r_n, r_b, psi = self._new
        self.r_n = r_n[:, index, tokens]  # (T'', N, V) -> (T'', N')
        self.r_b = r_b[:, index, tokens]
        self.psi = psi[index, tokens]
        self.last = tokens.clone()
        if index.numel() != self.x.shape[1]:
            self.x = self.x[:, index]  # (T'', N, V) -> (T'', N', V)
        self._new = None

