"""What every model family offers the training loop and the decoders.

A family is a ``torch.nn.Module`` with, at least:

    encoded = model.encode(features (B, T, D), feature_lens (B,))     # EncoderOutput
    out = model(features, feature_lens, tokens (B, U), token_lens (B,), **options)   # LossOutput
    options = type(model).loss_options(training_cfg)                # what its objective reads

``forward`` IS the family's objective (as in icefall and nanoGPT): it returns
the loss to minimise and the named parts to log, so the training loop sums,
steps and logs without knowing what the parts mean, and DistributedDataParallel
sees one forward call. ``tokens`` are rows ``[<sos>, c1 .. cn, <eos>, <pad> ..]``
and ``token_lens`` counts the real tokens including ``<sos>``/``<eos>``.

Capabilities, on top of that (the decoders and the loop ask, they never check
a class):

    step decoder   init_state(encoded), step(tokens, state, encoded) ->
                   (logits (B, V), state, attention (B, T') or None),
                   reorder_state(state, index); greedy and beam search use these.
    CTC            ``encoded.ctc_log_probs`` (B, T'', V) is not None; CTC greedy
                   (and the CTC prefix scorer in a joint beam search) use it.
    attention      ``model.has_attention`` is True: the objective takes
                   ``teacher_forcing_rate`` and ``guided_attention`` and returns
                   attention weights, and the loop runs the attention hooks
                   (src/training/hooks.py) for it.
    CTC warm-up    the objective takes ``ctc_only`` and the model has a CTC head
                   (``model.ctc``): training.ctc_warmup_steps trains the encoder on
                   CTC alone first, the decoder skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

State = Any  # a step decoder's recurrent state: any structure its reorder_state understands


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) integer lengths -> (B, max_len) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class EncoderOutput(NamedTuple):
    """What an encoder hands the decoders.

    memory         what a step decoder attends to: a tuple of (B, T', *) tensors
                   (LAS: keys and values), empty for a CTC-only model
    lens           (B,) long, valid frames T' of ``memory``
    ctc_log_probs  (B, T'', V) log-softmax over the vocabulary (blank = <pad> = 0), or None
    ctc_lens       (B,) long, valid frames T'' of ``ctc_log_probs``, or None
    """

    memory: tuple[torch.Tensor, ...]
    lens: torch.Tensor
    ctc_log_probs: torch.Tensor | None = None
    ctc_lens: torch.Tensor | None = None

    def index_select(self, index: torch.Tensor) -> "EncoderOutput":
        """Rows ``index`` (B',) of every tensor, e.g. to repeat each utterance K times for a beam."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return EncoderOutput(tuple(m.index_select(0, index) for m in self.memory), pick(self.lens),
                             pick(self.ctc_log_probs), pick(self.ctc_lens))


@dataclass
class LossOutput:
    """What a family's objective returns.

    loss       the scalar to minimise
    parts      named float values to log (e.g. att, ctc, ga); summed per utterance by the loop
    encoded    the encoder output of the batch (dev scoring decodes from it without encoding again)
    attention  (B, U, T') attention weights of a family with attention, else None
    """

    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    encoded: EncoderOutput | None = None
    attention: torch.Tensor | None = None


@runtime_checkable
class StepDecoder(Protocol):
    """The capability greedy and beam search need (SpeechBrain's forward_step + permute_mem)."""

    def init_state(self, encoded: EncoderOutput) -> State: ...

    def step(self, tokens: torch.Tensor, state: State, encoded: EncoderOutput
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...

    def reorder_state(self, state: State, index: torch.Tensor) -> State: ...


def is_step_decoder(model: Any) -> bool:
    """True when ``model`` can be decoded step by step (greedy / beam search over its own outputs)."""
    return isinstance(model, StepDecoder)


def has_attention(model: Any) -> bool:
    """True when the loop should run the attention hooks (teacher forcing, guided attention)."""
    return bool(getattr(model, "has_attention", False))


def can_warm_up_on_ctc(model: Any) -> bool:
    """True when ``model``'s objective can run on CTC alone (``ctc_only``): it has a decoder to skip
    and a CTC head to train (training.ctc_warmup_steps)."""
    import inspect

    return "ctc_only" in inspect.signature(type(model).forward).parameters and getattr(model, "ctc", None) is not None
