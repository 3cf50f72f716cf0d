"""Files from strangers: a checkpoint whose unpickling would run code is refused by every entry point
(exit 2, one line, nothing run); config mistakes are blamed on the right place."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.config import load_config
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls open(marker, "w"): creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    from test_submission import tiny_checkpoint

    good = torch.load(tiny_checkpoint(path), weights_only=True)
    good["metrics"] = {"note": _Payload(marker)}
    torch.save(good, path)
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_a_crafted_checkpoint_runs_nothing_in_any_entry_point(tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = crafted_checkpoint(tmp_path / "run" / "best.pt", marker)
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "run" / "last.pt").write_bytes(ckpt.read_bytes())
    from test_resume import make_corpus

    small = [f"data.root={make_corpus(tmp_path / 'corpus', n_train=4, n_dev=2)}", "logging.wandb=disabled",
             "data.num_workers=0", "model.las.conv_channels=8", "model.las.listener_hidden=8",
             "model.las.attention_dim=8", "model.las.embedding_dim=8", "model.las.speller_hidden=8"]
    commands = [
        ["test.py", "--checkpoint", str(ckpt), "--device", "cpu"],
        ["test.py", "--checkpoint", str(ckpt), "--split", "dev-clean", "--device", "cpu"],
        ["transcribe.py", str(ckpt), str(wav)],
        ["-m", "src.average", str(ckpt), str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "avg.pt")],
        ["train.py", f"logging.run_dir={tmp_path / 'run'}", *small],
        ["train.py", f"training.resume_from={ckpt}", f"logging.run_dir={tmp_path / 'other'}", *small],
    ]
    for cmd in commands:
        proc = run(*cmd)
        assert proc.returncode == 2, (cmd, proc.stderr[-1500:])
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and "could run code" in err and "src.checkpoint upgrade" in err, (cmd, err)
        assert not marker.exists(), cmd
    # upgrading asks for --trust; with it the file's code does run (as it says), and what it made
    # cannot be stored in the safe format: refused, nothing written
    assert run("-m", "src.checkpoint", "upgrade", str(ckpt)).returncode == 2 and not marker.exists()
    proc = run("-m", "src.checkpoint", "upgrade", str(ckpt), "--out", str(tmp_path / "ok.pt"), "--trust")
    assert proc.returncode == 2 and "cannot be stored in the safe format" in proc.stderr and marker.exists()
    assert not (tmp_path / "ok.pt").exists()


def test_a_checkpoint_of_the_old_format_upgrades_once_then_loads_safely(tmp_path):
    """Before weights_only loading, last.pt held numpy's RNG state as an ndarray: refused as it is,
    converted by the upgrade command, then it resumes-loads with its RNG state intact."""
    import numpy as np

    from src.checkpoint import load_checkpoint
    from test_submission import tiny_checkpoint

    ckpt = torch.load(tiny_checkpoint(tmp_path / "last.pt"), weights_only=True)
    np.random.seed(5)
    ckpt["rng"] = {"numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(UserError, match="could run code"):
        load_checkpoint(tmp_path / "last.pt")
    proc = run("-m", "src.checkpoint", "upgrade", str(tmp_path / "last.pt"), "--trust")
    assert proc.returncode == 0, proc.stderr
    upgraded = load_checkpoint(tmp_path / "last.pt")
    np.random.seed(5)
    keys = np.random.get_state()[1]
    assert np.array_equal(upgraded["rng"]["numpy"]["keys"].numpy().astype(np.uint32), keys)


def test_plain_pickles_and_torch_files_of_old_versions_are_told_apart(tmp_path):
    from src.checkpoint import load_checkpoint

    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"model": 1}) + b"junk")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def test_yaml_errors_name_line_and_column_and_overrides_are_blamed_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  root: data\n  n_mels: [28\ntraining:\n  lr: 1\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+:\d+: not valid YAML") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="command line: 'training' is a section"):
        load_config(None, ["training=3"])


def test_test_py_names_last_pt_when_best_pt_is_missing(tmp_path):
    from test_submission import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run" / "last.pt")
    proc = run("test.py", f"logging.run_dir={tmp_path / 'run'}", "--device", "cpu")
    assert proc.returncode == 2 and "best.pt: checkpoint not found" in proc.stderr
    assert f"{tmp_path / 'run' / 'last.pt'} exists" in proc.stderr and "--checkpoint" in proc.stderr


def test_an_lm_named_with_weight_zero_is_checked_and_warned_about(tmp_path):
    from src.config import DecodingConfig
    from src.decoding.lm import check_decoding_lm

    with pytest.raises(UserError, match="language model not found"):
        check_decoding_lm(DecodingConfig(lm=str(tmp_path / "missing.npz"), lm_weight=0.0))
    from src.decoding.lm import CharNgramLM

    lm = CharNgramLM.build(["A B"], 2).save(tmp_path / "lm.npz")
    with pytest.warns(RuntimeWarning, match="not used while decoding.lm_weight=0"):
        check_decoding_lm(DecodingConfig(lm=str(lm), lm_weight=0.0))
