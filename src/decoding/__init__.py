"""Decoders, chosen by what the model offers (src/models/interface.py), not by its class.

    texts = decode_batch(model, batch, cfg.decoding)      # list[str], one per utterance

``decode_batch`` encodes once and hands the encoder output to
``decode_encoded``, which dispatches on capability:

    step decoder (LAS, ...)   greedy, or batched beam search fused with a list of
                              (weight, scorer): the CTC prefix scorer when
                              decoding.ctc_weight > 0 (ESPnet's joint decoding), the
                              character LM when decoding.lm_weight > 0 (shallow fusion)
    CTC only                  CTC best path (greedy), or CTC prefix beam search in numba
                              with the LM fused in (decoding.lm_weight, decoding.length_bonus)

Every decoder bounds the output by the one length policy
(:func:`max_output_lengths`, per input frame). With ``decoding.segment_seconds``
a step decoder meets long utterances in pieces cut at the CTC head's word
boundaries (src/decoding/segments.py). ``decode_batch`` puts the model
in eval mode for the call and restores the previous mode afterwards, so
training code can call it mid-epoch.
"""
from __future__ import annotations

import warnings

import torch

from src.decoding import ctc_decode
from src.decoding.beam import Hypothesis, beam_search, length_normalised
from src.decoding.ctc_prefix import CTCPrefixScorer
from src.decoding.greedy import greedy_decode, max_output_lengths, next_token_log_probs, score_sequences
from src.decoding.lm import CharLMScorer, load_lm, load_packed_lm
from src.decoding.segments import decode_in_pieces
from src.errors import UserError
from src.models.interface import EncoderOutput, is_step_decoder
from src.vocab import EOS, VOCAB
from src.vocab import decode as ids_to_text

__all__ = [
    "Hypothesis",
    "LengthBonus",
    "beam_search",
    "decode_batch",
    "decode_encoded",
    "greedy_decode",
    "max_output_lengths",
    "next_token_log_probs",
    "score_sequences",
]


def _device_of(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def ctc_prefix_scorer(encoded: EncoderOutput) -> CTCPrefixScorer:
    """The CTC prefix scorer over ``encoded`` (its rows already repeated K times by the search)."""
    return CTCPrefixScorer(encoded.ctc_log_probs, encoded.ctc_lens if encoded.ctc_lens is not None else encoded.lens)


def scorers_for(encoded: EncoderOutput, decoding_cfg) -> tuple[float, list]:
    """(weight of the model scorer, [(weight, scorer factory), ...] fused after it) as ``decoding_cfg`` asks:
    the model weighs 1 - ctc_weight, then CTC (ctc_weight), the LM (lm_weight), the length bonus."""
    scorers = []
    ctc_weight = decoding_cfg.ctc_weight
    if ctc_weight > 0.0 and encoded.ctc_log_probs is None:
        _warn_once("decoding.ctc_weight > 0 but this model has no CTC head: decoding with attention alone "
                   "(set decoding.ctc_weight=0 to silence this)")
        ctc_weight = 0.0
    if ctc_weight > 0.0:
        scorers.append((ctc_weight, ctc_prefix_scorer))
    if decoding_cfg.lm_weight > 0.0:
        lm = load_lm(decoding_cfg.lm)
        scorers.append((decoding_cfg.lm_weight, lambda enc: CharLMScorer(lm, enc.lens.shape[0])))
    if decoding_cfg.length_bonus != 0.0:
        scorers.append((decoding_cfg.length_bonus, LengthBonus))
    return 1.0 - ctc_weight, scorers


class LengthBonus:
    """A scorer worth 1 for every character and 0 for <eos>: weighted by decoding.length_bonus,
    it is the beta of ``score + alpha * log p_LM + beta * length``."""

    def __init__(self, encoded: EncoderOutput):
        self.rows = encoded.lens.shape[0]
        self.device = encoded.lens.device

    def score(self, prefix_len: int) -> torch.Tensor:
        bonus = torch.ones(self.rows, len(VOCAB), device=self.device)  # (N, V)
        bonus[:, EOS] = 0.0
        return bonus

    def select(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        self.rows = index.numel()


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def decode_encoded(model, encoded: EncoderOutput, feature_lens: torch.Tensor, decoding_cfg) -> list[list[int]]:
    """Token ids (no <sos>/<eos>) for an already encoded batch, as ``decoding_cfg`` says.

    feature_lens (B,): input frames per utterance, for the length policy, which bounds the output of
    every decoder here, whatever the decoder did (the one place: :func:`max_output_lengths`).
    """
    def limits(frames: torch.Tensor) -> torch.Tensor:
        return max_output_lengths(frames, decoding_cfg.max_chars_per_frame, decoding_cfg.max_length_min)

    max_lens = limits(feature_lens)
    ids = None
    if is_step_decoder(model):  # long utterances in pieces cut at CTC word boundaries (decoding.segment_seconds)
        ids = decode_in_pieces(encoded, feature_lens, decoding_cfg.segment_seconds,
                               lambda pieces, frames: _decode(model, pieces, limits(frames), decoding_cfg))
    if ids is None:
        ids = _decode(model, encoded, max_lens, decoding_cfg)
    return [row[: int(limit)] for row, limit in zip(ids, max_lens.tolist())]


def _decode(model, encoded: EncoderOutput, max_lens: torch.Tensor, decoding_cfg) -> list[list[int]]:
    """The decoder the model's capabilities and ``decoding_cfg`` call for."""
    greedy = decoding_cfg.method == "greedy" or (decoding_cfg.beam_size == 1 and decoding_cfg.ctc_weight == 0.0
                                                  and decoding_cfg.lm_weight == 0.0 and decoding_cfg.length_bonus == 0.0)
    if is_step_decoder(model):
        if greedy:
            return greedy_decode(model, encoded, max_lens)
        attention_weight, scorers = scorers_for(encoded, decoding_cfg)
        return beam_search(model, encoded, max_lens, beam_size=decoding_cfg.beam_size,
                           scorers=scorers, attention_weight=attention_weight,
                           ranker=length_normalised(decoding_cfg.length_penalty))
    if encoded.ctc_log_probs is not None:
        log_probs, lens = encoded.ctc_log_probs, encoded.ctc_lens
        if greedy:
            return ctc_decode.ctc_greedy(log_probs, lens)
        fusion = {}
        if decoding_cfg.lm_weight > 0.0:
            fusion = {"lm": load_packed_lm(decoding_cfg.lm), "lm_weight": decoding_cfg.lm_weight}
        return ctc_decode.ctc_prefix_beam_search(log_probs, lens, beam_size=decoding_cfg.beam_size,
                                                 length_bonus=decoding_cfg.length_bonus, **fusion)
    raise UserError(f"model family '{getattr(model, 'family', type(model).__name__)}' offers neither a step "
                    "decoder nor CTC log-probs; it cannot be decoded")


@torch.no_grad()
def decode_batch(model, batch, decoding_cfg) -> list[str]:
    """Transcripts for a collated Batch (features (B, T, D), feature_lens (B,)), in batch order."""
    was_training = model.training
    model.eval()
    try:
        device = _device_of(model)
        features = batch.features.to(device)
        feature_lens = batch.feature_lens.to(device)
        encoded = model.encode(features, feature_lens)
        return [ids_to_text(ids) for ids in decode_encoded(model, encoded, feature_lens, decoding_cfg)]
    finally:
        model.train(was_training)


from src.decoding.dataset import decode_dataset, decoding_description  # noqa: E402 (it calls decode_batch)

__all__ += ["decode_dataset", "decoding_description"]
