"""DeepSpeech2 (Amodei et al., 2016): convolutions, bidirectional recurrent layers, CTC.

    Front end  two Conv2d layers over (time, frequency), each followed by batch
               norm and a clipped ReLU (Hardtanh 0..20); the first has stride 2 in
               time and frequency, the second stride ``time_reduction / 2`` in
               time: T' = ceil(T / time_reduction) frames of C * ceil(D / 2) features.
    Recurrent  ``rnn_layers`` bidirectional GRU (or LSTM) layers with sequence-wise
               batch norm before each (statistics over real frames only); or, with
               ``bidirectional: false`` (streaming), forward-only layers followed by a
               lookahead (row) convolution over the next ``lookahead`` frames.
    Output     a linear layer to the vocabulary; CTC loss with blank = <pad> (id 0).

The family interface (src/models/interface.py), as DS2 fills it:

    encoded = model.encode(features (B, T, D), feature_lens (B,))   # CTC log-probs (B, T', V), no memory
    out = model(features, feature_lens, tokens, token_lens)          # LossOutput: CTC, part "ctc"

Padding never reaches a real frame: inputs and every layer's output are zeroed
beyond the lengths, batch norm statistics count real frames only, and the
backward direction of each recurrent layer runs over every utterance reversed
within its own length. So an utterance decodes the same alone or in any batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.config import DS2Config
from src.models.interface import EncoderOutput, LossOutput, lengths_to_mask
from src.models.losses import ctc_loss
from src.models.recurrent import reverse_within_lengths
from src.models.registry import Family, register_family

CONV_KERNEL = (11, 11)  # (time, frequency)


def ds2_output_lengths(lengths, time_reduction: int):
    """THE length formula: frames after the front end, ceil(T / 2) then ceil(. / (time_reduction / 2)).

    Each convolution has kernel 11, padding 5: out = (T - 1) // stride + 1. Works on ints and tensors.
    """
    out = (lengths - 1) // 2 + 1
    return (out - 1) // (time_reduction // 2) + 1


class MaskedBatchNorm(nn.BatchNorm1d):
    """Batch norm over the feature dimension whose statistics count real frames only.

    x (B, T, F) with mask (B, T) -> (B, T, F), zero beyond the mask. Eval mode uses the
    running statistics, as nn.BatchNorm1d does.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        if self.training:
            count = weights.sum().clamp(min=1.0)
            mean = (x * weights).sum(dim=(0, 1)) / count  # (F,)
            var = (((x - mean) ** 2) * weights).sum(dim=(0, 1)) / count  # biased, for normalising
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
        return y * weights


class BiRecurrent(nn.Module):
    """A GRU/LSTM layer without packing: the forward direction over the padded batch (padding
    follows the real frames), the backward one (when bidirectional) over each utterance reversed
    in its length."""

    def __init__(self, input_dim: int, hidden: int, rnn_type: str, bidirectional: bool = True):
        super().__init__()
        cell = nn.GRU if rnn_type == "gru" else nn.LSTM
        self.forward_rnn = cell(input_dim, hidden, batch_first=True)
        self.backward_rnn = cell(input_dim, hidden, batch_first=True) if bidirectional else None

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """x (B, T, F), lens (B,) -> (B, T, 2H), or (B, T, H) when unidirectional."""
        fwd, _ = self.forward_rnn(x)  # (B, T, H)
        if self.backward_rnn is None:
            return fwd
        bwd, _ = self.backward_rnn(reverse_within_lengths(x, lens))  # (B, T, H), reversed time
        return torch.cat([fwd, reverse_within_lengths(bwd, lens)], dim=2)  # (B, T, H) + (B, T, H) -> (B, T, 2H)


class Lookahead(nn.Module):
    """DS2's row convolution for a unidirectional model: y_t = sum_{j=0..tau} w_j * x_{t+j},
    one weight vector per future frame and feature (depthwise), so output t sees tau frames ahead.

    x (B, T, H) zero beyond the lengths -> (B, T, H); frames past an utterance's end read as zeros,
    alone or in a padded batch alike.
    """

    def __init__(self, dim: int, tau: int):
        super().__init__()
        self.tau = tau
        self.conv = nn.Conv1d(dim, dim, tau + 1, groups=dim, bias=False)
        nn.init.zeros_(self.conv.weight)
        with torch.no_grad():
            self.conv.weight[:, 0, 0] = 1.0  # starts as the identity: y_t = x_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.tau))  # (B, T, H) -> (B, H, T + tau), zeros after the end
        return self.conv(y).transpose(1, 2)  # (B, H, T + tau) -> (B, H, T) -> (B, T, H)


