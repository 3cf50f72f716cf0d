"""Files from strangers and hostile disks: pickled transcripts never run code, failed writes keep the old file,
commands that would do nothing say so (exit code 2 and one line, as src/errors.py's run_cli promises)."""
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.las.conv_channels=8", "model.las.listener_hidden=8", "model.las.attention_dim=8",
        "model.las.embedding_dim=8", "model.las.speller_hidden=16", "logging.wandb=disabled", "data.num_workers=0",
        "training.device=cpu", "data.max_utterances_per_batch=4", "training.epochs=1"]


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, *names: str, after_bar: bool = False) -> str:
    """Exit code 2 and exactly one line on stderr, an error line naming each of ``names``.

    ``after_bar``: the line may follow the training loop's progress bar ("epoch 1/1: ...")."""
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    if after_bar:
        lines = [ln for ln in lines if not re.match(r"epoch \d+/\d+: ", ln)]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for name in names:
        assert name in lines[0]
    return lines[0]


# --------------------------------------------------------------------------
# Pickled transcripts


class _Payload:
    """Unpickling this object runs ``os.system(command)``: what a hostile transcript would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def hostile_transcript(path: Path, marker: Path) -> None:
    """An object-array transcript (as the competition ships them) with one element that creates ``marker``."""
    arr = np.array(["<sos>", "A", "<eos>"], dtype=object)
    arr[1] = _Payload(f"touch {marker}")
    np.save(path, arr, allow_pickle=True)


def test_hostile_payload_really_runs_under_plain_pickle(tmp_path):
    """The crafted file is a real threat: numpy's own allow_pickle=True load creates the marker."""
    marker = tmp_path / "marker"
    hostile_transcript(tmp_path / "t.npy", marker)
    np.load(tmp_path / "t.npy", allow_pickle=True)
    assert marker.exists()


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory):
    """A toy corpus whose first train and dev transcripts are hostile, and a tiny checkpoint beside it."""
    from test_submission import tiny_checkpoint

    from src.corpus.toy import make_toy_corpus

    tmp = tmp_path_factory.mktemp("hostile")
    root = make_toy_corpus(tmp / "data", n_train=8, n_dev=4, n_test=2)
    marker = tmp / "marker"
    for split in ("train-clean-100", "dev-clean"):
        hostile_transcript(sorted((root / split / "transcripts").glob("*.npy"))[0], marker)
    return root, tiny_checkpoint(tmp / "best.pt"), marker


@pytest.mark.parametrize("entry", ["train.py", "train.py in loader workers", "test.py", "check"])
def test_hostile_transcript_is_refused_by_every_reader(hostile_corpus, tmp_path, entry):
    root, ckpt, marker = hostile_corpus
    argv = {
        "train.py": ["train.py", f"data.root={root}", f"logging.run_dir={tmp_path / 'run'}", *TINY],
        # without the data check, found by a DataLoader worker process: still one line
        "train.py in loader workers": ["train.py", f"data.root={root}", f"logging.run_dir={tmp_path / 'run'}", *TINY,
                                       "data.check=false", "data.num_workers=2"],
        "test.py": ["test.py", "--checkpoint", str(ckpt), "--device", "cpu", "--split", "dev-clean",
                    f"data.root={root}", "data.num_workers=0"],
        "check": ["-m", "src.data.check", str(root)],
    }[entry]
    line = one_error_line(run(*argv), "transcripts", "np.save(path, arr.astype(str))", after_bar="workers" in entry)
    assert "posix.system" in line or "os.system" in line  # what it asked for
    assert not marker.exists()


def test_object_array_transcripts_load_to_their_strings(tmp_path):
    from src.data.dataset import transcript_ids
    from src.data.layout import load_npy
    from src.vocab import TOKEN_TO_ID

    tokens = ["<sos>", "H", "I", " ", "'", "<eos>"]
    for name, arr in [("object", np.array(tokens, dtype=object)), ("unicode", np.array(tokens))]:
        np.save(tmp_path / f"{name}.npy", arr, allow_pickle=True)
        loaded = load_npy(tmp_path / f"{name}.npy")
        assert loaded.tolist() == tokens
        assert transcript_ids(loaded).tolist() == [TOKEN_TO_ID[t] for t in tokens]


