"""Bidirectional recurrent layers that never see padding, shared by the families (LAS, DS2).

    out = bidirectional_within_lengths(rnn, x (B, T, F), lens (B,))   # (B, T, 2H), zero beyond lens

``rnn`` is a one-layer bidirectional ``nn.GRU`` or ``nn.LSTM`` (batch first).
Padding follows the real frames, so the forward direction may run over the
padded batch; the backward direction must start at each utterance's own last
frame. On CPU the backward direction runs over every utterance reversed within
its length (``reverse_within_lengths``) instead of over a packed sequence,
which costs a gather per time step on CPU; on CUDA packed sequences run in
cuDNN, so the packed path is kept there. Both give the same result (tests).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from src.models.interface import lengths_to_mask


def reverse_within_lengths(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x (B, T, F) -> (B, T, F) with each utterance's first lens[b] frames reversed; padding stays.

    Its own inverse: reverse_within_lengths(reverse_within_lengths(x, lens), lens) == x.
    """
    steps = torch.arange(x.size(1), device=x.device)[None, :]  # (1, T)
    index = torch.where(steps < lens[:, None], lens[:, None] - 1 - steps, steps)  # (B, T): t -> len-1-t
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


def _one_direction(rnn: nn.Module, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """One direction (``suffix`` "" or "_reverse") of a one-layer bidirectional rnn, run
    forward in time over x (B, T, F) -> (B, T, H)."""
    weights = [getattr(rnn, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)  # (1 layer, B, H)
    if isinstance(rnn, nn.LSTM):
        out, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, rnn.training, False, True)
    else:
        out, _ = torch.gru(x, h0, weights, True, 1, 0.0, rnn.training, False, True)
    return out


def bidirectional_within_lengths(rnn: nn.Module, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """A one-layer bidirectional GRU/LSTM over x (B, T, F) whose real frames never see padding.

    Returns (B, T, 2H) = [forward; backward] per frame, zero beyond ``lens`` (B,).
    Equal to the packed-sequence result (tests/test_ds2.py).
    """
    if not (rnn.bidirectional and rnn.num_layers == 1 and rnn.batch_first and rnn.bias):
        raise ValueError("bidirectional_within_lengths: expects a one-layer bidirectional batch-first rnn with biases")
    if x.is_cuda:  # cuDNN runs packed sequences fast
        packed = pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, 2H), zero padded
        return out
    fwd = _one_direction(rnn, x, "")  # (B, T, H): padding comes after the real frames
    bwd = _one_direction(rnn, reverse_within_lengths(x, lens), "_reverse")  # (B, T, H) in reversed time
    out = torch.cat([fwd, reverse_within_lengths(bwd, lens)], dim=2)  # (B, T, H) + (B, T, H) -> (B, T, 2H)
    return out * lengths_to_mask(lens, x.size(1)).unsqueeze(2).to(out.dtype)


__all__ = ["bidirectional_within_lengths", "reverse_within_lengths"]
