"""Shared test set-up: one thread per test process, repository root on sys.path."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the config and data tests do not need torch
    pass
