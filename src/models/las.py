"""Listen, Attend and Spell (Chan et al., 2016) with a joint CTC head.

    Listener   Conv1d front end (stride s) -> n pyramidal BLSTM layers, each
               concatenating adjacent frames (halving T) before its BLSTM;
               locked dropout between layers; packed sequences from lengths.
    Attention  key/value projections of the listener output, a query from the
               speller state, scaled dot-product scores masked from lengths;
               optionally location-aware (Chorowski et al., 2015): a convolution
               over the previous step's weights adds a score per frame, so the
               speller can learn to move on from where it last looked; optionally
               windowed (Bahdanau et al., 2016): each step sees only the frames from
               ``window_behind`` before to ``window_ahead`` after where the last step
               looked (training: where the CTC head puts the character before), so
               content only has to tell the next character from its neighbours.
    Speller    embedding + two LSTM layers + a character distribution network
               whose output matrix is the embedding (weight tying). ONE step
               function serves greedy and beam search, and teacher-forced
               training with input feeding or location-aware attention; without
               either, training computes every step at once with the same layers
               (tested equal).
    Guidance   the CTC head's posterior of each character over the frames
               (src/models/alignment.py) is the target of guided attention
               (training.guided_attention_target=ctc) and the window centres of training.
    CTC head   log-softmax over the vocabulary on the output of pBLSTM layer
               ``ctc_layer`` (default 1 of 2 after a stride-2 front end: T/4,
               because at T/8 the listener has fewer frames than a LibriSpeech
               utterance has characters and CTC would be infeasible). The CTC
               blank is PAD (id 0).

The family interface (src/models/interface.py), as LAS fills it:

    encoded = model.encode(features (B, T, D), feature_lens (B,))   # memory = (keys, values) (B, T', A)
    state = model.init_state(encoded)
    logits (B, V), state, attn (B, T') = model.step(tokens (B,), state, encoded)
    state = model.reorder_state(state, index (B',))
    out = model(features, feature_lens, tokens, token_lens, teacher_forcing_rate=..., ...)   # LossOutput
    logits (B, U, V), attn (B, U, T') = model.teacher_forced(encoded, tokens_in (B, U), rate)
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError
from src.models.interface import EncoderOutput, LossOutput, lengths_to_mask
from src.models.alignment import ctc_occupancy, pool_frames
from src.models.losses import (attention_cross_entropy, attention_target_loss, ctc_loss, ctc_targets, guided_attention_loss,
                               in_every_gradient)
from src.models.layers import rnn_within_lengths, zero_beyond_lengths
from src.models.registry import Family, register_family

State = tuple[torch.Tensor, ...]  # (h1, c1, h2, c2, context, attn, center), batch-first: attn (B, T') the last
# step's weights, center (B,) its window's centre (windowed attention's centres never move back)


@dataclass
class LASConfig:
    """Listen, Attend and Spell's sizes (``model.las``). The defaults (3.4M parameters) learn fast on a
    CPU; the paper's listener is conv_stride 1, listener_layers 3, ctc_layer 2, wider layers."""

    RANGES = {"conv_channels": "[1, 8192]", "conv_stride": "[1, 64]", "listener_hidden": "[1, 8192]",
              "listener_layers": "[1, 16]", "locked_dropout": "[0, 1)", "attention_dim": "[1, 8192]",
              "embedding_dim": "[1, 8192]", "speller_hidden": "[1, 8192]", "speller_dropout": "[0, 1)",
              "ctc_layer": "[1, 16]", "location_kernel": "[0, 255]", "location_channels": "[1, 1024]",
              "window_behind": "[0, 100000]", "window_ahead": "[0, 100000]", "window_advance": "[0, 100]"}  # what each setting accepts (src/config.py: check_ranges)

    conv_channels: int = 128  # Conv1d front end output channels
    conv_stride: int = 2  # Conv1d front end stride; T' = ceil(T / stride / 2**listener_layers)
    listener_hidden: int = 192  # H of each BLSTM direction
    listener_layers: int = 2  # pyramidal BLSTM layers, each halving T
    locked_dropout: float = 0.1  # dropout between listener layers, one mask per utterance
    attention_dim: int = 128  # A: key/value/query size
    embedding_dim: int = 128  # character embedding size E (tied to the output layer)
    speller_hidden: int = 256  # hidden size of each of the two speller LSTMs
    input_feeding: bool = False  # true: the first speller LSTM also reads the previous context (slower)
    location_kernel: int = 0  # location-aware attention: conv kernel over the last step's weights (odd; 0 = off)
    location_channels: int = 8  # location-aware attention: filters of that convolution
    window_behind: int = 1  # windowed attention: listener frames before where the last step looked (0 and 0 = off)
    window_ahead: int = 12  # windowed attention: listener frames after it (training: after the CTC head's position)
    window_advance: float = 0.25  # windowed attention, decoding: the window moves on at least this many frames a step
    speller_dropout: float = 0.1  # dropout inside the speller
    tie_weights: bool = True  # the character distribution shares the embedding matrix
    ctc_head: bool = True  # joint CTC head on the listener (blank = <pad>, id 0)
    ctc_layer: int = 1  # pBLSTM layer (1..listener_layers) feeding the CTC head

    def __post_init__(self) -> None:
        if self.location_kernel and self.location_kernel % 2 == 0:
            raise UserError(f"config: 'model.las.location_kernel' must be odd (or 0 = off); got {self.location_kernel}")
        if self.ctc_head and not 1 <= self.ctc_layer <= self.listener_layers:
            raise UserError(f"config: 'model.las.ctc_layer' must be in 1..{self.listener_layers} "
                            f"(model.las.listener_layers); got {self.ctc_layer}")


