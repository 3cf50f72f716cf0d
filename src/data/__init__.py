"""Data layer: layout, features, datasets, batching and validation.

Submodules import lazily (``from src.data import SpeechDataset`` imports torch,
``from src.data import check_data`` does not).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PARTITIONS": "layout",
    "Utterance": "layout",
    "list_utterances": "layout",
    "resolve_data_root": "layout",
    "SpeechDataset": "dataset",
    "Batch": "dataset",
    "collate": "dataset",
    "LengthBucketSampler": "dataset",
    "make_loader": "dataset",
    "make_decoding_loader": "dataset",
    "check_data": "check",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
