"""CTC prefix scoring for joint CTC/attention beam search: the torch scorer against a numba one.

    python bench/bench_ctc_prefix.py               # 32 utterances x beam 10, 180 CTC frames, 110 steps
    python bench/bench_ctc_prefix.py --frames 90 --steps 60

One "search" here is what a beam search asks of its CTC scorer: ``score`` for
every row and token, then ``select`` of one token per row, ``steps`` times
(rows stay in their utterance, as in the real search). The log-probs are
random but peaked like a trained head's. Both scorers must give the same
scores (checked on the first steps); the table gives seconds per search on
1 and 2 threads (torch threads for torch, numba threads for numba). The numba
scorer lives here, not in src/: it lost (README, "Decoding speed").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import njit, prange  # noqa: E402

from src.decoding.ctc_prefix import BLANK, CTCPrefixScorer  # noqa: E402
from src.vocab import EOS  # noqa: E402

from cli_args import count  # noqa: E402  (bench/, this script's folder, is on sys.path)


# --------------------------------------------------------------------------
# The candidate: the same recursion in numba, one (row, token) pair per inner loop, rows in parallel.


@njit(cache=True)
def _lae(a: float, b: float) -> float:
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))


@njit(cache=True, parallel=True)
def _extend_kernel(x, lens, r_n, r_b, last, prefix_len, out_n, out_b, out_psi):
    """x (N, T, V) log-probs; r_n, r_b (N, T) of the current prefixes; last (N,) -> for every
    token c: out_n, out_b (N, V, T) of g + c and out_psi (N, V)."""
    n_rows, _, vocab = x.shape
    start = max(1, prefix_len)
    for n in prange(n_rows):
        frames = lens[n]
        for c in range(vocab):
            rn, rb = out_n[n, c], out_b[n, c]
            rn[:] = -np.inf
            rb[:] = -np.inf
            if c == EOS:  # g itself, complete: no new label
                out_psi[n, c] = _lae(r_n[n, frames - 1], r_b[n, frames - 1])
                continue
            psi = -np.inf
            if prefix_len == 0:
                rn[0] = x[n, 0, c]
                psi = rn[0]
            for t in range(start, frames):
                # phi: alignments of g up to t - 1 after which c may start (after a blank if c repeats g's last)
                phi = r_b[n, t - 1] if c == last[n] else _lae(r_n[n, t - 1], r_b[n, t - 1])
                rn[t] = _lae(rn[t - 1], phi) + x[n, t, c]
                rb[t] = _lae(rn[t - 1], rb[t - 1]) + x[n, t, BLANK]
                psi = _lae(psi, phi + x[n, t, c])
            out_psi[n, c] = psi


class NumbaCTCPrefixScorer:
    """CTCPrefixScorer's interface and results, computed in numba (checked against it in main())."""

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor):
        """log_probs (N, T'', V) log-softmax of the CTC head; lens (N,) valid frames per row."""
        self.device = log_probs.device
        self.x = np.ascontiguousarray(log_probs.detach().float().cpu().numpy())  # (N, T'', V)
        self.lens = np.ascontiguousarray(lens.detach().cpu().numpy().astype(np.int64).clip(1, self.x.shape[1]))
        n, frames, _ = self.x.shape
        self.r_n = np.full((n, frames), -np.inf)  # (N, T''): the empty prefix, blanks only
        self.r_b = np.cumsum(self.x[:, :, BLANK].astype(np.float64), axis=1)
        self.psi = np.zeros(n)
        self.last = np.full(n, -1, dtype=np.int64)
        self._new = None

    def score(self, prefix_len: int) -> torch.Tensor:
        """Delta psi(g + c) - psi(g) for every current prefix g and token c: (N, V)."""
        n, frames, vocab = self.x.shape
        out_n = np.empty((n, vocab, frames))  # (N, V, T'')
        out_b = np.empty((n, vocab, frames))
        out_psi = np.empty((n, vocab))
        threads = torch.get_num_threads()  # numba's OpenMP layer may reset torch's
        _extend_kernel(self.x, self.lens, self.r_n, self.r_b, self.last, int(prefix_len), out_n, out_b, out_psi)
        torch.set_num_threads(threads)
        self._new = (out_n, out_b, out_psi)
        with np.errstate(invalid="ignore"):  # -inf - -inf, as the torch scorer gives
            return torch.from_numpy((out_psi - self.psi[:, None]).astype(np.float32)).to(self.device)

    def select(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        """Continue from prefixes ``index`` (N',) extended by ``tokens`` (N',)."""
        out_n, out_b, out_psi = self._new
        index, tokens = index.cpu().numpy(), tokens.cpu().numpy()
        self.r_n = out_n[index, tokens]  # (N, V, T'') -> (N', T'')
        self.r_b = out_b[index, tokens]
        self.psi = out_psi[index, tokens]
        self.last = tokens.astype(np.int64)
        if len(index) != self.x.shape[0]:  # rows stay in their utterance: re-index only when some leave
            self.x, self.lens = self.x[index], self.lens[index]
        self._new = None


def search(cls, log_probs, lens, steps, tokens):
    scorer = cls(log_probs, lens)
    index = torch.arange(log_probs.shape[0])
    first = None
    start = time.perf_counter()
    for step in range(steps):
        delta = scorer.score(step)
        if first is None:
            first = delta.clone()
        scorer.select(index, tokens[step])
    return time.perf_counter() - start, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=count, default=32)
    parser.add_argument("--beam", type=count, default=10)
    parser.add_argument("--frames", type=count, default=180, help="CTC frames per utterance")
    parser.add_argument("--steps", type=count, default=110, help="output characters")
    parser.add_argument("--repeats", type=count, default=2)
    args = parser.parse_args()
    from host import describe, host_load

    print(describe(host_load()), flush=True)
    g = torch.Generator().manual_seed(0)
    rows = args.utterances * args.beam
    logits = torch.randn(args.utterances, args.frames, 31, generator=g) * 4
    log_probs = torch.log_softmax(logits, dim=-1).repeat_interleave(args.beam, dim=0)  # (N, T'', V)
    lens = torch.randint(args.frames // 2, args.frames + 1, (args.utterances,), generator=g).repeat_interleave(args.beam)
    tokens = torch.randint(3, 31, (args.steps, rows), generator=g)
    _, a = search(CTCPrefixScorer, log_probs, lens, 2, tokens)
    _, b = search(NumbaCTCPrefixScorer, log_probs, lens, 2, tokens)  # compiles (cached on disk)
    finite = torch.isfinite(a)
    assert torch.equal(finite, torch.isfinite(b)) and torch.allclose(a[finite], b[finite], atol=1e-3)
    print(f"{rows} rows ({args.utterances} utterances x beam {args.beam}), {args.frames} CTC frames at most, "
          f"{args.steps} steps; scores agree")
    print(f"{'threads':<9}{'torch s':>9}{'numba s':>9}{'torch / numba':>15}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        best = {}
        for _ in range(args.repeats):
            for cls in (CTCPrefixScorer, NumbaCTCPrefixScorer):
                seconds, _ = search(cls, log_probs, lens, args.steps, tokens)
                best[cls] = min(best.get(cls, seconds), seconds)
        print(f"{threads:<9}{best[CTCPrefixScorer]:>9.2f}{best[NumbaCTCPrefixScorer]:>9.2f}"
              f"{best[CTCPrefixScorer] / best[NumbaCTCPrefixScorer]:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