def listener_output_lengths(lengths, conv_stride: int, n_layers: int):
    """THE time-reduction formula: frames left after the front end and ``n_layers`` pBLSTMs.

    The Conv1d front end keeps ceil(T / conv_stride) frames; each pBLSTM layer
    pads an odd T with one zero frame and halves it: T -> ceil(T / 2). So every
    utterance with T >= 1 keeps at least one frame. Works on ints and on
    integer tensors (B,).
    """
    out = (lengths - 1) // conv_stride + 1  # ceil(T / s)
    for _ in range(n_layers):
        out = (out + 1) // 2  # ceil(T / 2)
    return out


class LockedDropout(nn.Module):
    """Dropout with one mask per utterance and feature, shared over time (Gal & Ghahramani)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) -> (B, T, F)."""
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * mask  # (B, 1, F) broadcast over T


def _init_lstm(lstm: nn.Module) -> None:
    """Orthogonal recurrent weights, Xavier input weights, forget-gate bias 1."""
    for name, param in lstm.named_parameters():
        if "weight_hh" in name:
            for chunk in param.data.chunk(4, 0):  # gates i, f, g, o
                nn.init.orthogonal_(chunk)
        elif "weight_ih" in name:
            nn.init.xavier_uniform_(param.data)
        elif "bias" in name:
            param.data.zero_()
            if "bias_ih" in name:  # bias_ih + bias_hh: forget gate starts at 1
                hidden = param.size(0) // 4
                param.data[hidden : 2 * hidden] = 1.0


