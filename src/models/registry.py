"""The family registry: ``model.family`` names an entry here, nothing else picks a model.

    register_family(Family("las", LASConfig, LAS.from_config))
    model = get_family("las").build(family_cfg, n_mels, vocab_size)

A family brings its config section (a dataclass: ``model.<family>`` in
config.yaml when it is one of the built-in sections of ``ModelConfig``, its
defaults otherwise) and a builder. The checkpoint stores the family's name and
that section, so ``build_model_from_checkpoint`` needs nothing else
(whisper's ``ModelDimensions``). Built-in families register themselves when
their module is imported; this module imports no torch, so the config can
validate ``model.family`` without loading a model.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from src.errors import UserError

BUILTIN_MODULES = {"las": "src.models.las", "ds2": "src.models.ds2", "transformer": "src.models.transformer"}  # family -> module that registers it on import


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type  # dataclass of the family's settings (its section of model:)
    build: Callable[[Any, int, int], Any]  # (family config, n_mels, vocab size) -> nn.Module
    # settings added after checkpoints of the family were first written -> the value such a checkpoint implies
    older_defaults: dict = dataclasses.field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    if not dataclasses.is_dataclass(family.config_cls):
        raise TypeError(f"register_family: {family.name}: config_cls must be a dataclass")
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    return sorted(set(BUILTIN_MODULES) | set(_FAMILIES))


def get_family(name: str) -> Family:
    """The registered family ``name`` (UserError naming the valid ones otherwise)."""
    if name not in _FAMILIES and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _FAMILIES:
        raise UserError(f"config: unknown model.family '{name}'; use one of {', '.join(family_names())}")
    return _FAMILIES[name]


def family_config(model_cfg: Any) -> Any:
    """The config section of ``model_cfg.family``: ``model_cfg.<family>`` when the config has
    that section, else the family's defaults (a family registered outside src/config.py)."""
    section = getattr(model_cfg, model_cfg.family, None)
    if section is not None and dataclasses.is_dataclass(section):
        return section
    return get_family(model_cfg.family).config_cls()


def family_config_from_dict(name: str, values: dict, source: str) -> Any:
    """Rebuild a family's config from a checkpoint's dict (unknown keys rejected)."""
    from src.config import build_section

    family = get_family(name)
    return build_section(family.config_cls, {**family.older_defaults, **values}, f"model.{name}.", source)
