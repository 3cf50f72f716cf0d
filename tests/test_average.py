"""Checkpoint averaging (src/average.py) and the epoch snapshots training keeps for it."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.average import average_checkpoints, main, snapshots
from src.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from src.errors import UserError
from src.vocab import VOCAB

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, seed: int, **sizes) -> dict:
    """A tiny LAS with weights drawn from ``seed``, saved as a checkpoint of this project."""
    from test_model import tiny_las

    model = tiny_las(**sizes)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    payload = {"model": model.state_dict(), "family": "las", "model_config": dataclasses.asdict(model.cfg),
               "front_end": {"n_mels": 5, "normalize": "utterance"}, "n_mels": 5, "vocab": list(VOCAB),
               "optimizer": {"state": "not carried over"}}
    save_checkpoint(path, payload)
    return payload


def test_average_is_the_elementwise_mean(tmp_path):
    payloads = [_checkpoint(tmp_path / f"epoch_00{i}.pt", seed=i) for i in (1, 2, 3)]
    averaged = average_checkpoints([tmp_path / f"epoch_00{i}.pt" for i in (1, 2, 3)])
    assert "optimizer" not in averaged
    for name, value in averaged["model"].items():
        expected = torch.stack([p["model"][name] for p in payloads]).mean(dim=0)
        assert value.dtype == expected.dtype
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    # the file it writes rebuilds a model whose weights are those means
    main([str(tmp_path), "--last", "2"])
    model = model_from_checkpoint(load_checkpoint(tmp_path / "average.pt"))
    for name, value in model.state_dict().items():
        expected = (payloads[1]["model"][name] + payloads[2]["model"][name]) / 2
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)


def test_average_of_one_checkpoint_is_that_checkpoint(tmp_path):
    payload = _checkpoint(tmp_path / "a.pt", seed=7)
    averaged = average_checkpoints([tmp_path / "a.pt"])
    for name, value in payload["model"].items():
        assert torch.equal(averaged["model"][name], value), name


def test_checkpoints_of_different_models_are_refused(tmp_path):
    _checkpoint(tmp_path / "a.pt", seed=1)
    _checkpoint(tmp_path / "b.pt", seed=2, speller_hidden=10)
    with pytest.raises(UserError, match=r"b\.pt: its model sizes differ from .*a\.pt"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])


def test_command_line_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "src.average", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "training.keep_epochs" in proc.stderr and str(tmp_path) in proc.stderr


def test_training_keeps_the_newest_epoch_snapshots(tmp_path):
    from test_resume import make_corpus, tiny_config

    from src.training import train

    cfg = tiny_config(make_corpus(tmp_path / "corpus"), tmp_path / "run", "training.epochs=3",
                      "training.keep_epochs=2")
    train(cfg)
    kept = snapshots(tmp_path / "run")
    assert [p.name for p in kept] == ["epoch_002.pt", "epoch_003.pt"]
    last, newest = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(kept[-1])
    assert "optimizer" not in newest and newest["metrics"]["epoch"] == 3
    for name, value in last["model"].items():
        assert torch.equal(newest["model"][name], value), name


@pytest.mark.parametrize("setup, args, names", [
    ("one file", ["a.pt"], ["a.pt", "at least two checkpoints"]),
    ("one snapshot", ["run"], ["run", "at least two checkpoints", "epoch_001.pt"]),
    ("--last 1", ["run2", "--last", "1"], ["--last 1", "at least two checkpoints"]),
    ("a file twice", ["a.pt", "a.pt"], ["a.pt", "given twice"]),
])
def test_averaging_fewer_than_two_checkpoints_is_refused(tmp_path, setup, args, names):
    _checkpoint(tmp_path / "a.pt", seed=1)
    _checkpoint(tmp_path / "run" / "epoch_001.pt", seed=1)
    for i in (1, 2):
        _checkpoint(tmp_path / "run2" / f"epoch_00{i}.pt", seed=i)
    proc = subprocess.run([sys.executable, "-m", "src.average", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    for name in names:
        assert name in proc.stderr
    assert not list(tmp_path.rglob("average.pt"))
