"""Per-utterance normalisation never makes numpy warn, in the main process or in loader workers.

The reference is the textbook formula evaluated in exact-enough arithmetic
(Python floats via numpy float64 on values rescaled to about 1 first), so it
does not share the implementation's way of avoiding overflow.
"""
from __future__ import annotations

import warnings

import numpy as np

from src.config import DataConfig
from src.data.dataset import NORMALIZE_EPS, SpeechDataset, make_loader, normalize_utterance


def reference(x: np.ndarray) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) per column, computed on x / scale to stay far from overflow."""
    x = np.asarray(x, dtype=np.float64)
    scale = float(np.abs(x).max()) or 1.0
    y = x / scale
    mean = y.mean(axis=0)
    var = ((y - mean) ** 2).mean(axis=0)
    return (y - mean) / np.sqrt(var + NORMALIZE_EPS / scale**2)


def test_normalize_is_exact_and_silent_for_any_finite_features():
    rng = np.random.default_rng(0)
    for magnitude, dtype in [(20.0, np.float16), (6e4, np.float16), (1e4, np.float32), (1e30, np.float32),
                             (3e38, np.float32)]:
        x = (rng.uniform(-1, 1, size=(300, 28)) * magnitude).astype(dtype)
        x[:, 3] = x[0, 3]  # a constant bin
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any RuntimeWarning (overflow, invalid value) fails the test
            y = normalize_utterance(x)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.isfinite(y).all(), magnitude
        varying = [d for d in range(28) if d != 3]
        np.testing.assert_allclose(y[:, varying], reference(x)[:, varying], atol=2e-5, rtol=1e-5, err_msg=str(magnitude))
        assert np.all(y[:, 3] == 0)  # a constant bin becomes zeros


def test_loader_workers_raise_no_overflow_warning(tmp_path, capfd):
    """An unchecked tree (data.check=false) with absurd values: workers stay quiet, batches are normalised.

    The forked workers inherit the "error" filter, so a warning there fails the batch.
    """
    rng = np.random.default_rng(1)
    for folder in ("mfcc", "transcripts"):
        (tmp_path / "dev-clean" / folder).mkdir(parents=True)
    for i in range(4):
        x = rng.normal(size=(40 + i, 28)).astype(np.float32) * (1e30 if i % 2 else 1.0)
        np.save(tmp_path / "dev-clean" / "mfcc" / f"u{i}.npy", x)
        np.save(tmp_path / "dev-clean" / "transcripts" / f"u{i}.npy", np.array(["<sos>", "H", "I", "<eos>"]))
    ds = SpeechDataset(tmp_path, "dev-clean")
    cfg = DataConfig(num_workers=1, max_utterances_per_batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(2):  # workers are new processes every epoch
            for batch in make_loader(ds, cfg, shuffle=True, seed=0, epoch=epoch):
                for b, n in enumerate(batch.feature_lens.tolist()):
                    x = batch.features[b, :n].double()
                    assert float(x.std(0, unbiased=False).min()) > 0.999, batch.names[b]
    err = capfd.readouterr().err
    assert "RuntimeWarning" not in err and "overflow" not in err, err
