"""Measures of waves shared by the tests of src/corpus/channels.py and src/corpus/degrade.py, written
from their definitions (not from the code under test)."""
import math

import numpy as np

SR = 16000


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10 of the clean wave's mean power over that of what was added to it."""
    clean = clean.astype(np.float64)
    return 10 * math.log10(np.mean(clean ** 2) / np.mean((noisy.astype(np.float64) - clean) ** 2))


def band_power(x: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    """Energy of ``x`` between ``lo`` and ``hi`` Hz, from its spectrum."""
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1.0 / sr)
    return float(spectrum[(f >= lo) & (f < hi)].sum())


def tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    """A sine of amplitude 0.5 at ``hz``, float32 at :data:`SR`."""
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)
