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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError
from src.models.interface import EncoderOutput, LossOutput, lengths_to_mask
from src.models.losses import ctc_loss
from src.models.layers import BiRecurrent, MaskedBatchNorm, zero_beyond_lengths
from src.models.registry import Family, register_family

CONV_KERNEL = (11, 11)  # (time, frequency)


@dataclass
class DS2Config:
    """DeepSpeech2's sizes (``model.ds2``): conv front end, bidirectional GRUs, CTC; about 3.6M parameters.
    Time reduction 4 gives 25 frames/s, room for LibriSpeech's ~15 characters/s and a blank between
    doubled letters."""

    RANGES = {"conv_channels": "[1, 4096]", "time_reduction": "2 | 4", "rnn_type": "gru | lstm",
              "rnn_layers": "[1, 64]", "rnn_hidden": "[1, 8192]", "dropout": "[0, 1)", "lookahead": "[0, 10000]"}  # what each setting accepts (src/config.py: check_ranges)

    conv_channels: int = 32  # channels of both Conv2d layers (kernel 11x11 over time x frequency)
    time_reduction: int = 4  # 2 | 4: T' = ceil(T / time_reduction) frames of CTC output
    rnn_type: str = "gru"  # gru | lstm
    rnn_layers: int = 3  # recurrent layers, each with sequence-wise batch norm before it
    rnn_hidden: int = 256  # H of each direction
    dropout: float = 0.1  # before each recurrent layer and the output layer
    bidirectional: bool = True  # false: forward-only layers (streamable), with a lookahead convolution
    lookahead: int = 0  # unidirectional only: frames of future context (row convolution; 0 = none)

    def __post_init__(self) -> None:
        if self.bidirectional and self.lookahead:
            raise UserError("config: 'model.ds2.lookahead' is for a unidirectional model; set "
                            "model.ds2.bidirectional=false or model.ds2.lookahead=0")


def ds2_output_lengths(lengths, time_reduction: int):
    """THE length formula: frames after the front end, ceil(T / 2) then ceil(. / (time_reduction / 2)).

    Each convolution has kernel 11, padding 5: out = (T - 1) // stride + 1. Works on ints and tensors.
    """
    out = (lengths - 1) // 2 + 1
    return (out - 1) // (time_reduction // 2) + 1


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
        self.norm1 = MaskedBatchNorm(cfg.conv_channels)
        self.conv2 = nn.Conv2d(cfg.conv_channels, cfg.conv_channels, CONV_KERNEL,
                               stride=(cfg.time_reduction // 2, 1), padding=pad, bias=False)
        self.norm2 = MaskedBatchNorm(cfg.conv_channels)
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

    def _conv_block(self, x: torch.Tensor, lens: torch.Tensor, conv: nn.Conv2d, norm: MaskedBatchNorm,
                    time_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T, F) zero beyond lens -> conv, masked batch norm, clipped ReLU: (B, C', T/s, F')."""
        x = conv(x)
        lens = (lens - 1) // time_stride + 1
        per_frame = x.permute(0, 2, 3, 1)  # (B, C, T, F) -> (B, T, F, C): statistics per channel
        per_frame = F.hardtanh(norm(per_frame, lengths_to_mask(lens, x.size(2))), 0.0, 20.0)  # zero beyond lens
        return per_frame.permute(0, 3, 1, 2), lens  # (B, T, F, C) -> (B, C, T, F)

    def encode(self, features: torch.Tensor, feature_lens: torch.Tensor) -> EncoderOutput:
        """features (B, T, D), feature_lens (B,) -> CTC log-probs (B, T', V) with lens (B,)."""
        x = zero_beyond_lengths(features, feature_lens).unsqueeze(1)  # (B, T, D) -> (B, 1, T, D)
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

__all__ = ["DS2Config", "DeepSpeech2", "Lookahead", "ds2_output_lengths"]
