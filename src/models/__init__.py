"""Model families. ``build_model`` is the one place that turns a ModelConfig into a model."""
from __future__ import annotations

from torch import nn

from src.config import ModelConfig
from src.errors import UserError
from src.models.las import LAS, Encoded, listener_output_lengths


def build_model(model_cfg: ModelConfig, n_mels: int, vocab_size: int) -> nn.Module:
    """A freshly initialised model of family ``model_cfg.family`` (only ``las`` for now)."""
    if model_cfg.family != "las":
        raise UserError(f"config: unknown model.family '{model_cfg.family}'; use las")
    if model_cfg.ctc_head and not 1 <= model_cfg.ctc_layer <= model_cfg.listener_layers:
        raise UserError(
            f"config: 'model.ctc_layer' must be in 1..{model_cfg.listener_layers} (model.listener_layers); "
            f"got {model_cfg.ctc_layer}"
        )
    return LAS(
        n_mels,
        vocab_size,
        conv_channels=model_cfg.conv_channels,
        conv_stride=model_cfg.conv_stride,
        listener_hidden=model_cfg.listener_hidden,
        listener_layers=model_cfg.listener_layers,
        locked_dropout=model_cfg.locked_dropout,
        attention_dim=model_cfg.attention_dim,
        embedding_dim=model_cfg.embedding_dim,
        speller_hidden=model_cfg.speller_hidden,
        speller_dropout=model_cfg.speller_dropout,
        tie_weights=model_cfg.tie_weights,
        ctc_head=model_cfg.ctc_head,
        ctc_layer=model_cfg.ctc_layer,
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (a tied matrix counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["LAS", "Encoded", "build_model", "count_parameters", "listener_output_lengths"]
