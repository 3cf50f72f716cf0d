"""Decoders over the model's step interface: greedy, beam search, CTC prefix scores.

    texts = decode_batch(model, batch, cfg.decoding)      # list[str], one per utterance

``decode_batch`` encodes once, derives each utterance's length limit from its
listener frames (``max_output_lengths``) and runs greedy or beam search as
``decoding.method`` says. It puts the model in eval mode for the call and
restores the previous mode afterwards, so training code can call it mid-epoch.
"""
from __future__ import annotations

import torch

from src.decoding.beam import Hypothesis, beam_search
from src.decoding.greedy import greedy_decode, max_output_lengths, next_token_log_probs, score_sequences
from src.vocab import decode as ids_to_text

__all__ = [
    "Hypothesis",
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


def decode_encoded(model, encoded, decoding_cfg) -> list[list[int]]:
    """Token ids (no <sos>/<eos>) for an already encoded batch, as ``decoding_cfg`` says."""
    max_lens = max_output_lengths(encoded.lens, decoding_cfg.max_length_ratio, decoding_cfg.max_length_min)
    if decoding_cfg.method == "greedy" or (decoding_cfg.beam_size == 1 and decoding_cfg.ctc_weight == 0.0):
        return greedy_decode(model, encoded, max_lens)
    return beam_search(
        model,
        encoded,
        max_lens,
        beam_size=decoding_cfg.beam_size,
        length_penalty=decoding_cfg.length_penalty,
        ctc_weight=decoding_cfg.ctc_weight,
    )


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
        return [ids_to_text(ids) for ids in decode_encoded(model, encoded, decoding_cfg)]
    finally:
        model.train(was_training)
