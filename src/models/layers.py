"""Layers shared by the families; no family imports another.

    zero_beyond_lengths(x (B, T, ...), lens (B,))        padding set to exactly zero
    MaskedBatchNorm(C)(x (B, T, ..., C), mask (B, T))   batch norm whose statistics count real frames only
    reverse_within_lengths(x (B, T, F), lens (B,))     each utterance's real frames reversed
    bidirectional_within_lengths(forward, backward, x, lens)      THE within-lengths recurrence:
        the forward direction runs over the padded batch (padding follows the real frames), the
        backward one over each utterance reversed within its length, so neither sees padding
    BiRecurrent(F, H, "gru"|"lstm")(x, lens)            that recurrence with one module per direction (DS2)
    rnn_within_lengths(rnn, x, lens)                    that recurrence for a one-layer bidirectional
                                                         nn.LSTM/nn.GRU (LAS's pBLSTM); packed on CUDA
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from src.models.interface import lengths_to_mask


def zero_beyond_lengths(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) -> the same with every frame t >= lens[b] set to zero."""
    mask = lengths_to_mask(lens, x.size(1))  # (B, T)
    return x * mask.reshape(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)  # (B, T) -> (B, T, 1, ..)


class MaskedBatchNorm(nn.BatchNorm1d):
    """Batch norm over the last dimension (features or channels) whose statistics count real frames only.

    x (B, T, ..., C) with mask (B, T) -> (B, T, ..., C), zero beyond the mask; the statistics run over
    every dimension but the last. Eval mode uses the running statistics, as nn.BatchNorm1d does.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        weights = mask.reshape(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)  # (B, T) -> (B, T, 1, ..)
        if self.training:
            inner = math.prod(x.shape[2:-1])  # positions per frame besides the frame itself (4-D: F)
            count = (weights.sum() * inner if inner > 1 else weights.sum()).clamp(min=1.0)
            dims = tuple(range(x.dim() - 1))
            mean = (x * weights).sum(dim=dims) / count  # (C,)
            var = (((x - mean) ** 2) * weights).sum(dim=dims) / count  # biased, for normalising
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
        return y * weights


def reverse_within_lengths(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x (B, T, F) -> (B, T, F) with each utterance's first lens[b] frames reversed; padding stays.

    Its own inverse: reverse_within_lengths(reverse_within_lengths(x, lens), lens) == x.
    """
    steps = torch.arange(x.size(1), device=x.device)[None, :]  # (1, T)
    index = torch.where(steps < lens[:, None], lens[:, None] - 1 - steps, steps)  # (B, T): t -> len-1-t
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


Direction = Callable[[torch.Tensor], torch.Tensor]  # (B, T, F) -> (B, T, H), run forward in time


def bidirectional_within_lengths(forward: Direction, backward: Direction, x: torch.Tensor,
                                 lens: torch.Tensor) -> torch.Tensor:
    """[forward(x); backward over each utterance reversed within its length] per frame: (B, T, 2H).

    Real frames never see padding; frames beyond ``lens`` hold whatever the directions left there."""
    fwd = forward(x)  # (B, T, H): padding comes after the real frames
    bwd = backward(reverse_within_lengths(x, lens))  # (B, T, H) in reversed time
    return torch.cat([fwd, reverse_within_lengths(bwd, lens)], dim=2)  # (B, T, H) + (B, T, H) -> (B, T, 2H)


def _one_direction(rnn: nn.Module, suffix: str) -> Direction:
    """Direction ``suffix`` ("" or "_reverse") of a one-layer bidirectional rnn, run forward in time."""
    weights = [getattr(rnn, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def run(x: torch.Tensor) -> torch.Tensor:
        h0 = x.new_zeros(1, x.size(0), rnn.hidden_size)  # (1 layer, B, H)
        if isinstance(rnn, nn.LSTM):
            out, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, rnn.training, False, True)
        else:
            out, _ = torch.gru(x, h0, weights, True, 1, 0.0, rnn.training, False, True)
        return out  # (B, T, H)

    return run


def rnn_within_lengths(rnn: nn.Module, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """A one-layer bidirectional GRU/LSTM over x (B, T, F) whose real frames never see padding.

    Returns (B, T, 2H) = [forward; backward] per frame, zero beyond ``lens`` (B,). On CUDA the
    packed sequence runs in cuDNN; on the CPU, :func:`bidirectional_within_lengths` with the rnn's
    two directions (equal to the packed result: tests/test_ds2.py).
    """
    if not (rnn.bidirectional and rnn.num_layers == 1 and rnn.batch_first and rnn.bias):
        raise ValueError("rnn_within_lengths: expects a one-layer bidirectional batch-first rnn with biases")
    if x.is_cuda:
        packed = pack_padded_sequence(x, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))  # (B, T, 2H), zero padded
        return out
    out = bidirectional_within_lengths(_one_direction(rnn, ""), _one_direction(rnn, "_reverse"), x, lens)
    return out * lengths_to_mask(lens, x.size(1)).unsqueeze(2).to(out.dtype)  # (B, T) -> (B, T, 1)


class BiRecurrent(nn.Module):
    """A GRU/LSTM layer with one module per direction, run by :func:`bidirectional_within_lengths`
    (forward only when ``bidirectional`` is false)."""

    def __init__(self, input_dim: int, hidden: int, rnn_type: str, bidirectional: bool = True):
        super().__init__()
        cell = nn.GRU if rnn_type == "gru" else nn.LSTM
        self.forward_rnn = cell(input_dim, hidden, batch_first=True)
        self.backward_rnn = cell(input_dim, hidden, batch_first=True) if bidirectional else None

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """x (B, T, F), lens (B,) -> (B, T, 2H), or (B, T, H) when unidirectional."""
        if self.backward_rnn is None:
            return self.forward_rnn(x)[0]  # (B, T, H)
        return bidirectional_within_lengths(lambda v: self.forward_rnn(v)[0], lambda v: self.backward_rnn(v)[0],
                                            x, lens)


__all__ = ["BiRecurrent", "MaskedBatchNorm", "bidirectional_within_lengths", "reverse_within_lengths",
           "rnn_within_lengths", "zero_beyond_lengths"]
