"""Checkpoints: atomic writes, one-line errors, the model rebuilt from the file alone.

A checkpoint is a dict saved with ``torch.save``:

    model         state_dict of the (unwrapped) model
    model_config  dict of ModelConfig: every size, so no config file is needed
    n_mels        input feature dimension D
    vocab         list[str], the output vocabulary (id -> token)
    config        the full resolved config (dict)
    optimizer, scheduler, scaler, train_state, rng, metrics   (training only)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.config import model_config_from_dict
from src.errors import UserError

REQUIRED_KEYS = ("model", "model_config", "n_mels", "vocab")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: ``path.tmp`` in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The model described by ``ckpt`` (sizes from ``model_config``), weights loaded, in eval mode."""
    from src.models import build_model  # models import config; keep this module light

    model_cfg = model_config_from_dict(ckpt["model_config"])
    model = build_model(model_cfg, int(ckpt["n_mels"]), len(ckpt["vocab"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"checkpoint: weights do not match its model_config ({first})") from None
    return model.to(device).eval()