class DeepSpeech2(nn.Module):
    """Conv2d front end + bidirectional recurrent layers + a CTC output layer."""

    family = "ds2"

    def __init__(self, n_mels: int, vocab_size: int, cfg: DS2Config | None = None):
        super().__init__()
        cfg = cfg or DS2Config()
        self.cfg = cfg
        pad = (CONV_KERNEL[0] // 2, CONV_KERNEL[1] // 2)
        self.conv1 = nn.Conv2d(1, cfg.conv_channels, CONV_KERNEL, stride=(2, 2), padding=pad, bias=False)
        self.norm1 = nn.BatchNorm2d(cfg.conv_channels)
        self.conv2 = nn.Conv2d(cfg.conv_channels, cfg.conv_channels, CONV_KERNEL,
                               stride=(cfg.time_reduction // 2, 1), padding=pad, bias=False)
        self.norm2 = nn.BatchNorm2d(cfg.conv_channels)
        conv_dim = cfg.conv_channels * ((n_mels - 1) // 2 + 1)
        rnn_out = (2 if cfg.bidirectional else 1) * cfg.rnn_hidden
        self.rnn_norms = nn.ModuleList(
            MaskedBatchNorm(conv_dim if i == 0 else rnn_out) for i in range(cfg.rnn_layers))
        self.rnns = nn.ModuleList(
            BiRecurrent(conv_dim if i == 0 else rnn_out, cfg.rnn_hidden, cfg.rnn_type, cfg.bidirectional)
            for i in range(cfg.rnn_layers))
        self.lookahead = Lookahead(rnn_out, cfg.lookahead) if not cfg.bidirectional and cfg.lookahead else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(rnn_out, vocab_size)

    def output_lengths(self, feature_lens: torch.Tensor) -> torch.Tensor:
        return ds2_output_lengths(feature_lens, self.cfg.time_reduction)

    def _conv_block(self, x: torch.Tensor, lens: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d,
                    time_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T, F) zero beyond lens -> conv, masked batch norm, clipped ReLU: (B, C', T/s, F')."""
        x = conv(x)
        lens = (lens - 1) // time_stride + 1
        mask = lengths_to_mask(lens, x.size(2))  # (B, T/s)
        per_frame = x.permute(0, 2, 3, 1)  # (B, C, T, F) -> (B, T, F, C): statistics per channel
        weights = mask[:, :, None, None].to(x.dtype)  # (B, T, 1, 1)
        if self.training:
            count = (weights.sum() * per_frame.size(2)).clamp(min=1.0)
            mean = (per_frame * weights).sum(dim=(0, 1, 2)) / count  # (C,)
            var = (((per_frame - mean) ** 2) * weights).sum(dim=(0, 1, 2)) / count
            with torch.no_grad():
                norm.running_mean.lerp_(mean.detach(), norm.momentum)
                norm.running_var.lerp_((var * count / (count - 1).clamp(min=1.0)).detach(), norm.momentum)
                norm.num_batches_tracked += 1
        else:
            mean, var = norm.running_mean, norm.running_var
        per_frame = (per_frame - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        per_frame = F.hardtanh(per_frame, 0.0, 20.0) * weights
        return per_frame.permute(0, 3, 1, 2), lens  # (B, T, F, C) -> (B, C, T, F)

    def encode(self, features: torch.Tensor, feature_lens: torch.Tensor) -> EncoderOutput:
        """features (B, T, D), feature_lens (B,) -> CTC log-probs (B, T', V) with lens (B,)."""
        x = features * lengths_to_mask(feature_lens, features.size(1)).unsqueeze(-1).to(features.dtype)
        x = x.unsqueeze(1)  # (B, T, D) -> (B, 1, T, D)
        x, lens = self._conv_block(x, feature_lens, self.conv1, self.norm1, 2)  # -> (B, C, T/2, D/2)
        x, lens = self._conv_block(x, lens, self.conv2, self.norm2, self.cfg.time_reduction // 2)  # -> (B, C, T', D/2)
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, C, T', F) -> (B, T', C, F) -> (B, T', C*F)
        mask = lengths_to_mask(lens, x.size(1))  # (B, T')
        for norm, rnn in zip(self.rnn_norms, self.rnns):
            x = rnn(self.dropout(norm(x, mask)), lens) * mask.unsqueeze(-1).to(x.dtype)  # (B, T', 2H or H)
        if self.lookahead is not None:
            x = F.hardtanh(self.lookahead(x), 0.0, 20.0) * mask.unsqueeze(-1).to(x.dtype)  # (B, T', H)
        log_probs = F.log_softmax(self.output(self.dropout(x)).float(), dim=-1)  # (B, T', 2H) -> (B, T', V)
        return EncoderOutput((), lens, log_probs, lens)

    @staticmethod
    def loss_options(training_cfg) -> dict:
        return {}

    def forward(self, features: torch.Tensor, feature_lens: torch.Tensor, tokens: torch.Tensor,
                token_lens: torch.Tensor) -> LossOutput:
        """The objective: CTC over the characters of tokens (B, U) = [SOS, c1..cn, EOS, PAD..]."""
        encoded = self.encode(features, feature_lens)
        loss = ctc_loss(encoded, tokens, token_lens)
        return LossOutput(loss, {"ctc": float(loss.detach())}, encoded)


register_family(Family("ds2", DS2Config, lambda cfg, n_mels, vocab_size: DeepSpeech2(n_mels, vocab_size, cfg)))

__all__ = ["BiRecurrent", "DeepSpeech2", "Lookahead", "MaskedBatchNorm", "ds2_output_lengths"]