@pytest.mark.parametrize("content, message", [
    (np.array([["<sos>", "A"], ["B", "<eos>"]], dtype=object), "not a 1-D array of strings"),
    (np.array(["<sos>", 3, "<eos>"], dtype=object), "not a 1-D array of strings"),
    (np.array(["<sos>", b"A", "<eos>"], dtype=object), "not a 1-D array of strings"),
    (np.array(["<sos>", {"a": 1}, "<eos>"], dtype=object), "not a 1-D array of strings"),
    (np.array(["<sos>", Path("x"), "<eos>"], dtype=object), "pathlib"),  # any class outside numpy's arrays
])
def test_object_arrays_other_than_strings_are_refused(tmp_path, content, message):
    from src.data.layout import load_npy

    path = tmp_path / "t.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(UserError, match=message) as err:
        load_npy(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_bare_pickle_named_npy_is_refused(tmp_path):
    import pickle

    from src.data.layout import load_npy

    marker = tmp_path / "marker"
    path = tmp_path / "t.npy"
    path.write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    with pytest.raises(UserError, match="pickled data, not an .npy array"):
        load_npy(path)
    assert not marker.exists()


def test_no_pickle_loads_outside_the_restricted_loader():
    """Every np.load in src/ and bench/ refuses pickles; only src/data/layout.py unpickles, restricted."""
    offenders = []
    for folder in ("src", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"np\.load\([^)]*allow_pickle=True|pickle\.loads?\(|torch\.load\([^)]*pickle_module", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# --------------------------------------------------------------------------
# Full disks, read-only folders


class _FullDisk:
    """A file whose writes fail with ``error`` once ``room`` bytes are written (the first part lands)."""

    def __init__(self, f, room: int, error: int):
        self.f, self.room, self.error = f, room, error

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise OSError(self.error, os.strerror(self.error))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("error, says", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied"), (errno.EDQUOT, "quota")])
@pytest.mark.parametrize("writer", ["text", "torch.save", "np.save"])
def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path, monkeypatch, error, says, writer):
    import builtins

    import torch

    from src import atomic
    from src.data.features import save_npy_atomic

    path = tmp_path / "out.bin"
    path.write_bytes(b"the previous content")
    real_open = builtins.open
    monkeypatch.setattr(atomic, "open", lambda *a, **k: _FullDisk(real_open(*a, **k), room=10, error=error),
                        raising=False)
    with pytest.raises(UserError) as err:
        if writer == "text":
            atomic.write_text_atomic(path, "new content, longer than the room left on the disk")
        elif writer == "torch.save":  # torch wraps the OSError in a RuntimeError
            with atomic.atomic_write(path, "wb") as f:
                torch.save({"w": torch.zeros(1000)}, f)
        else:
            save_npy_atomic(path, np.zeros(1000))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message
    assert "previous file is unchanged" in message
    assert path.read_bytes() == b"the previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left


def test_errors_of_the_code_inside_the_block_are_not_disguised(tmp_path):
    from src.atomic import atomic_write

    with pytest.raises(ValueError, match="a bug"):
        with atomic_write(tmp_path / "x.txt") as f:
            f.write("part")
            raise ValueError("a bug")
    with pytest.raises(FileNotFoundError):  # an OSError, but not the disk's
        with atomic_write(tmp_path / "x.txt") as f:
            open(tmp_path / "missing")
    with pytest.raises(PermissionError):  # a permission error, but about another file than the one written
        with atomic_write(tmp_path / "x.txt") as f:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "secret"))
    assert list(tmp_path.iterdir()) == []


def test_check_writable_dir(tmp_path):
    from src.atomic import check_writable_dir

    assert check_writable_dir(tmp_path / "a" / "b", "logging.run_dir").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "run"):
        with pytest.raises(UserError, match="a file is in the way; set logging.run_dir") as err:
            check_writable_dir(bad, "logging.run_dir")
        assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: chmod proves nothing
            pytest.skip("running as root: a 0o555 folder is still writable")
        with pytest.raises(UserError, match="permission denied; set logging.run_dir"):
            check_writable_dir(locked / "run", "logging.run_dir")
    finally:
        locked.chmod(0o755)


def test_train_py_refuses_an_unwritable_run_dir_before_training(tmp_path):
    from src.corpus.toy import make_toy_corpus

    root = make_toy_corpus(tmp_path / "data", n_train=4, n_dev=2)
    (tmp_path / "afile").write_text("x")
    run_dir = tmp_path / "afile" / "run"  # refused for root too, unlike a chmod 0o555 folder
    proc = run("train.py", f"data.root={root}", f"logging.run_dir={run_dir}", *TINY)
    one_error_line(proc, str(run_dir), "logging.run_dir")
    assert "epoch" not in proc.stdout
    assert (tmp_path / "afile").read_text() == "x"


# --------------------------------------------------------------------------
# Commands that would do nothing


def test_prepare_that_writes_nothing_fails_in_one_line_and_a_finished_one_succeeds(tmp_path):
    import soundfile as sf

    src = tmp_path / "corpus"
    src.mkdir()
    (src / "m.csv").write_text("gone1.wav,hello there,train\ngone2.wav,good night,dev\n")
    out = tmp_path / "out"
    proc = run("-m", "src.corpus.prepare", "manifest", str(src / "m.csv"), str(out), "--workers", "1")
    line = one_error_line(proc, str(out), "no utterance written", "missing audio 2", "m.csv")
    assert "prepare_skipped.tsv" in line
    assert not list(out.rglob("*.npy"))
    # once the audio is there it writes; run again, all is done already: that is success, not nothing
    for name in ("gone1", "gone2"):
        sf.write(src / f"{name}.wav", 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 16000)
    for _ in range(2):
        proc = run("-m", "src.corpus.prepare", "manifest", str(src / "m.csv"), str(out), "--workers", "1")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "0 utt" in proc.stdout and "2 already done" in proc.stdout
    assert len(list(out.rglob("*.npy"))) == 4
