"""The family registry: ``model.family`` names an entry here, nothing else picks a model.

    register_family(Family("las", LASConfig, LAS.from_config))     # at the bottom of a family's file
    families()                                                     # name -> Family, built-ins loaded
    model = get_family("las").build(family_cfg, n_mels, vocab_size)

A family brings its config section (a dataclass, ``model.<name>`` in
config.yaml) and a builder. The config's ``model:`` section is assembled from
this registry (src/config.py), so a family registered from outside the
package (tests/toy_family.py) is configured from YAML, saved in checkpoints
and rebuilt from them like a built-in one. The checkpoint stores the family's
name and its section, so ``src.checkpoint.model_from_checkpoint`` needs
nothing else (whisper's ``ModelDimensions``).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from src.errors import UserError

# The built-in families: each module registers itself when imported.
BUILTIN_MODULES = ("src.models.las", "src.models.ds2", "src.models.transformer")


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type  # dataclass of the family's settings (its section of model:)
    build: Callable[[Any, int, int], Any]  # (family config, n_mels, vocab size) -> nn.Module


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; returns it."""
    if not dataclasses.is_dataclass(family.config_cls):
        raise TypeError(f"register_family: {family.name}: config_cls must be a dataclass")
    if not family.name.isidentifier() or family.name == "family":
        raise TypeError(f"register_family: {family.name!r} cannot name a config section")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name (the built-in ones imported first)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_FAMILIES.items()))


def family_names() -> list[str]:
    return list(families())


def get_family(name: str) -> Family:
    """The registered family ``name`` (UserError naming the valid ones otherwise)."""
    known = families()
    if name not in known:
        raise UserError(f"config: unknown model.family '{name}'; use one of {', '.join(known)}")
    return known[name]


def family_config(model_cfg: Any) -> Any:
    """The config section of ``model_cfg.family`` (``model_cfg.<family>``)."""
    return getattr(model_cfg, model_cfg.family)
