"""Transformer and Conformer encoder-decoders with joint CTC (ESPnet's hybrid CTC/attention).

    Front end  two Conv2d(3x3, stride 2) + ReLU over (time, frequency), a linear layer
               to d_model and sinusoidal positions: T' = ceil(ceil(T / 2) / 2) frames.
    Encoder    ``encoder_layers`` pre-norm blocks, ``block``:
               transformer  torch's nn.TransformerEncoderLayer (norm_first, GELU)
               conformer    Gulati et al. (2020): FFN/2, self-attention, convolution
                            module, FFN/2, LayerNorm (written here: see below)
    CTC head   a linear layer on the encoder output
    Decoder    character embedding + sinusoidal positions, ``decoder_layers`` pre-norm
               layers of causal self-attention, cross-attention and a feed-forward net.

Shapes follow the legend in src/__init__.py (B, T, T', U, V, N = B * K rows of
a search, t positions decoded so far, d = d_model, h heads of dh = d / h).

The family interface (src/models/interface.py):

    encoded = model.encode(features (B, T, D), feature_lens (B,))
        memory = (enc (B, T', d), k_1, v_1, .., k_L, v_L): the encoder output and each
        decoder layer's cross-attention keys and values (B, T', d), projected once per
        utterance, never per step; lens (B,); CTC log-probs (B, T', V)
    state = model.init_state(encoded)        # per layer self-attention keys/values (N, t, d), t = 0
    logits, state, attn = model.step(tokens (N,), state, encoded)    # one position: O(t), not O(t^2)
    state = model.reorder_state(state, index)                        # beam search

The step appends the new position's keys and values to each layer's cache, so
a decoding step costs one position against the cache. ``teacher_forced`` runs
the same layers over all U positions at once with a causal mask;
tests/test_transformer.py checks that the cached steps reproduce it.

Masks come from lengths, never from pad values. Padded frames are zeroed after
every block, so the Conformer's depthwise convolution reads zeros beyond an
utterance's end, as it would alone, and its batch norm counts real frames only
(MaskedBatchNorm). torchaudio.models.Conformer was the first choice; its
convolution module reads the padded frames (and its batch norm counts them),
so an utterance padded in a batch would not get the output it gets alone.
Positions are absolute (sinusoidal) for both blocks; the Conformer paper uses
relative positions.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError
from src.models.interface import EncoderOutput, LossOutput, lengths_to_mask
from src.models.layers import MaskedBatchNorm, zero_beyond_lengths
from src.models.losses import attention_cross_entropy, ctc_loss, in_every_gradient
from src.models.registry import Family, register_family

State = tuple[torch.Tensor, ...]  # (k_1, v_1, .., k_L, v_L) self-attention caches, each (N, t, d)


@dataclass
class TransformerConfig:
    """Transformer / Conformer encoder-decoder sizes (``model.transformer``); about 3.7M parameters at
    the defaults."""

    RANGES = {"block": "conformer | transformer", "d_model": "[1, 8192]", "heads": "[1, 256]",
              "ffn_dim": "[1, 65536]", "encoder_layers": "[1, 128]", "decoder_layers": "[1, 128]",
              "conv_kernel": "[1, 1023]", "front_end_channels": "[1, 4096]", "dropout": "[0, 1)"}  # what each setting accepts (src/config.py: check_ranges)

    block: str = "conformer"  # conformer | transformer: the encoder's blocks
    d_model: int = 144  # width of every layer
    heads: int = 4  # attention heads (d_model must divide by it)
    ffn_dim: int = 576  # hidden width of the feed-forward nets
    encoder_layers: int = 6  # encoder blocks, after Conv2d subsampling by 4
    decoder_layers: int = 2  # decoder layers (self-attention, cross-attention, feed-forward)
    conv_kernel: int = 15  # conformer: depthwise convolution kernel over time (odd)
    front_end_channels: int = 64  # channels of the two stride-2 Conv2d layers
    dropout: float = 0.1  # attention, feed-forward and embedding dropout

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise UserError(f"config: 'model.transformer.d_model' ({self.d_model}) must be a multiple of "
                            f"'model.transformer.heads' ({self.heads})")
        if self.conv_kernel % 2 == 0:
            raise UserError(f"config: 'model.transformer.conv_kernel' must be odd; got {self.conv_kernel}")


def transformer_output_lengths(lengths, subsampling: int = 4):
    """THE length formula: two stride-2 convolutions (kernel 3, padding 1), ceil(T / 2) twice."""
    out = lengths
    for _ in range(int(math.log2(subsampling))):
        out = (out - 1) // 2 + 1
    return out


def sinusoids(length: int, dim: int, device=None) -> torch.Tensor:
    """(length, dim) sinusoidal positions (Vaswani et al., 2017)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
    scale = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * scale)
    pe[:, 1::2] = torch.cos(position * scale[: dim // 2])
    return pe


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with separate query and key/value projections."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S, d) -> keys, values (B, S, d) each."""
        return self.key_value(x).chunk(2, dim=-1)

    def attend(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               allowed: torch.Tensor | None) -> torch.Tensor:
        """Queries from x (B, U, d) over keys/values (B, S, d); allowed (B, U or 1, S) bool or None -> (B, U, d)."""
        b, u, d = x.shape
        split = lambda t: t.reshape(b, t.size(1), self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(keys), split(values)  # (B, S, d) -> (B, h, S, dh)
        mask = None if allowed is None else allowed[:, None]  # (B, U, S) -> (B, 1, U, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, u, d))  # (B, h, U, dh) -> (B, U, h, dh) -> (B, U, d)


def feed_forward(dim: int, hidden: int, dropout: float, activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), activation, nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class ConformerBlock(nn.Module):
    """x + FFN/2, + self-attention, + convolution module, + FFN/2, then LayerNorm; (B, T', d) -> (B, T', d)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel: int, dropout: float):
        super().__init__()
        self.ffn1 = feed_forward(dim, ffn_dim, dropout, nn.SiLU())
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.conv_norm = nn.LayerNorm(dim)
        self.pointwise1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv_bn = MaskedBatchNorm(dim)
        self.pointwise2 = nn.Conv1d(dim, dim, 1)
        self.ffn2 = feed_forward(dim, ffn_dim, dropout, nn.SiLU())
        self.out_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T', d) zero beyond mask (B, T') -> (B, T', d) zero beyond mask."""
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T', 1)
        x = x + 0.5 * self.ffn1(x)
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn.attend(h, *self.attn.keys_values(h), mask[:, None, :]))
        h = self.pointwise1((self.conv_norm(x) * keep).transpose(1, 2))  # (B, T', d) -> (B, d, T') -> (B, 2d, T')
        h = F.glu(h, dim=1) * keep.transpose(1, 2)  # (B, 2d, T') -> (B, d, T'), zeros beyond the end
        h = self.depthwise(h).transpose(1, 2)  # (B, d, T') -> (B, T', d)
        h = F.silu(self.conv_bn(h, mask))
        x = x + self.dropout(self.pointwise2(h.transpose(1, 2)).transpose(1, 2))  # (B, T', d)
        x = x + 0.5 * self.ffn2(x)
        return self.out_norm(x) * keep


class TransformerBlock(nn.Module):
    """torch's pre-norm nn.TransformerEncoderLayer with a key padding mask; (B, T', d) -> (B, T', d)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, activation="gelu", batch_first=True,
                                                norm_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_key_padding_mask=~mask) * mask.unsqueeze(-1).to(x.dtype)


class DecoderLayer(nn.Module):
    """Pre-norm: x + causal self-attention, + cross-attention over the encoder, + feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ffn = feed_forward(dim, ffn_dim, dropout, nn.GELU())
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None,
                self_allowed: torch.Tensor | None, cross_k: torch.Tensor, cross_v: torch.Tensor,
                cross_allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, U, d) new positions; past_k/v (B, t, d) cached ones or None -> x (B, U, d), k, v (B, t + U, d)."""
        h = self.self_norm(x)
        k, v = self.self_attn.keys_values(h)  # (B, U, d) each
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)  # (B, t + U, d)
        x = x + self.dropout(self.self_attn.attend(h, k, v, self_allowed))
        x = x + self.dropout(self.cross_attn.attend(self.cross_norm(x), cross_k, cross_v, cross_allowed))
        return x + self.ffn(x), k, v


class Transformer(nn.Module):
    """Conv2d subsampling + Transformer/Conformer encoder + CTC head + attention decoder."""

    family = "transformer"
    has_attention = False  # no teacher-forcing schedule or guided attention: the decoder runs in parallel

    def __init__(self, n_mels: int, vocab_size: int, cfg: TransformerConfig | None = None):
        super().__init__()
        cfg = cfg or TransformerConfig()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.front_end_channels
        self.conv1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.front_out = nn.Linear(c * transformer_output_lengths(n_mels), d)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.block == "conformer":
            blocks = [ConformerBlock(d, cfg.heads, cfg.ffn_dim, cfg.conv_kernel, cfg.dropout)
                      for _ in range(cfg.encoder_layers)]
        else:
            blocks = [TransformerBlock(d, cfg.heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.encoder_layers)]
        self.blocks = nn.ModuleList(blocks)
        self.encoder_norm = nn.LayerNorm(d) if cfg.block == "transformer" else nn.Identity()
        self.ctc = nn.Linear(d, vocab_size)
        self.embedding = nn.Embedding(vocab_size, d)
        self.decoder = nn.ModuleList(DecoderLayer(d, cfg.heads, cfg.ffn_dim, cfg.dropout)
                                     for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.char_out = nn.Linear(d, vocab_size)
        self.register_buffer("positions", sinusoids(1024, d), persistent=False)  # (P, d), grown on demand

    def output_lengths(self, feature_lens: torch.Tensor) -> torch.Tensor:
        return transformer_output_lengths(feature_lens)

    # ------------------------------------------------------------------ encoder

    def _subsample(self, features: torch.Tensor, feature_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, D) -> (B, T', d) zero beyond the new lens (B,)."""
        x = zero_beyond_lengths(features, feature_lens)
        x = x.unsqueeze(1)  # (B, T, D) -> (B, 1, T, D)
        lens = feature_lens
        for conv in (self.conv1, self.conv2):
            x = F.relu(conv(x))  # (B, C, T, F) -> (B, C, ceil(T/2), ceil(F/2))
            lens = (lens - 1) // 2 + 1
            x = x * lengths_to_mask(lens, x.size(2))[:, None, :, None].to(x.dtype)
        x = self.front_out(x.permute(0, 2, 1, 3).flatten(2))  # (B, C, T', F') -> (B, T', C, F') -> (B, T', C*F') -> (B, T', d)
        return x, lens

    def _positions(self, length: int, start: int = 0) -> torch.Tensor:
        if start + length > self.positions.size(0):  # a longer input than any before: more positions
            self.positions = sinusoids(2 * (start + length), self.cfg.d_model, self.positions.device)
        return self.positions[start : start + length]  # (length, d)

    def encode(self, features: torch.Tensor, feature_lens: torch.Tensor) -> EncoderOutput:
        x, lens = self._subsample(features, feature_lens)
        mask = lengths_to_mask(lens, x.size(1))  # (B, T')
        x = self.dropout(x * math.sqrt(self.cfg.d_model) + self._positions(x.size(1))) * mask.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        x = self.encoder_norm(x) * mask.unsqueeze(-1).to(x.dtype)  # (B, T', d)
        ctc_log_probs = F.log_softmax(self.ctc(x).float(), dim=-1)  # (B, T', d) -> (B, T', V)
        cross = [t for layer in self.decoder for t in layer.cross_attn.keys_values(x)]  # 2L x (B, T', d)
        return EncoderOutput((x, *cross), lens, ctc_log_probs, lens)

    # ------------------------------------------------------------------ decoder

    def _decode(self, tokens: torch.Tensor, start: int, state: State | None, encoded: EncoderOutput,
                self_allowed: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Positions start .. start + U - 1 of tokens (B, U) -> logits (B, U, V), caches grown by U."""
        x = self.dropout(self.embedding(tokens) * math.sqrt(self.cfg.d_model) + self._positions(tokens.size(1), start))
        cross_allowed = lengths_to_mask(encoded.lens, encoded.memory[0].size(1))[:, None, :]  # (B, 1, T')
        new_state = []
        for i, layer in enumerate(self.decoder):
            past_k, past_v = (state[2 * i], state[2 * i + 1]) if state is not None else (None, None)
            cross_k, cross_v = encoded.memory[1 + 2 * i], encoded.memory[2 + 2 * i]
            x, k, v = layer(x, past_k, past_v, self_allowed, cross_k, cross_v, cross_allowed)
            new_state += [k, v]
        return self.char_out(self.decoder_norm(x)), tuple(new_state)  # (B, U, d) -> (B, U, V)

    def teacher_forced(self, encoded: EncoderOutput, tokens_in: torch.Tensor) -> torch.Tensor:
        """tokens_in (B, U) = [SOS, c1, ..] -> logits (B, U, V), all positions at once (causal mask)."""
        u = tokens_in.size(1)
        causal = torch.ones(u, u, dtype=torch.bool, device=tokens_in.device).tril()[None]  # (1, U, U)
        logits, _ = self._decode(tokens_in, 0, None, encoded, causal)
        return logits

    def init_state(self, encoded: EncoderOutput) -> State:
        empty = encoded.memory[0].new_zeros(encoded.lens.shape[0], 0, self.cfg.d_model)  # (N, 0, d)
        return tuple(empty for _ in range(2 * len(self.decoder)))

    def step(self, tokens: torch.Tensor, state: State, encoded: EncoderOutput
             ) -> tuple[torch.Tensor, State, None]:
        """tokens (N,) at position t = cache length -> logits (N, V), caches (N, t + 1, d)."""
        logits, state = self._decode(tokens[:, None], state[0].size(1), state, encoded, None)  # (N, 1) -> (N, 1, V)
        return logits[:, 0], state, None

    @staticmethod
    def reorder_state(state: State, index: torch.Tensor) -> State:
        return tuple(t.index_select(0, index) for t in state)

    # ------------------------------------------------------------------ objective

    @staticmethod
    def loss_options(training_cfg) -> dict:
        return {"label_smoothing": training_cfg.label_smoothing, "ctc_weight": training_cfg.ctc_weight}

    def forward(self, features: torch.Tensor, feature_lens: torch.Tensor, tokens: torch.Tensor,
                token_lens: torch.Tensor, *, label_smoothing: float = 0.0, ctc_weight: float = 0.3,
                ctc_only: bool = False) -> LossOutput:
        """(1 - w) * attention CE (label smoothed, PAD ignored) + w * CTC; parts att, ctc.
        ``ctc_only`` (training.ctc_warmup_steps): the CTC loss alone, the decoder skipped."""
        tokens_in, targets = tokens[:, :-1], tokens[:, 1:]  # (B, U) -> (B, U-1) each
        encoded = self.encode(features, feature_lens)
        if ctc_only:
            ctc = ctc_loss(encoded, tokens, token_lens)
            return LossOutput(in_every_gradient(ctc, self), {"att": 0.0, "ctc": float(ctc.detach())}, encoded)
        att = attention_cross_entropy(self.teacher_forced(encoded, tokens_in), targets, label_smoothing)
        ctc = ctc_loss(encoded, tokens, token_lens)
        loss = (1.0 - ctc_weight) * att + ctc_weight * ctc
        return LossOutput(loss, {"att": float(att.detach()), "ctc": float(ctc.detach())}, encoded)


class FullPrefixSteps(nn.Module):
    """The same model decoded without the cache: the state is the token prefix (N, t) and every
    step reruns the teacher-forced decoder over all of it, O(t) positions per step instead of one.
    The reference for tests/test_transformer.py and the "no cache" rows of bench/bench_decode.py."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def encode(self, features: torch.Tensor, feature_lens: torch.Tensor) -> EncoderOutput:
        return self.model.encode(features, feature_lens)

    def init_state(self, encoded: EncoderOutput) -> torch.Tensor:
        return torch.zeros(encoded.lens.shape[0], 0, dtype=torch.long, device=encoded.lens.device)  # (N, 0)

    def step(self, tokens: torch.Tensor, state: torch.Tensor, encoded: EncoderOutput
             ) -> tuple[torch.Tensor, torch.Tensor, None]:
        prefix = torch.cat([state, tokens[:, None]], dim=1)  # (N, t) + (N, 1) -> (N, t + 1)
        return self.model.teacher_forced(encoded, prefix)[:, -1], prefix, None  # (N, t + 1, V) -> (N, V)

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)


register_family(Family("transformer", TransformerConfig,
                       lambda cfg, n_mels, vocab_size: Transformer(n_mels, vocab_size, cfg)))

__all__ = ["TransformerConfig", "ConformerBlock", "FullPrefixSteps", "Transformer", "TransformerBlock", "sinusoids", "transformer_output_lengths"]
