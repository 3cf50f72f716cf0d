"""Checkpoints: atomic writes, one-line errors, the model rebuilt from the file alone.

A checkpoint is a dict saved with ``torch.save``:

    model         state_dict of the (unwrapped) model
    family        the model family (src/models/registry.py)
    model_config  dict of that family's config section: every size, so no config file is needed
    front_end     {"n_mels": D, "normalize": how features were normalised in training}
    n_mels        D again (checkpoints of every version have it)
    vocab         list[str], the output vocabulary (id -> token)
    config        the full resolved config (dict)
    optimizer, scheduler, scaler, train_state, rng, metrics   (training only)

Checkpoints written before families existed (no ``family``; a flat LAS
``model_config``; no ``front_end``) load as LAS with the normalisation of their
saved config. A checkpoint with a NaN or infinite weight is never written, and
loading one is a one-line error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from src.atomic import atomic_write
from src.errors import UserError

REQUIRED_KEYS = ("model", "model_config", "n_mels", "vocab")


class FrontEnd(NamedTuple):
    """How features must look for a model: dimension D and the normalisation it was trained with."""

    n_mels: int
    normalize: str


def non_finite_tensor(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or None."""
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; refuse (UserError) model weights that are not finite,
    so a broken model never replaces a good file."""
    path = Path(path)
    bad = non_finite_tensor(payload.get("model", {}))
    if bad is not None:
        raise UserError(f"{path}: not written: weight {bad} is NaN or infinite (training diverged); the previous "
                        "checkpoint is kept: lower training.lr or raise training.warmup_steps and resume")
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (UserError on a missing or corrupt file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train first (python train.py) or pass the right path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated, not a torch file, unpickling error ...
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: not a readable checkpoint ({first}); delete it or use another one") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise UserError(f"{path}: not a model checkpoint of this project (missing {', '.join(missing)})")
    ckpt["_path"] = str(path)
    return ckpt


def _source(ckpt: dict[str, Any]) -> str:
    return ckpt.get("_path", "checkpoint")


def model_spec(ckpt: dict[str, Any], path: str | Path | None = None) -> tuple[str, Any]:
    """(family name, family config dataclass) of a checkpoint, old flat LAS checkpoints included."""
    from src.models.registry import family_config_from_dict

    from src.models.registry import family_names

    source = str(path) if path is not None else _source(ckpt)
    values = dict(ckpt["model_config"])
    family = ckpt.get("family") or values.pop("family", "las")  # before families: flat LAS keys + family
    if family not in family_names():
        raise UserError(f"{source}: written by model family '{family}', which this code does not have "
                        f"({', '.join(family_names())}); use a checkpoint of one of those families")
    return family, family_config_from_dict(family, values, source)


def front_end(ckpt: dict[str, Any]) -> FrontEnd:
    """THE place that reads how the model's features were made (n_mels, normalisation)."""
    saved = ckpt.get("front_end")
    if saved:
        return FrontEnd(int(saved["n_mels"]), str(saved["normalize"]))
    data = (ckpt.get("config") or {}).get("data", {})
    return FrontEnd(int(ckpt["n_mels"]), str(data.get("normalize", "utterance")))


def check_vocabulary(ckpt: dict[str, Any]) -> None:
    """UserError (one line) when the checkpoint's vocabulary is not this project's."""
    from src.vocab import VOCAB

    vocab = list(ckpt["vocab"])
    if vocab != VOCAB:
        raise UserError(
            f"{_source(ckpt)}: the checkpoint's vocabulary ({len(vocab)} tokens) is not this project's "
            f"({len(VOCAB)} tokens, src/vocab.py); use a checkpoint trained by this project"
        )


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The model described by ``ckpt`` (family and sizes from the file), weights loaded, in eval mode."""
    from src.models.registry import get_family

    family, family_cfg = model_spec(ckpt)
    bad = non_finite_tensor(ckpt["model"])
    if bad is not None:
        raise UserError(f"{_source(ckpt)}: weight {bad} is NaN or infinite, the model is broken; "
                        "use another checkpoint (e.g. an earlier last.pt or best.pt) or retrain")
    model = get_family(family).build(family_cfg, front_end(ckpt).n_mels, len(ckpt["vocab"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{_source(ckpt)}: weights do not match its model_config ({first})") from None
    return model.to(device).eval()