class pBLSTM(nn.Module):
    """Pyramidal BLSTM layer: concatenate adjacent frames, then a BLSTM.

    (B, T, F) -> (B, ceil(T/2), 2F) -> BLSTM -> (B, ceil(T/2), 2H).
    An odd T gets one zero frame so that the last real frame is kept.
    """

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(2 * input_dim, hidden, batch_first=True, bidirectional=True)
        _init_lstm(self.lstm)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F) zero beyond ``lens`` (B,) -> (B, ceil(T/2), 2H), new lens (B,)."""
        batch, frames, dim = x.shape
        if frames % 2:
            x = F.pad(x, (0, 0, 0, 1))  # (B, T, F) -> (B, T+1, F), zero frame at the end
        x = x.reshape(batch, x.size(1) // 2, 2 * dim)  # (B, T, F) -> (B, T/2, 2F)
        lens = listener_output_lengths(lens, 1, 1)
        return rnn_within_lengths(self.lstm, x, lens), lens  # (B, T/2, 2F) -> (B, T/2, 2H)


class Listener(nn.Module):
    """Conv1d front end + ``n_layers`` pBLSTM layers with locked dropout between them."""

    def __init__(
        self,
        n_mels: int,
        conv_channels: int,
        conv_stride: int,
        hidden: int,
        n_layers: int,
        dropout: float,
        ctc_layer: int = 0,
    ):
        super().__init__()
        self.conv_stride = conv_stride
        self.n_layers = n_layers
        self.ctc_layer = ctc_layer
        pad = max(1, conv_stride // 2)  # kernel 2*pad+1 >= stride: no frame skipped
        self.conv = nn.Conv1d(n_mels, conv_channels, kernel_size=2 * pad + 1, stride=conv_stride, padding=pad)
        self.norm = nn.LayerNorm(conv_channels)  # per frame: padding never leaks into statistics
        self.layers = nn.ModuleList(
            pBLSTM(conv_channels if i == 0 else 2 * hidden, hidden) for i in range(n_layers)
        )
        self.dropout = LockedDropout(dropout)
        self.output_dim = 2 * hidden

    def forward(
        self, features: torch.Tensor, lens: torch.Tensor, upto_ctc: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """features (B, T, D), lens (B,) -> out (B, T', 2H), lens (B,), and the
        output of layer ``ctc_layer`` (B, T'', 2H) with its lens (None when 0).
        ``upto_ctc``: stop at layer ``ctc_layer`` (out is then that layer's output)."""
        x = zero_beyond_lengths(features, lens)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D) -> (B, D, T) -> (B, C, T/s) -> (B, T/s, C)
        lens = listener_output_lengths(lens, self.conv_stride, 0)
        x = F.gelu(self.norm(x))
        x = zero_beyond_lengths(x, lens)
        ctc_x = ctc_lens = None
        for i, layer in enumerate(self.layers):
            x, lens = layer(self.dropout(x), lens)  # (B, T, F) -> (B, T/2, 2H)
            if i + 1 == self.ctc_layer:
                ctc_x, ctc_lens = x, lens
                if upto_ctc:
                    break
        return self.dropout(x), lens, ctc_x, ctc_lens


class Attention(nn.Module):
    """Scaled dot-product attention: keys/values from the listener, query from the speller.

    With ``location_kernel`` K > 0 it is location-aware: the weights of the previous
    step, convolved with C filters of width K, add ``w . tanh(conv)`` to each frame's
    score. Content alone cannot tell the fifth "THE" of a paragraph from the first;
    where the last step looked can.
    """

    def __init__(self, listener_dim: int, query_dim: int, attention_dim: int,
                 location_kernel: int = 0, location_channels: int = 8, window: tuple[int, int] = (0, 0)):
        super().__init__()
        self.window = window if any(window) else None  # (behind, ahead) listener frames, or the whole utterance
        self.key = nn.Linear(listener_dim, attention_dim)
        self.value = nn.Linear(listener_dim, attention_dim)
        self.query = nn.Linear(query_dim, attention_dim)
        self.scale = 1.0 / math.sqrt(attention_dim)
        self.location = None
        if location_kernel:
            self.location = nn.Conv1d(1, location_channels, location_kernel, padding=location_kernel // 2, bias=False)
            self.location_score = nn.Linear(location_channels, 1, bias=False)

    def project(self, listener_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T', 2H) -> keys (B, T', A), values (B, T', A); once per utterance."""
        return self.key(listener_out), self.value(listener_out)

    def forward(
        self, state: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lens: torch.Tensor,
        previous: torch.Tensor | None = None, centers: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """state (B, Hs) or (B, U, Hs), keys/values (B, T', A), lens (B,) -> context (B, A) or (B, U, A),
        weights (B, T') or (B, U, T') summing to 1 over T' and exactly 0 at t >= lens (and, windowed,
        outside the window). ``previous`` (B, T'): the last step's weights, read by location-aware
        attention and, one step at a time, by windowed attention for its centre; ``centers`` (B,) or
        (B, U): the windows' centres instead (teacher-forced training)."""
        one_step = state.dim() == 2
        scores = self.content_scores(state.unsqueeze(1) if one_step else state, keys)  # (B, U, T'); one step: U = 1
        if self.location is not None:
            if not one_step or previous is None:
                raise ValueError("location-aware attention runs one step at a time, given the previous weights")
            scores = scores + self.location_scores(previous).unsqueeze(1)  # (B, T') -> (B, 1, T'), U = 1
        mask = lengths_to_mask(lens, keys.size(1)).unsqueeze(1)  # (B, T') -> (B, 1, T'), broadcast over U
        if self.window is not None:
            if centers is None:
                if not one_step or previous is None:
                    raise ValueError("windowed attention needs the windows' centres, or the previous weights")
                centers = self.expected_frame(previous)  # (B, T') -> (B,)
            mask = mask & self.window_mask(centers.view(centers.size(0), -1), keys.size(1))  # (B, U, T')
        weights = self.normalise(scores, mask)
        context = torch.bmm(weights.to(values.dtype), values)  # (B, U, T') x (B, T', A) -> (B, U, A)
        if one_step:
            return context.squeeze(1), weights.squeeze(1)  # (B, 1, A) -> (B, A); (B, 1, T') -> (B, T')
        return context, weights

    def content_scores(self, states: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """states (B, U, Hs), keys (B, T', A) -> scaled dot products (B, U, T')."""
        query = self.query(states)  # (B, U, Hs) -> (B, U, A)
        return torch.bmm(query, keys.transpose(1, 2)) * self.scale  # (B, U, A) x (B, A, T') -> (B, U, T')

    def location_scores(self, previous: torch.Tensor) -> torch.Tensor:
        """The last step's weights (B, T') -> each frame's location score (B, T')."""
        conv = self.location(previous.unsqueeze(1).to(self.location.weight.dtype))  # (B, T') -> (B, 1, T') -> (B, C, T')
        return self.location_score(torch.tanh(conv.transpose(1, 2))).squeeze(2)  # (B, T', C) -> (B, T', 1) -> (B, T')

    @staticmethod
    def expected_frame(weights: torch.Tensor) -> torch.Tensor:
        """Where attention weights (B, T') look on average: (B,) float frame positions."""
        frames = torch.arange(weights.size(-1), device=weights.device, dtype=torch.float32)
        return (weights.float() * frames).sum(dim=-1)  # (B, T') -> (B,)

    def window_mask(self, centers: torch.Tensor, frames: int) -> torch.Tensor:
        """centers (B, U) float frame positions -> (B, U, T') bool, True from ``behind`` frames before
        each centre to ``ahead`` frames after it (Bahdanau et al., 2016). A centre on a real frame keeps
        at least that frame, so a window is never empty."""
        behind, ahead = self.window
        t = torch.arange(frames, device=centers.device, dtype=torch.float32)  # (T',)
        offset = t.view(1, 1, -1) - centers.float().unsqueeze(2)  # (1, 1, T') - (B, U, 1) -> (B, U, T')
        return (offset >= -behind - 0.5) & (offset <= ahead + 0.5)

    @staticmethod
    def normalise(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax over frames, in float32 (also under autocast), exactly 0 where mask is False."""
        return torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)


class Speller(nn.Module):
    """Embedding, two LSTM layers, attention and the character distribution network.

    With ``input_feeding`` (the paper), the first LSTM reads [embedding; previous
    context], so step u needs the attention of step u - 1 and training loops over
    the target one character at a time (two LSTMCells). Without it the LSTMs read
    the characters only: their outputs for a whole target come from one fused
    LSTM call per layer and the attention for every step from one batched
    product (location-aware attention: one product per step, each reading the
    weights of the step before), and ``step_features`` is the same computation
    for one position.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden: int,
        attention_dim: int,
        listener_dim: int,
        dropout: float,
        tie_weights: bool,
        input_feeding: bool = False,
        location_kernel: int = 0,
        location_channels: int = 8,
        window: tuple[int, int] = (0, 0),
        window_advance: float = 0.0,
    ):
        super().__init__()
        self.hidden = hidden
        self.window_advance = window_advance
        self.attention_dim = attention_dim
        self.input_feeding = input_feeding
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        if input_feeding:
            self.cell1 = nn.LSTMCell(embedding_dim + attention_dim, hidden)
            self.cell2 = nn.LSTMCell(hidden, hidden)
        else:  # the same two layers as LSTMs over a sequence (of one position when decoding)
            self.rnn1 = nn.LSTM(embedding_dim, hidden, batch_first=True)
            self.rnn2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.attention = Attention(listener_dim, hidden, attention_dim, location_kernel, location_channels, window)
        self.dropout = nn.Dropout(dropout)
        # char distribution: [h2; context] -> embedding space -> vocabulary
        self.char_proj = nn.Linear(hidden + attention_dim, embedding_dim)
        self.char_out = nn.Linear(embedding_dim, vocab_size)
        nn.init.normal_(self.embedding.weight, std=embedding_dim**-0.5)
        if tie_weights:
            self.char_out.weight = self.embedding.weight  # (V, E) shared
        for layer in (self.cell1, self.cell2) if input_feeding else (self.rnn1, self.rnn2):
            _init_lstm(layer)

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        """Zero recurrent states and context, (B, Hs) x 4 and (B, A), and the weights of a step
        "before" the first, all on frame 0 (B, T'), T' = like.size(1), as is its window's centre (B,):
        speech starts at the start."""
        h = like.new_zeros(batch, self.hidden)
        attn = like.new_zeros(batch, like.size(1))
        attn[:, 0] = 1.0
        center = like.new_zeros(batch, dtype=torch.float32)
        return (h, h.clone(), h.clone(), h.clone(), like.new_zeros(batch, self.attention_dim), attn, center)

    def recurrence(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Without input feeding: embedded (B, U, E) -> top-layer outputs (B, U, Hs), state after
        the last position. The LSTM layers of teacher-forced training (U = target) and of a step (U = 1)."""
        h1, c1, h2, c2, *rest = state
        out1, (h1, c1) = self.rnn1(embedded, (h1.unsqueeze(0), c1.unsqueeze(0)))  # state (B, Hs) -> (1, B, Hs)
        out2, (h2, c2) = self.rnn2(self.dropout(out1), (h2.unsqueeze(0), c2.unsqueeze(0)))  # (B, U, Hs)
        return out2, (h1.squeeze(0), c1.squeeze(0), h2.squeeze(0), c2.squeeze(0), *rest)  # (1, B, Hs) -> (B, Hs)

    def step_features(
        self, tokens: torch.Tensor, state: State, keys, values, lens, center: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """THE recurrence: tokens (B,) -> output features (B, Hs + A), new state, attn (B, T').
        ``center`` (B,): the attention window's centre; by default where the last step looked, or the
        last centre plus ``window_advance`` frames when that is further on: decoding moves the window
        forward only, as the CTC positions that centre it in training do, and a speller that repeats
        a word while looking at the same frames is carried past them."""
        embedded = self.embedding(tokens)  # (B,) -> (B, E)
        if self.input_feeding:
            h1, c1, h2, c2, context = state[:5]
            x = torch.cat([embedded, context], dim=1)  # (B, E) + (B, A) -> (B, E + A)
            h1, c1 = self.cell1(x, (h1, c1))
            h2, c2 = self.cell2(self.dropout(h1), (h2, c2))
        else:
            out, (h1, c1, h2, c2, *_) = self.recurrence(embedded.unsqueeze(1), state)  # (B, E) -> (B, 1, E)
            h2 = out.squeeze(1)  # (B, 1, Hs) -> (B, Hs)
        if center is None and self.attention.window is not None:
            center = self.next_center(state[6], state[5], lens)  # (B,)
        context, attn = self.attention(h2, keys, values, lens, previous=state[5], centers=center)
        out = torch.cat([h2, context], dim=1)  # (B, Hs) + (B, A) -> (B, Hs + A)
        return out, (h1, c1, h2, c2, context, attn, state[6] if center is None else center.float()), attn

    def next_center(self, center: torch.Tensor, previous: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Decoding's window centre (B,): where the last step looked (``previous`` (B, T')), or the last
        ``center`` (B,) plus ``window_advance`` when that is further on; never past the last real frame
        (``lens`` (B,)), so the window is never empty."""
        center = torch.maximum(center + self.window_advance, self.attention.expected_frame(previous))
        return torch.minimum(center, (lens - 1).float())

    def all_features(self, tokens_in: torch.Tensor, keys, values, lens, centers: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Without input feeding, every position at once: tokens_in (B, U) -> output features
        (B, U, Hs + A) and attn (B, U, T'), equal to U calls of ``step_features`` (each given its
        window's centre from ``centers`` (B, U) when windowed). Padding at the end of a target
        cannot reach the real positions before it (the LSTMs run forward)."""
        state = self.init_state(tokens_in.size(0), keys)
        out, _ = self.recurrence(self.embedding(tokens_in), state)  # (B, U) -> (B, U, E) -> (B, U, Hs)
        if self.attention.location is None:
            context, attn = self.attention(out, keys, values, lens, centers=centers)  # (B, U, A), (B, U, T')
        else:  # each step's weights feed the next: only the location scores run one position at a time
            content = self.attention.content_scores(out, keys)  # (B, U, T')
            mask = lengths_to_mask(lens, keys.size(1))  # (B, T')
            previous, center, attns = state[5], state[6], []
            for u in range(out.size(1)):
                step_mask = mask
                if self.attention.window is not None:  # as step_features centres it, unless given
                    center = centers[:, u] if centers is not None else self.next_center(center, previous, lens)  # (B,)
                    step_mask = mask & self.attention.window_mask(center.unsqueeze(1), keys.size(1)).squeeze(1)  # (B, T')
                previous = self.attention.normalise(content[:, u] + self.attention.location_scores(previous),
                                                    step_mask)
                attns.append(previous)  # (B, T')
            attn = torch.stack(attns, dim=1)  # U x (B, T') -> (B, U, T')
            context = torch.bmm(attn.to(values.dtype), values)  # (B, U, T') x (B, T', A) -> (B, U, A)
        return torch.cat([out, context], dim=2), attn  # (B, U, Hs) + (B, U, A) -> (B, U, Hs + A)

    def char_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Output features (..., Hs + A) -> unnormalised logits (..., V)."""
        return self.char_out(torch.tanh(self.char_proj(self.dropout(out))))


class LAS(nn.Module):
    """Listener + Speller (+ CTC head); see the module docstring for the interface."""

    family = "las"
    has_attention = True  # the loop runs teacher forcing and guided attention for it

    def __init__(self, n_mels: int, vocab_size: int, cfg: LASConfig | None = None):
        super().__init__()
        cfg = cfg or LASConfig()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.listener = Listener(
            n_mels, cfg.conv_channels, cfg.conv_stride, cfg.listener_hidden, cfg.listener_layers,
            cfg.locked_dropout, cfg.ctc_layer if cfg.ctc_head else 0,
        )
        self.speller = Speller(
            vocab_size, cfg.embedding_dim, cfg.speller_hidden, cfg.attention_dim, self.listener.output_dim,
            cfg.speller_dropout, cfg.tie_weights, cfg.input_feeding, cfg.location_kernel, cfg.location_channels,
            (cfg.window_behind, cfg.window_ahead), cfg.window_advance,
        )
        self.ctc = nn.Linear(2 * cfg.listener_hidden, vocab_size) if cfg.ctc_head else None

    def output_lengths(self, feature_lens: torch.Tensor) -> torch.Tensor:
        """Listener output lengths T' (B,) for input lengths (B,)."""
        return listener_output_lengths(feature_lens, self.cfg.conv_stride, self.cfg.listener_layers)

    def encode(self, features: torch.Tensor, feature_lens: torch.Tensor) -> EncoderOutput:
        """features (B, T, D), feature_lens (B,) -> EncoderOutput with memory = (keys, values) (B, T', A)."""
        out, lens, ctc_x, ctc_lens = self.listener(features, feature_lens)
        keys, values = self.speller.attention.project(out)
        ctc_log_probs = None
        if self.ctc is not None:
            ctc_log_probs = F.log_softmax(self.ctc(ctc_x).float(), dim=-1)  # (B, T'', 2H) -> (B, T'', V)
        return EncoderOutput((keys, values), lens, ctc_log_probs, ctc_lens if self.ctc is not None else None)

    def init_state(self, encoded: EncoderOutput) -> State:
        keys = encoded.memory[0]
        return self.speller.init_state(keys.size(0), keys)

    def step(self, tokens: torch.Tensor, state: State, encoded: EncoderOutput
             ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens (B,) long -> logits (B, V), new state, attn (B, T')."""
        keys, values = encoded.memory
        out, state, attn = self.speller.step_features(tokens, state, keys, values, encoded.lens)
        return self.speller.char_logits(out), state, attn

    @staticmethod
    def reorder_state(state: State, index: torch.Tensor) -> State:
        """index_select every state tensor on dim 0 (beam search bookkeeping)."""
        return tuple(t.index_select(0, index) for t in state)

    def teacher_forced(self, encoded: EncoderOutput, tokens_in: torch.Tensor, teacher_forcing_rate: float = 1.0,
                       centers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The speller over a whole target.

        tokens_in (B, U) = [SOS, c1, ..., cn] (padded). At each step u > 0 each
        utterance feeds the ground truth tokens_in[:, u] with probability
        ``teacher_forcing_rate``, else its own previous argmax prediction.
        ``centers`` (B, U): windowed attention's centre for each step (``window_centers``).
        Returns logits (B, U, V) and attn (B, U, T').
        """
        if not self.cfg.input_feeding:
            return self._teacher_forced_at_once(encoded, tokens_in, teacher_forcing_rate, centers)
        keys, values = encoded.memory
        state = self.init_state(encoded)
        steps = tokens_in.size(1)
        sample = teacher_forcing_rate < 1.0 and self.training
        embedded_outs, attns, logits = [], [], []
        tokens = tokens_in[:, 0]
        for u in range(steps):
            if u > 0:
                tokens = tokens_in[:, u]
                if sample:
                    use_truth = torch.rand(tokens.shape, device=tokens.device) < teacher_forcing_rate
                    tokens = torch.where(use_truth, tokens, logits[-1].detach().argmax(dim=-1))
            center = None if centers is None else centers[:, u]
            out, state, attn = self.speller.step_features(tokens, state, keys, values, encoded.lens, center)
            attns.append(attn)
            if sample:  # the next input may be this prediction
                logits.append(self.speller.char_logits(out))
            else:
                embedded_outs.append(out)
        if sample:
            all_logits = torch.stack(logits, dim=1)  # U x (B, V) -> (B, U, V)
        else:  # same network, applied once to every step: (B, U, Hs + A) -> (B, U, V)
            all_logits = self.speller.char_logits(torch.stack(embedded_outs, dim=1))
        return all_logits, torch.stack(attns, dim=1)  # attn: U x (B, T') -> (B, U, T')

    def _teacher_forced_at_once(self, encoded: EncoderOutput, tokens_in: torch.Tensor, rate: float,
                                centers: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``teacher_forced`` without input feeding: every position in parallel. Below rate 1 the
        predictions come from a first, gradient-free pass over the true prefix (parallel scheduled
        sampling, Duckworth et al., 2019): each input after SOS is, with probability 1 - rate, what
        the model predicted at that position given the truth before it."""
        keys, values = encoded.memory
        if rate < 1.0 and self.training:
            with torch.no_grad():
                first, _ = self.speller.all_features(tokens_in, keys, values, encoded.lens, centers)
                predicted = self.speller.char_logits(first).argmax(dim=-1)  # (B, U, V) -> (B, U): guess of u + 1
            use_truth = torch.rand(tokens_in.shape, device=tokens_in.device) < rate  # (B, U)
            use_truth[:, 0] = True  # SOS
            shifted = torch.cat([tokens_in[:, :1], predicted[:, :-1]], dim=1)  # (B, U): the guess for position u
            tokens_in = torch.where(use_truth, tokens_in, shifted)
        out, attn = self.speller.all_features(tokens_in, keys, values, encoded.lens, centers)
        return self.speller.char_logits(out), attn  # (B, U, Hs + A) -> (B, U, V)

    @staticmethod
    def loss_options(training_cfg) -> dict:
        """The settings of ``training:`` that this objective reads (the hooks add the rest)."""
        return {"label_smoothing": training_cfg.label_smoothing, "ctc_weight": training_cfg.ctc_weight,
                "guided_sigma": training_cfg.guided_attention_sigma,
                "guided_target": training_cfg.guided_attention_target}

    def char_occupancy(self, encoded: EncoderOutput, tokens: torch.Tensor, token_lens: torch.Tensor) -> torch.Tensor:
        """Where the CTC head aligns each character, per listener frame: (B, n, T') with n = U - 2.

        Row c is the CTC posterior of character c over the head's frames (src/models/alignment.py),
        each run of 2 ** (listener_layers - ctc_layer) frames summed into the listener frame above it:
        it sums to 1, or to 0 where the utterance has no alignment or no character c."""
        chars, n_chars = ctc_targets(tokens, token_lens)  # (B, U) -> (B, U-2), (B,)
        occupancy = ctc_occupancy(encoded.ctc_log_probs, encoded.ctc_lens, chars, n_chars)  # (B, U-2, T'')
        frames = encoded.memory[0].size(1)
        return pool_frames(occupancy, 2 ** (self.cfg.listener_layers - self.cfg.ctc_layer), frames)  # (B, U-2, T')

    @staticmethod
    def window_centers(occupancy: torch.Tensor | None, token_lens: torch.Tensor, enc_lens: torch.Tensor,
                       steps: int) -> torch.Tensor:
        """Teacher-forced windowed attention: each step's window centre (B, U), U = ``steps``.

        Step u's window is centred where character u - 1 is, as decoding centres it where step u - 1
        looked: frame 0 for the first step, then the mean frame of each character's occupancy
        (B, n, T') (``char_occupancy``); without one (no CTC head, no alignment), the frame a
        uniform pace puts it on."""
        batch = token_lens.size(0)
        n_chars = (token_lens - 2).clamp(min=1).float().unsqueeze(1)  # (B, 1)
        index = torch.arange(steps - 1, device=enc_lens.device, dtype=torch.float32).unsqueeze(0)  # (1, U-1)
        pace = ((index + 0.5) / n_chars).clamp(max=1.0) * enc_lens.float().unsqueeze(1)  # (B, U-1)
        pace = torch.minimum(pace, (enc_lens - 1).float().unsqueeze(1))
        if occupancy is not None:
            rows = occupancy.new_zeros(batch, steps - 1, occupancy.size(2))  # (B, U-1, T')
            rows[:, : occupancy.size(1)] = occupancy
            frames = torch.arange(rows.size(2), device=rows.device, dtype=torch.float32)
            mean = (rows * frames).sum(dim=2)  # (B, U-1, T') -> (B, U-1)
            pace = torch.where(rows.sum(dim=2) > 0.5, mean, pace)
        return torch.cat([pace.new_zeros(batch, 1), pace], dim=1)  # (B, 1) + (B, U-1) -> (B, U)

    def attention_targets(self, occupancy: torch.Tensor, steps: int, centers: torch.Tensor | None) -> torch.Tensor:
        """Where each output step should look: (B, U, T') with U = ``steps``. Step u < n (it predicts
        character u) gets that character's occupancy (B, n, T'), cut to its attention window and
        renormalised when windowed (``centers`` (B, U)); the <eos> step and steps whose character has
        no mass in the window get none (a zero row)."""
        target = occupancy.new_zeros(occupancy.size(0), steps, occupancy.size(2))  # (B, U, T')
        target[:, : occupancy.size(1)] = occupancy
        if centers is not None:
            target = target * self.speller.attention.window_mask(centers, target.size(2))
            mass = target.sum(dim=2, keepdim=True)  # (B, U, 1)
            target = torch.where(mass > 0.5, target / mass.clamp(min=1e-12), torch.zeros_like(target))
        return target

    def forward(
        self,
        features: torch.Tensor,
        feature_lens: torch.Tensor,
        tokens: torch.Tensor,
        token_lens: torch.Tensor,
        *,
        teacher_forcing_rate: float = 1.0,
        label_smoothing: float = 0.0,
        ctc_weight: float = 0.0,
        guided_attention: float = 0.0,
        guided_sigma: float = 0.3,
        guided_target: str = "diagonal",
        ctc_only: bool = False,
    ) -> LossOutput:
        """The objective: (1 - w) * attention CE (label smoothed, PAD ignored) + w * CTC,
        plus ``guided_attention`` * the guided-attention loss when that weight is above 0:
        ``guided_target`` "ctc" (with a CTC head), the KL divergence from the CTC head's alignment
        (``attention_targets``); "diagonal", the attention mass outside a band of width
        ``guided_sigma`` around the diagonal. Windowed attention (model.las.window_*) centres each
        step's window on the CTC head's position of the character before (``window_centers``).

        tokens (B, U) = [SOS, c1..cn, EOS, PAD..], token_lens (B,) counting SOS and EOS.
        Parts: att, ctc, ga. A CTC weight of 0 still runs the head (DDP needs every
        parameter in the graph). ``ctc_only`` (training.ctc_warmup_steps): the CTC loss alone, the
        listener run up to the CTC head's layer and the speller skipped.
        """
        if ctc_only and self.ctc is not None:
            _, _, ctc_x, ctc_lens = self.listener(features, feature_lens, upto_ctc=True)
            ctc_log_probs = F.log_softmax(self.ctc(ctc_x).float(), dim=-1)  # (B, T'', 2H) -> (B, T'', V)
            ctc = ctc_loss(EncoderOutput((), ctc_lens, ctc_log_probs, ctc_lens), tokens, token_lens)
            return LossOutput(in_every_gradient(ctc, self), {"att": 0.0, "ctc": float(ctc.detach()), "ga": 0.0})
        tokens_in, targets = tokens[:, :-1], tokens[:, 1:]  # (B, U) -> (B, U-1) each: [SOS, c..] / [c.., EOS]
        encoded = self.encode(features, feature_lens)
        windowed = self.speller.attention.window is not None
        guided_by_ctc = guided_attention > 0.0 and guided_target == "ctc"
        occupancy = None
        if (windowed or guided_by_ctc) and encoded.ctc_log_probs is not None:
            occupancy = self.char_occupancy(encoded, tokens, token_lens)  # (B, U-2, T')
        centers = self.window_centers(occupancy, token_lens, encoded.lens, tokens_in.size(1)) if windowed else None
        logits, attn = self.teacher_forced(encoded, tokens_in, teacher_forcing_rate, centers)
        att = attention_cross_entropy(logits, targets, label_smoothing)
        loss = att
        parts = {"att": float(att.detach()), "ctc": 0.0, "ga": 0.0}
        if encoded.ctc_log_probs is not None:
            ctc = ctc_loss(encoded, tokens, token_lens)
            loss = (1.0 - ctc_weight) * att + ctc_weight * ctc
            parts["ctc"] = float(ctc.detach())
        if guided_attention > 0.0:
            if guided_by_ctc and occupancy is not None:
                ga = attention_target_loss(attn, self.attention_targets(occupancy, attn.size(1), centers))
            else:
                ga = guided_attention_loss(attn, token_lens - 1, encoded.lens, sigma=guided_sigma)
            loss = loss + guided_attention * ga
            parts["ga"] = float(ga.detach())
        return LossOutput(loss, parts, encoded, attn)


register_family(Family("las", LASConfig, lambda cfg, n_mels, vocab_size: LAS(n_mels, vocab_size, cfg)))


__all__ = [
    "Attention", "LAS", "LASConfig", "Listener", "LockedDropout", "Speller", "State", "listener_output_lengths", "pBLSTM",
]
