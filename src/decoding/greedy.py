"""Greedy decoding, the output-length limit, and sequence scoring.

Every decoder here talks to the model only through the step-decoder
capability (src/models/interface.py):

    encoded = model.encode(features (B, T, D), feature_lens (B,))
    state = model.init_state(encoded)
    logits (B, V), state, attn (B, T') = model.step(tokens (B,), state, encoded)
    state = model.reorder_state(state, index (B',))

The first token fed to ``step`` is <sos>; a hypothesis ends at <eos>. <pad>
and <sos> are never emitted: their log-probabilities are set to -inf before
any choice (:func:`next_token_log_probs`), in greedy and beam search alike,
so beam search with K = 1 and greedy agree token for token.
"""
from __future__ import annotations

import math

import torch

from src.vocab import EOS, PAD, SOS


def max_output_lengths(feature_lens: torch.Tensor, chars_per_frame: float = 0.25, minimum: int = 16) -> torch.Tensor:
    """THE output-length policy of every decoder: the most characters (without <eos>) per utterance, (B,) long.

        max_len = max(minimum, ceil(chars_per_frame * T))      T = input frames (10 ms each)

    It is written per input frame, so it means the same for every model
    whatever its time reduction: 0.25 is 25 characters per second of audio.
    LibriSpeech runs at about 15 (dev-clean: 109 characters for 713 frames on
    average, 518 for 3,260 at most), fast speech at about 20; the limit only
    costs time for hypotheses that never emit <eos>. Dev scoring during
    training, test.py and transcribe.py all use it (decoding.max_chars_per_frame).
    """
    limit = torch.ceil(feature_lens.to(torch.float64) * chars_per_frame).long()
    return limit.clamp(min=int(minimum))


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits (N, V) -> log-probabilities (N, V) float32 with <pad> and <sos> at -inf."""
    mask = torch.zeros(logits.shape[-1], device=logits.device)
    mask[PAD] = mask[SOS] = -math.inf
    return torch.log_softmax(logits.float() + mask, dim=-1)


def _strip(row: list[int]) -> list[int]:
    """Ids up to (not including) the first <eos>."""
    return row[: row.index(EOS)] if EOS in row else row


@torch.no_grad()
def greedy_decode(model, encoded, max_lens: torch.Tensor) -> list[list[int]]:
    """Most likely token at every step, for the whole batch at once.

    encoded: the model's EncoderOutput for B utterances; max_lens (B,) long: the
    most characters per utterance (see :func:`max_output_lengths`). One
    ``model.step`` call per output step for all unfinished rows; rows that
    have finished are dropped from the batch (``reorder_state`` +
    ``EncoderOutput.index_select``), and decoding stops once every row has emitted
    <eos> or reached its limit. Returns B lists of token ids without
    <sos>/<eos>.
    """
    lens = encoded.lens
    batch = lens.shape[0]
    device = lens.device
    max_lens = max_lens.to(device)
    steps = int(max_lens.max().item()) if batch else 0
    out = torch.full((batch, max(steps, 1)), EOS, dtype=torch.long, device=device)  # (B, U)
    rows = torch.arange(batch, device=device)  # original row of each live row
    row_limit = max_lens.clone()
    tokens = torch.full((batch,), SOS, dtype=torch.long, device=device)
    state = model.init_state(encoded)
    for t in range(steps):
        logits, state, _ = model.step(tokens, state, encoded)
        tokens = next_token_log_probs(logits).argmax(dim=-1)  # (B_live,)
        out[rows, t] = tokens
        done = (tokens == EOS) | (row_limit <= t + 1)
        if bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows from the batch
            keep = (~done).nonzero().squeeze(1)  # (B_live',)
            rows, row_limit, tokens = rows[keep], row_limit[keep], tokens[keep]
            state = model.reorder_state(state, keep)
            encoded = encoded.index_select(keep)
    result = []
    for b, row in enumerate(out.tolist()):
        result.append(_strip(row)[: int(max_lens[b])])
    return result


@torch.no_grad()
def score_sequences(model, encoded, sequences: list[list[int]]) -> torch.Tensor:
    """Total log-probability (B,) of each sequence followed by <eos> under the model.

    The same masked log-softmax as the decoders use (<pad>, <sos> at -inf).
    A reference for tests and for comparing decoders; not used while decoding.
    """
    batch = len(sequences)
    device = encoded.lens.device
    longest = max((len(s) for s in sequences), default=0) + 1
    targets = torch.full((batch, longest), PAD, dtype=torch.long, device=device)  # (B, U) incl. <eos>
    for b, seq in enumerate(sequences):
        targets[b, : len(seq) + 1] = torch.tensor(list(seq) + [EOS], dtype=torch.long)
    lengths = torch.tensor([len(s) + 1 for s in sequences], device=device)
    total = torch.zeros(batch, dtype=torch.float64, device=device)
    tokens = torch.full((batch,), SOS, dtype=torch.long, device=device)
    state = model.init_state(encoded)
    for t in range(longest):
        logits, state, _ = model.step(tokens, state, encoded)
        logp = next_token_log_probs(logits)  # (B, V)
        step_lp = logp.gather(1, targets[:, t : t + 1]).squeeze(1).double()
        total += torch.where(t < lengths, step_lp, torch.zeros_like(step_lp))
        tokens = targets[:, t]
    return total
