"""Files written by earlier versions of this project, read as today's: the one place for old formats.

    RENAMED                  config keys that were renamed -> what they are called now
    upgrade_checkpoint(ckpt) an old checkpoint dict -> today's layout (in place; returns it)

Everything else in the project reads only the current formats.
"""
from __future__ import annotations

from typing import Any

# The LAS settings lived directly under model: before there were families (model.las.*).
_FLAT_LAS_KEYS = ("conv_channels", "conv_stride", "listener_hidden", "listener_layers", "locked_dropout",
                  "attention_dim", "embedding_dim", "speller_hidden", "input_feeding", "speller_dropout",
                  "tie_weights", "ctc_head", "ctc_layer")

RENAMED = {f"model.{name}": f"model.las.{name}" for name in _FLAT_LAS_KEYS} | {
    "training.specaugment.start_epoch": "training.specaugment.start (a share of training progress, 0-1: "
                                        "epochs done / epochs, or minutes / max_minutes with a time budget)",
    "decoding.max_length_ratio": "decoding.max_chars_per_frame (per 10 ms input frame: the old ratio "
                                 "divided by the model's time reduction, e.g. 2.0 / 8 = 0.25)",
}

# Settings added after checkpoints of a family were first written -> the value such a checkpoint implies.
# Before input_feeding was a setting, the speller fed the context back; before the window settings,
# the attention saw the whole utterance.
OLDER_DEFAULTS = {"las": {"input_feeding": True, "window_behind": 0, "window_ahead": 0}}


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint dict of any earlier version to today's keys (in place).

    - no ``family``: a LAS checkpoint whose ``model_config`` holds the flat LAS keys (and maybe ``family``);
    - a family setting missing from ``model_config``: its value in checkpoints of that time (OLDER_DEFAULTS);
    - no ``front_end``: ``n_mels`` and the normalisation of its saved config;
    - the numpy RNG state as numpy's tuple (an ndarray): plain values and a tensor;
    - a ``train_state`` of the LAS-only loop: its teacher forcing moves into the attention hook's state.
    """
    values = dict(ckpt.get("model_config") or {})
    family = ckpt.get("family") or values.pop("family", "las")
    ckpt["family"] = family
    ckpt["model_config"] = {**OLDER_DEFAULTS.get(family, {}), **values}
    if not ckpt.get("front_end") and "n_mels" in ckpt:
        data = (ckpt.get("config") or {}).get("data", {})
        ckpt["front_end"] = {"n_mels": int(ckpt["n_mels"]), "normalize": str(data.get("normalize", "utterance"))}
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):  # numpy's own tuple, an ndarray inside
        _, keys, pos, has_gauss, cached = rng["numpy"]
        import numpy as np
        import torch

        rng["numpy"] = {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    saved = ckpt.get("train_state")
    if isinstance(saved, dict) and "teacher_forcing" in saved:
        saved = dict(saved)
        saved["hooks"] = {"attention": {"teacher_forcing": saved.pop("teacher_forcing"),
                                        "aligned": bool(saved.pop("aligned", False))}}
        ckpt["train_state"] = saved
    return ckpt
