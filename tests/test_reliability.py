"""Never save a broken model, survive SIGTERM, say when a resume changes the schedule."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_resume import assert_same_weights, final_weights, make_corpus, on_training_batch, tiny_config

from src.errors import Terminated, UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def poison_gradient(model, out) -> None:
    """Make this batch's backward give a NaN gradient while its loss stays finite (a parameter hook)."""
    param = next(model.parameters())
    handle = {}

    def poison(grad):
        handle["h"].remove()
        return grad * float("nan")

    handle["h"] = param.register_hook(poison)


def test_nan_gradient_with_finite_loss_is_skipped_and_counted(corpus, tmp_path, monkeypatch):
    on_training_batch(2, poison_gradient, monkeypatch)
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        weights, run = final_weights(tiny_config(corpus, tmp_path / "run"))
    assert run.state.nan_skips == 1
    assert all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point())
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "run" / name, weights_only=False)
        assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values() if t.is_floating_point())
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    epochs = [line for line in log if line.startswith("epoch ")]
    # the skip is reported in the epoch it happened in, not carried into later ones
    assert "skipped 1 non-finite" in epochs[0] and "skipped" not in epochs[1]


def test_non_finite_weights_are_never_saved_and_refused_at_load(tmp_path):
    from src.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from test_submission import tiny_checkpoint

    good = tiny_checkpoint(tmp_path / "best.pt")
    ckpt = torch.load(good, weights_only=False)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = ckpt["model"][name] * float("nan")
    before = good.read_bytes()
    with pytest.raises(UserError, match="NaN or infinite"):
        save_checkpoint(good, ckpt)
    assert good.read_bytes() == before and not (tmp_path / "best.pt.tmp").exists()  # the good file is kept

    broken = tmp_path / "broken.pt"  # a file written by something else: loading refuses it
    torch.save(ckpt, broken)
    with pytest.raises(UserError, match=f"{name} is NaN or infinite"):
        model_from_checkpoint(load_checkpoint(broken))
    for cmd in (["test.py", "--checkpoint", str(broken), "--device", "cpu"],
                ["transcribe.py", str(broken), str(ROOT / "README.md")]):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "NaN or infinite" in proc.stderr


def test_sigterm_mid_epoch_saves_last_and_resumes_bit_identically(corpus, tmp_path, monkeypatch):
    import src.training.loop as loop

    straight, _ = final_weights(tiny_config(corpus, tmp_path / "a"))
    real = loop.shared_elapsed_minutes
    calls = {"n": 0}

    def sigterm_at_sixth_batch(run):  # called once at the start of every training batch
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 2 (4 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run)

    monkeypatch.setattr(loop, "shared_elapsed_minutes", sigterm_at_sixth_batch)
    with pytest.raises(Terminated):
        loop.train(tiny_config(corpus, tmp_path / "b"))
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed after the run
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    # the batch under way when the signal came is finished, then the run stops between two steps
    assert (ckpt["train_state"]["epoch"], ckpt["train_state"]["batch"]) == (1, 2)
    assert "terminated (SIGTERM): saved" in (tmp_path / "b" / "train.log").read_text()
    resumed, _ = final_weights(tiny_config(corpus, tmp_path / "b"))
    assert_same_weights(straight, resumed)


def test_sigterm_exit_code_and_message():
    from src.errors import run_cli

    def main():
        raise Terminated("SIGTERM")

    with pytest.raises(SystemExit) as exit_:
        run_cli(main)
    assert exit_.value.code == 143


def test_resume_with_more_epochs_says_the_schedule_changes_and_finished_runs_say_so(corpus, tmp_path):
    _, run = final_weights(tiny_config(corpus, tmp_path / "r", "training.epochs=1"))
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["train_state"]["finished"]
    final_weights(tiny_config(corpus, tmp_path / "r", "training.epochs=2"))
    log = (tmp_path / "r" / "train.log").read_text()
    assert "training.epochs changed from 1 to 2" in log and "wsd schedule" in log  # the default schedule


def test_config_yaml_is_written_only_once_the_run_is_accepted(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(tmp_path / "no-such-data", run_dir)
    from src.training import train

    with pytest.raises(UserError):
        train(cfg)
    assert not (run_dir / "config.yaml").exists()


def test_train_py_rejects_zero_epochs_in_one_line(tmp_path):
    for value in ("0", "-1"):
        proc = subprocess.run([sys.executable, "train.py", f"training.epochs={value}",
                               f"logging.run_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and "training.epochs" in proc.stderr
        assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_unwritable_output_and_unknown_checkpoint_family_are_one_line(tmp_path):
    from src.atomic import atomic_write
    from src.checkpoint import model_spec

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile/sub.csv: cannot write here"):
        with atomic_write(tmp_path / "afile" / "sub.csv") as f:
            f.write("never")
    with pytest.raises(UserError, match="ckpt.pt: written by model family 'nope'"):
        model_spec({"family": "nope", "model_config": {}}, tmp_path / "ckpt.pt")
