"""Where the CTC head puts each character: the attention targets of guided attention.

A CTC head learns to align long before an attention speller does: its loss sums over
every monotonic alignment of the characters to the frames, so no alignment has to be
discovered. The posterior of those alignments says, for character u of the transcript,
how likely each frame t is to emit it:

    occupancy[u, t] = P(frame t emits character u | features, transcript)

computed by the forward-backward recursion over CTC's extended label sequence
(blank, c1, blank, c2, ..., cn, blank; Graves et al., 2006). Normalised over t it is a
distribution over frames, the target that ``training.guided_attention_target=ctc``
asks the attention of output step u to match (src/models/losses.py:
attention_target_loss). While the head is untrained (every frame about equally
likely to emit anything) the posterior is a band around the diagonal a few
frames wide, since every character has to fall between its neighbours; as the head
learns, the band bends to where the speech really is: pauses, fast and slow passages.

The recursion runs in probability space with one scale factor per frame (Rabiner's
scaling), in float64, one utterance per numba thread. An utterance with fewer frames
than its transcript needs has no alignment: its rows are all zero.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from src.threads import keep_torch_threads
from src.vocab import PAD

BLANK = PAD


@njit(cache=True, nogil=True)
def _occupancy_one(lp, labels, out):
    """lp (T, V) log-probs of one utterance's valid frames, labels (L,) -> out (L, T) filled with
    P(frame t emits label l); all zeros when no alignment exists. Returns whether one exists."""
    frames, n_labels = lp.shape[0], labels.shape[0]
    states = 2 * n_labels + 1
    ext = np.full(states, BLANK, dtype=np.int64)  # blank, c1, blank, c2, ..., cn, blank
    for i in range(n_labels):
        ext[2 * i + 1] = labels[i]
    emit = np.exp(lp.astype(np.float64))  # (T, V): the probability of each symbol at each frame
    alpha = np.zeros((frames, states))
    scale = np.zeros(frames)
    alpha[0, 0] = emit[0, ext[0]]
    if states > 1:
        alpha[0, 1] = emit[0, ext[1]]
    for t in range(frames):
        if t > 0:
            for s in range(states):
                a = alpha[t - 1, s]
                if s >= 1:
                    a += alpha[t - 1, s - 1]
                if s >= 2 and ext[s] != BLANK and ext[s] != ext[s - 2]:  # skip the blank between different labels
                    a += alpha[t - 1, s - 2]
                alpha[t, s] = a * emit[t, ext[s]]
        total = 0.0
        for s in range(states):
            total += alpha[t, s]
        if total <= 0.0:
            return False
        scale[t] = total
        for s in range(states):
            alpha[t, s] /= total
    beta = np.zeros((frames, states))
    beta[frames - 1, states - 1] = 1.0
    if states > 1:
        beta[frames - 1, states - 2] = 1.0
    for t in range(frames - 2, -1, -1):
        for s in range(states):
            b = beta[t + 1, s] * emit[t + 1, ext[s]]
            if s + 1 < states:
                b += beta[t + 1, s + 1] * emit[t + 1, ext[s + 1]]
            if s + 2 < states and ext[s + 2] != BLANK and ext[s + 2] != ext[s]:
                b += beta[t + 1, s + 2] * emit[t + 1, ext[s + 2]]
            beta[t, s] = b / scale[t + 1]
    # the end states must be reachable: otherwise the last frame's mass sits on other states
    if alpha[frames - 1, states - 1] + (alpha[frames - 1, states - 2] if states > 1 else 0.0) <= 0.0:
        return False
    for t in range(frames):  # alpha_hat * beta_hat = P(state s at frame t | x, y) up to one constant per utterance
        for i in range(n_labels):
            out[i, t] = alpha[t, 2 * i + 1] * beta[t, 2 * i + 1]
    return True


@njit(cache=True, parallel=True)
def _occupancy_batch(lp, lens, labels, label_lens, out):
    """Every utterance of a batch, one per thread: out (B, L, T) rows normalised over t."""
    for b in prange(lp.shape[0]):
        n, frames = label_lens[b], lens[b]
        if n < 1 or frames < 1:
            continue
        if _occupancy_one(lp[b, :frames], labels[b, :n], out[b, :n, :frames]):
            for i in range(n):
                total = out[b, i, :frames].sum()
                if total > 0.0:
                    out[b, i, :frames] /= total


def ctc_occupancy(log_probs: torch.Tensor, lens: torch.Tensor, labels: torch.Tensor, label_lens: torch.Tensor
                  ) -> torch.Tensor:
    """Each label's frame distribution under the CTC posterior (no gradient).

    log_probs (B, T'', V) log-softmax of a CTC head (blank = <pad>), lens (B,) its valid frames,
    labels (B, L) the transcripts' characters, label_lens (B,) -> (B, L, T'') float32 on
    log_probs' device: row (b, l) sums to 1 over t < lens[b] for l < label_lens[b] when an alignment
    exists, and is all zero otherwise (an infeasible utterance, or padding).
    """
    lp = log_probs.detach().float().cpu().numpy()
    out = np.zeros((lp.shape[0], labels.size(1), lp.shape[1]), dtype=np.float32)  # (B, L, T'')
    with keep_torch_threads():  # numba's parallel layer resets torch's thread count
        _occupancy_batch(lp, lens.cpu().numpy().astype(np.int64), labels.cpu().numpy().astype(np.int64),
                         label_lens.cpu().numpy().astype(np.int64), out)
    return torch.from_numpy(out).to(log_probs.device)


def pool_frames(occupancy: torch.Tensor, factor: int, frames: int) -> torch.Tensor:
    """Sum each run of ``factor`` frames: (B, L, T'') -> (B, L, frames) with frames = ceil(T'' / factor)
    (or more: zero frames are added). The CTC head of LAS reads a lower pBLSTM layer than the
    attention; each pBLSTM layer above it joins two frames into one, so ``factor`` = 2 ** layers above."""
    batch, steps, ctc_frames = occupancy.shape
    pad = frames * factor - ctc_frames
    if pad < 0:
        raise ValueError(f"pool_frames: {ctc_frames} frames do not fit in {frames} x {factor}")
    occupancy = torch.nn.functional.pad(occupancy, (0, pad))  # (B, L, T'') -> (B, L, frames * factor)
    return occupancy.reshape(batch, steps, frames, factor).sum(dim=3)  # (B, L, frames, factor) -> (B, L, frames)
