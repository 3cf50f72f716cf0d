"""A trained checkpoint from Python: for notebooks and other programs, no module layout to learn.

    from src.api import Recognizer

    asr = Recognizer.load("runs/las/best.pt", device="cpu", beam_size=5)   # decoding.* as keywords
    asr.transcribe("speech.wav")                   # an audio file -> str
    asr.transcribe(wave, sample_rate=16000)        # (N,) float samples -> str
    asr.transcribe_features(features)              # (T, D) log-mel frames, as the competition's .npy files
    asr.transcribe_batch([features1, features2])   # -> list[str], decoded together

Everything goes the way of ``test.py`` and ``transcribe.py``: the model and its front end come from the
checkpoint alone (src/checkpoint.py: load_for_decoding), audio through the project's one feature
definition (src/data/features.py), features through the normalisation the model was trained with,
and text out of the configured decoder (src/decoding). Audio without speech gives "" (as
transcribe.py does). Bad input is a one-line :class:`src.errors.UserError`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from src.checkpoint import FrontEnd, load_for_decoding
from src.config import load_decoding_config
from src.data.dataset import collate, normalize_utterance
from src.data.features import log_mel, speech_activity
from src.decoding import decode_batch
from src.decoding.lm import check_decoding_lm
from src.distributed import choose_device
from src.errors import UserError
from src.transcribe import read_wave


@dataclass
class Recognizer:
    """A model, how its features are made, and how its output becomes text."""

    model: torch.nn.Module
    front_end: FrontEnd
    decoding: Any  # src.config.DecodingConfig
    device: torch.device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto", config: str | Path | None = None,
             preset: str = "auto", **decoding: Any) -> "Recognizer":
        """The checkpoint's model on ``device`` (auto: cuda when available), decoding with the defaults
        of src/config.py, or of the YAML file ``config``, under the ``decoding:`` section of the family's
        preset as test.py applies it (``preset``: auto, none or a name), with any ``decoding.<name>``
        given as a keyword (``beam_size=5``, ``method="greedy"``, ``lm="lm/char6.npz"``, ``lm_weight=0.3`` ...)."""
        overrides = [f"decoding.{key}={json.dumps(value)}" for key, value in decoding.items()]
        device_ = choose_device(device, source="device")
        model, front_end = load_for_decoding(checkpoint, device_)
        cfg, _ = load_decoding_config(config, overrides, preset, getattr(model, "family", None))
        check_decoding_lm(cfg.decoding)
        return cls(model, front_end, cfg.decoding, device_)

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> str:
        """The transcript of an audio file, or of samples ``audio`` (N,) at ``sample_rate`` Hz."""
        if isinstance(audio, (str, Path)):
            wave, rate = read_wave(Path(audio))
        else:
            if sample_rate is None:
                raise UserError("transcribe: samples need their rate; call transcribe(wave, sample_rate=16000)")
            wave, rate = np.asarray(audio, dtype=np.float32), int(sample_rate)
            if wave.ndim != 1 or not np.isfinite(wave).all():
                raise UserError(f"transcribe: expected (N,) finite samples, got shape {wave.shape}")
        if not speech_activity(wave, rate).has_speech:
            return ""
        return self.transcribe_features(log_mel(wave, rate, self.front_end.n_mels), normalized=False)

    def transcribe_features(self, features: np.ndarray, normalized: bool = False) -> str:
        """The transcript of (T, D) log-mel frames (the competition's .npy files hold such arrays)."""
        return self.transcribe_batch([features], normalized=normalized)[0]

    def transcribe_batch(self, features: Sequence[np.ndarray], normalized: bool = False) -> list[str]:
        """Transcripts of several (T, D) arrays, decoded ``decoding.batch_size`` at a time, in order.
        ``normalized``: the arrays are already normalised as the model was trained (skip that step)."""
        items = []
        for i, x in enumerate(features):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != self.front_end.n_mels or x.shape[0] < 1:
                raise UserError(f"features[{i}]: expected (T, {self.front_end.n_mels}) frames, got {x.shape}")
            if not np.isfinite(x).all():
                raise UserError(f"features[{i}]: holds NaN or infinite values")
            if self.front_end.normalize == "utterance" and not normalized:
                x = normalize_utterance(x)
            items.append({"features": torch.from_numpy(x), "tokens": None, "name": str(i), "index": i})
        texts: list[str] = []
        for start in range(0, len(items), self.decoding.batch_size):
            chunk = [dict(item, index=k) for k, item in enumerate(items[start:start + self.decoding.batch_size])]
            texts += decode_batch(self.model, collate(chunk), self.decoding)
        return texts


__all__ = ["Recognizer"]
