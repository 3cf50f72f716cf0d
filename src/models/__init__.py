"""Model families and the one way to build them.

    model = build_model(cfg.model, n_mels, vocab_size)        # from the config
    model = model_from_checkpoint(ckpt)                       # src/checkpoint.py: from the file alone

``model.family`` picks an entry of the registry (src/models/registry.py); the
family's section of the config (``model.las`` ...) is passed to it whole.
What a family must offer the training loop and the decoders is written down
in src/models/interface.py. This package imports torch only when a model is
built, so reading the config stays fast.
"""
from __future__ import annotations

from typing import Any


def build_model(model_cfg: Any, n_mels: int, vocab_size: int):
    """A freshly initialised model of family ``model_cfg.family`` with its config section."""
    from src.models.registry import family_config, get_family

    return get_family(model_cfg.family).build(family_config(model_cfg), n_mels, vocab_size)


def count_parameters(model) -> int:
    """Trainable parameters (a tied matrix counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["build_model", "count_parameters"]
