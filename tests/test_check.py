"""src.data.check: every bad input gives one line naming the file, the problem and the fix.

Each case writes a small valid tree, breaks one thing, and checks both
check_data's UserError and the CLI (exit code 2, a single stderr line).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.data import check as check_mod
from src.data.check import STAMP_NAME, check_data
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"train-clean-100": 4, "dev-clean": 3, "test-clean": 3}
FRAMES = 50


def transcript(text: str) -> np.ndarray:
    return np.array(["<sos>", *text, "<eos>"])


def make_tree(root: Path, splits: dict[str, int] = SPLITS) -> Path:
    """A valid competition tree: utterances u0..un with FRAMES frames each."""
    rng = np.random.default_rng(0)
    for folder, n in splits.items():
        (root / folder / "mfcc").mkdir(parents=True)
        if folder != "test-clean":
            (root / folder / "transcripts").mkdir()
        for i in range(n):
            np.save(root / folder / "mfcc" / f"u{i}.npy", rng.normal(size=(FRAMES, 28)).astype(np.float32))
            if folder != "test-clean":
                np.save(root / folder / "transcripts" / f"u{i}.npy", transcript("HELLO WORLD"))
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.data.check", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


# --------------------------------------------------------------------------
# the valid tree


def test_valid_tree_summary_and_cli(tmp_path):
    root = make_tree(tmp_path / "d")
    summary = check_data(root)
    assert summary == {f: (n, n * FRAMES) for f, n in SPLITS.items()}
    proc = run_cli(str(root))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OK ")
    assert "train-clean-100 4 utt" in lines[0] and "test-clean 3 utt" in lines[0]
    assert "total 10 utterances" in lines[0]
    hours = 10 * FRAMES * 0.01 / 3600
    assert f"{hours:.3f} hours" in lines[0]
    proc = run_cli(str(root), "--partitions", "dev-clean")
    assert proc.returncode == 0 and "train-clean" not in proc.stdout


def test_float16_and_float64_and_object_transcripts_pass(tmp_path):
    root = make_tree(tmp_path / "d")
    np.save(root / "dev-clean" / "mfcc" / "u0.npy", np.zeros((7, 28), np.float16))
    np.save(root / "dev-clean" / "mfcc" / "u1.npy", np.zeros((9, 28), np.float64))
    np.save(root / "dev-clean" / "transcripts" / "u2.npy", transcript("IT'S OK").astype(object), allow_pickle=True)
    assert check_data(root, ["dev-clean"]) == {"dev-clean": (3, 7 + 9 + FRAMES)}


# --------------------------------------------------------------------------
# bad inputs: (break the tree, the file named in the message, words of the problem)


def _rm(path: Path) -> None:
    path.unlink()


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _nan(path: Path) -> None:
    x = np.load(path)
    x[17, 3] = np.nan
    np.save(path, x)


def _inf(path: Path) -> None:
    x = np.load(path).astype(np.float16)
    x[2, 0] = np.inf
    np.save(path, x)


CASES = {
    "missing split folder": (
        lambda r: __import__("shutil").rmtree(r / "dev-clean"), "dev-clean", "split folder not found"),
    "missing mfcc folder": (
        lambda r: __import__("shutil").rmtree(r / "dev-clean" / "mfcc"), "dev-clean/mfcc", "features folder not found"),
    "missing transcripts folder": (
        lambda r: __import__("shutil").rmtree(r / "dev-clean" / "transcripts"), "dev-clean/transcripts",
        "transcripts folder not found"),
    "features without transcript": (
        lambda r: _rm(r / "dev-clean" / "transcripts" / "u1.npy"), "dev-clean/mfcc/u1.npy",
        "features without a transcript"),
    "transcript without features": (
        lambda r: _rm(r / "dev-clean" / "mfcc" / "u2.npy"), "dev-clean/transcripts/u2.npy",
        "transcript without features"),
    "empty split": (
        lambda r: [_rm(p) for p in (r / "test-clean" / "mfcc").iterdir()], "test-clean/mfcc", "no .npy feature files"),
    "wrong feature dimension": (
        lambda r: np.save(r / "dev-clean" / "mfcc" / "u0.npy", np.zeros((30, 40), np.float32)),
        "dev-clean/mfcc/u0.npy", "expected (T, 28) features, got shape (30, 40)"),
    "transposed features": (
        lambda r: np.save(r / "dev-clean" / "mfcc" / "u0.npy", np.zeros((28, 30), np.float32)),
        "dev-clean/mfcc/u0.npy", "transposed"),
    "wrong ndim": (
        lambda r: np.save(r / "test-clean" / "mfcc" / "u1.npy", np.zeros((30, 28, 1), np.float32)),
        "test-clean/mfcc/u1.npy", "got shape (30, 28, 1)"),
    "integer features": (
        lambda r: np.save(r / "dev-clean" / "mfcc" / "u0.npy", np.zeros((30, 28), np.int32)),
        "dev-clean/mfcc/u0.npy", "dtype int32"),
    "zero frames": (
        lambda r: np.save(r / "train-clean-100" / "mfcc" / "u3.npy", np.zeros((0, 28), np.float32)),
        "train-clean-100/mfcc/u3.npy", "empty features (0 frames)"),
    "NaN": (lambda r: _nan(r / "dev-clean" / "mfcc" / "u1.npy"), "dev-clean/mfcc/u1.npy", "1 NaN and 0 Inf"),
    "Inf": (lambda r: _inf(r / "test-clean" / "mfcc" / "u2.npy"), "test-clean/mfcc/u2.npy", "0 NaN and 1 Inf"),
    "no sos": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u0.npy", np.array(list("HI")+["<eos>"])),
        "dev-clean/transcripts/u0.npy", "does not start with '<sos>'"),
    "no eos": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u0.npy", np.array(["<sos>"]+list("HI"))),
        "dev-clean/transcripts/u0.npy", "does not end with '<eos>'"),
    "only sos eos": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u2.npy", transcript("")),
        "dev-clean/transcripts/u2.npy", "empty transcript"),
    "zero-length transcript": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u2.npy", np.array([], dtype="<U5")),
        "dev-clean/transcripts/u2.npy", "empty transcript"),
    "lower-case characters": (
        lambda r: np.save(r / "train-clean-100" / "transcripts" / "u1.npy", transcript("Hi there")),
        "train-clean-100/transcripts/u1.npy", "outside the vocabulary ('e', 'h', 'i', 'r', 't')"),
    "punctuation in object array": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u1.npy", transcript("HI.").astype(object)),
        "dev-clean/transcripts/u1.npy", "outside the vocabulary ('.')"),
    "word per element": (
        lambda r: np.save(r / "dev-clean" / "transcripts" / "u1.npy", np.array(["<sos>", "HELLO", "<eos>"])),
        "dev-clean/transcripts/u1.npy", "outside the vocabulary ('HELLO')"),
    "not an npy file": (
        lambda r: (r / "dev-clean" / "mfcc" / "u0.npy").write_text("hello"),
        "dev-clean/mfcc/u0.npy", "unreadable .npy file"),
    "truncated features": (
        lambda r: _truncate(r / "dev-clean" / "mfcc" / "u1.npy", 1000), "dev-clean/mfcc/u1.npy", "truncated .npy file"),
    "truncated header": (
        lambda r: _truncate(r / "test-clean" / "mfcc" / "u0.npy", 20), "test-clean/mfcc/u0.npy",
        "unreadable .npy file"),
    "truncated object transcript": (
        lambda r: (np.save(r / "dev-clean" / "transcripts" / "u0.npy", transcript("HI").astype(object)),
                   _truncate(r / "dev-clean" / "transcripts" / "u0.npy", 140)),
        "dev-clean/transcripts/u0.npy", "unreadable .npy file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tmp_path, case):
    breaker, where, problem = CASES[case]
    root = make_tree(tmp_path / "d")
    breaker(root)
    parts = ["train-clean-100", "dev-clean", "test-clean"] if case == "missing split folder" else None
    with pytest.raises(UserError) as err:
        check_data(root, parts)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root / where) in msg, msg
    assert problem in msg, msg
    assert "; " in msg  # followed by what to do
    proc = run_cli(str(root), *(["--partitions", *parts] if parts else []))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {msg}"]


def test_shallow_check_skips_array_reading(tmp_path):
    root = make_tree(tmp_path / "d")
    _nan(root / "dev-clean" / "mfcc" / "u0.npy")
    assert check_data(root, deep=False)["dev-clean"] == (3, 3 * FRAMES)
    assert run_cli(str(root), "--headers-only").returncode == 0
    with pytest.raises(UserError, match="NaN"):
        check_data(root)


def test_missing_root_and_root_one_level_up(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        check_data(tmp_path / "nowhere")
    make_tree(tmp_path / "data" / "11-785-f23-hw4p2")
    with pytest.raises(UserError) as err:
        check_data(tmp_path / "data")
    assert str(tmp_path / "data" / "11-785-f23-hw4p2") in str(err.value)
    proc = run_cli(str(tmp_path / "data"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "11-785-f23-hw4p2" in proc.stderr


def test_wrong_n_mels_on_the_command_line(tmp_path):
    root = make_tree(tmp_path / "d")
    proc = run_cli(str(root), "--n-mels", "40")
    assert proc.returncode == 2
    assert "expected (T, 40) features, got shape (50, 28)" in proc.stderr
    assert "data.n_mels=28" in proc.stderr


# --------------------------------------------------------------------------
# the stamp of a successful deep check


def _count_array_reads(monkeypatch) -> list:
    calls = []
    real = check_mod._check_arrays

    def counting(u):
        calls.append(u.name)
        return real(u)

    monkeypatch.setattr(check_mod, "_check_arrays", counting)
    return calls


def test_stamp_skips_rereading_until_files_change(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d")
    calls = _count_array_reads(monkeypatch)
    first = check_data(root)
    assert len(calls) == sum(SPLITS.values())
    assert all((root / f / STAMP_NAME).is_file() for f in SPLITS)
    stamp = json.loads((root / "dev-clean" / STAMP_NAME).read_text())
    assert stamp["utterances"] == 3 and stamp["frames"] == 3 * FRAMES
    calls.clear()
    assert check_data(root) == first
    assert calls == []  # nothing re-read
    # a changed file (new size and mtime) invalidates its split's stamp only
    x = np.load(root / "dev-clean" / "mfcc" / "u0.npy")
    x = np.concatenate([x, x])
    x[60, 1] = np.nan
    np.save(root / "dev-clean" / "mfcc" / "u0.npy", x)
    with pytest.raises(UserError, match="dev-clean/mfcc/u0.npy: 1 NaN"):
        check_data(root)
    assert calls and set(calls) <= {"u0", "u1", "u2"}
    # another n_mels is another check
    calls.clear()
    with pytest.raises(UserError, match=r"expected \(T, 40\)"):
        check_data(root, ["train-clean-100"], n_mels=40)


def test_stamp_write_failure_is_ignored(tmp_path):
    root = make_tree(tmp_path / "d", {"dev-clean": 2})
    (root / "dev-clean" / (STAMP_NAME + ".tmp")).mkdir()  # writing the stamp fails (like a read-only folder)
    assert check_data(root, ["dev-clean"]) == {"dev-clean": (2, 2 * FRAMES)}
    assert not (root / "dev-clean" / STAMP_NAME).exists()
    assert check_data(root, ["dev-clean"], stamp=False) == {"dev-clean": (2, 2 * FRAMES)}


def test_cli_rejects_unknown_partition(tmp_path):
    root = make_tree(tmp_path / "d")
    proc = run_cli(str(root), "--partitions", "train-clean-500")
    assert proc.returncode == 2 and "train-clean-500" in proc.stderr


# --------------------------------------------------------------------------
# without --partitions: the splits a run needs must be there


@pytest.mark.parametrize("missing", [["dev-clean"], ["test-clean"], ["train-clean-100"], ["dev-clean", "test-clean"]])
def test_default_check_requires_train_dev_and_test(tmp_path, missing):
    root = make_tree(tmp_path / "d")
    for folder in missing:
        __import__("shutil").rmtree(root / folder)
    with pytest.raises(UserError) as err:
        check_data(root)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root / missing[0]}: split folder not found"), msg
    assert all(folder in msg for folder in missing)
    present = [f for f in SPLITS if f not in missing]
    assert f"--partitions {' '.join(present)}" in msg  # the fix, runnable as printed
    proc = run_cli(str(root))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {msg}"]
    # the fix the message gives works
    assert run_cli(str(root), "--partitions", *present).returncode == 0


def test_default_check_accepts_train_clean_360_alone_and_the_bundled_sample(tmp_path):
    root = make_tree(tmp_path / "d", {"train-clean-360": 2, "dev-clean": 2, "test-clean": 2})
    assert set(check_data(root)) == {"train-clean-360", "dev-clean", "test-clean"}
    proc = run_cli(str(ROOT / "data" / "sample"), "--headers-only")  # headers only: writes no stamp
    assert proc.returncode == 0, proc.stderr
    assert all(f in proc.stdout for f in ["train-clean-100", "train-clean-360", "dev-clean", "test-clean"])
    # and the folder named when no training partition is there at all
    __import__("shutil").rmtree(root / "train-clean-360")
    with pytest.raises(UserError, match="train-clean-100: split folder not found .nor train-clean-360"):
        check_data(root)


# --------------------------------------------------------------------------
# absurd magnitudes: features are log-mel energies


@pytest.mark.parametrize("value, dtype, shown", [
    (1e30, np.float32, "1e+30"),
    (3e38, np.float32, "3e+38"),
    (-3e4, np.float16, "-3e+04"),
    (1e300, np.float64, "1e+300"),
])
def test_absurd_feature_magnitude_is_an_error(tmp_path, value, dtype, shown):
    root = make_tree(tmp_path / "d")
    x = np.load(root / "dev-clean" / "mfcc" / "u1.npy").astype(dtype)
    x[12, 5] = value
    np.save(root / "dev-clean" / "mfcc" / "u1.npy", x)
    with pytest.raises(UserError) as err:
        check_data(root)
    msg = str(err.value)
    assert msg.startswith(f"{root / 'dev-clean' / 'mfcc' / 'u1.npy'}: feature value {shown} at frame 12, bin 5")
    assert "\n" not in msg and "re-create the features" in msg
    proc = run_cli(str(root))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {msg}"]


def test_real_log_mels_pass_the_magnitude_bound_in_float16(tmp_path):
    from src.data.features import log_mel

    rng = np.random.default_rng(5)
    root = make_tree(tmp_path / "d")
    loud = np.sign(np.sin(np.arange(16000) * 0.1)) * 32767.0  # a full-scale square wave in int16 units
    feats = [log_mel(np.zeros(8000), 16000), log_mel(0.3 * rng.standard_normal(8000), 16000), log_mel(loud, 16000)]
    assert feats[0].min() < -13 and feats[2].max() > 25  # the whole range real features span
    for i, x in enumerate(feats):
        np.save(root / "dev-clean" / "mfcc" / f"u{i}.npy", x.astype(np.float16))
    edge = np.zeros((FRAMES, 28), np.float16)
    edge[0, 0], edge[1, 1] = 1e4, -1e4  # the bound itself passes
    np.save(root / "test-clean" / "mfcc" / "u0.npy", edge)
    assert check_data(root)["dev-clean"][0] == 3
    # over the bound fails, in the same tree
    edge[1, 1] = -1.01e4
    np.save(root / "test-clean" / "mfcc" / "u0.npy", edge)
    with pytest.raises(UserError, match="test-clean/mfcc/u0.npy: feature value -1.01e"):
        check_data(root)


def test_a_stamp_of_the_older_check_does_not_skip_the_magnitude_check(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d")
    x = np.load(root / "dev-clean" / "mfcc" / "u0.npy")
    x[3, 3] = 1e30
    np.save(root / "dev-clean" / "mfcc" / "u0.npy", x)
    utts = check_mod.list_folder(root, "dev-clean")
    monkeypatch.setattr(check_mod, "STAMP_VERSION", 1)  # a stamp left by the check without the bound
    old_key = check_mod._stamp_key(utts, 28)
    monkeypatch.undo()
    check_mod._write_stamp(root / "dev-clean" / STAMP_NAME, {"key": old_key, "utterances": 3, "frames": 150})
    with pytest.raises(UserError, match="1e\\+30"):
        check_data(root)
