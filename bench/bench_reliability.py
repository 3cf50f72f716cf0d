"""Reliability figures: bad inputs a user can hit, and training killed at random moments.

    python bench/bench_reliability.py                 # the battery and 10 kills
    python bench/bench_reliability.py --kills 20
    python bench/bench_reliability.py --kills 0       # the battery only

1. Bad inputs: each case breaks one thing in a fresh copy of a toy corpus, config or
   checkpoint and runs the real entry point in a subprocess. Handled = the documented exit
   code (2; 1 for transcribe.py when no file holds speech), no traceback, and an
   ``error:`` line that names the offending file or setting (and, for a transcript whose
   pickle would run code, no trace of that code having run).
2. Kills: a tiny LAS trains 3 epochs straight (checkpoints every batch); then each trial
   starts the same run, kills it at a random moment (kill -9 and SIGTERM in turn), and
   resumes it to the end. Survived = the run finishes and its final weights equal the
   straight run's, tensor for tensor.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_args import natural  # bench/, this script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]

TINY = ["model.las.conv_channels=8", "model.las.listener_hidden=8", "model.las.attention_dim=8",
        "model.las.embedding_dim=8", "model.las.speller_hidden=16", "logging.wandb=disabled", "data.num_workers=0",
        "training.device=cpu", "data.max_utterances_per_batch=4"]


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------
# Bad inputs: each case gets a fresh folder and returns (argv, a word the error must name)


def corpus(tmp: Path) -> Path:
    from src.corpus.toy import make_toy_corpus

    return make_toy_corpus(tmp / "data", n_train=8, n_dev=4, n_test=4)


def checkpoint(tmp: Path, **changes) -> Path:
    """A checkpoint of the tiny LAS as train.py writes it, with ``changes`` applied to the payload."""
    import dataclasses

    import torch

    from src.checkpoint import save_checkpoint
    from src.config import load_config, to_dict
    from src.models import build_model
    from src.vocab import VOCAB

    cfg = load_config(None, TINY)
    model = build_model(cfg.model, 28, len(VOCAB))
    payload = {"model": model.state_dict(), "family": "las", "model_config": dataclasses.asdict(cfg.model.las),
               "front_end": {"n_mels": 28, "normalize": "utterance"}, "n_mels": 28, "vocab": list(VOCAB),
               "config": to_dict(cfg)}
    payload.update(changes)
    path = tmp / "best.pt"
    if any(not bool(torch.isfinite(t).all()) for t in payload["model"].values() if t.is_floating_point()):
        torch.save(payload, path)  # save_checkpoint refuses it: write it as something else would
    else:
        save_checkpoint(path, payload)
    return path


def write_npy(path: Path, array) -> None:
    import numpy as np

    np.save(path, array)


def first(folder: Path) -> Path:
    return sorted(folder.glob("*.npy"))[0]


def train_on(tmp: Path, *extra: str) -> list[str]:
    return ["train.py", f"data.root={tmp / 'data'}", f"logging.run_dir={tmp / 'run'}", *TINY, *extra]


def case_feature(tmp, make):
    root = corpus(tmp)
    path = first(root / "train-clean-100" / "mfcc")
    make(path)
    return train_on(tmp), path.name


def bad_nan(p):
    import numpy as np

    x = np.load(p)
    x[2, 3] = np.nan
    write_npy(p, x)


def bad_huge(p):
    import numpy as np

    x = np.load(p)
    x[1, 1] = 1e30
    write_npy(p, x)


def bad_transcript(tmp, tokens):
    import numpy as np

    root = corpus(tmp)
    path = first(root / "train-clean-100" / "transcripts")
    write_npy(path, np.array(tokens))
    return train_on(tmp), path.name


def bad_checkpoint(tmp, **changes):
    root = corpus(tmp)
    return ["test.py", "--checkpoint", str(checkpoint(tmp, **changes)), "--device", "cpu", f"data.root={root}",
            "data.num_workers=0"], "best.pt"


def nan_weights(tmp):
    ckpt = checkpoint(tmp)
    import torch

    payload = torch.load(ckpt, weights_only=False)
    name = next(iter(payload["model"]))
    payload["model"][name] = payload["model"][name] * float("nan")
    torch.save(payload, ckpt)
    corpus(tmp)
    return ["test.py", "--checkpoint", str(ckpt), "--device", "cpu", f"data.root={tmp / 'data'}"], "NaN"


def wav(tmp: Path, name: str, content: bytes | None = None, seconds: float = 0.0) -> Path:
    path = tmp / name
    if content is not None:
        path.write_bytes(content)
    else:
        import numpy as np
        import soundfile as sf

        sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def transcribe(tmp, audio: Path):
    return ["transcribe.py", str(checkpoint(tmp)), str(audio)], audio.name


def resume_conflict(tmp):
    corpus(tmp)
    first_run = run(train_on(tmp, "training.epochs=1"))
    assert first_run.returncode == 0, first_run.stderr[-500:]
    return train_on(tmp, "training.epochs=2", "model.las.listener_hidden=12"), "listener_hidden"


def yaml_file(tmp, text):
    path = tmp / "c.yaml"
    path.write_text(text)
    return ["train.py", "--config", str(path)], "c.yaml"


class _RunsCode:
    """Unpickling this object runs a shell command: what a hostile transcript would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


MARKER = "pickle-ran"  # the file a hostile transcript's payload creates in the case's folder


def hostile_transcript(tmp, entry: str):
    """A transcript saved as an object array (as the competition's are) whose pickle would create a file."""
    import numpy as np

    root = corpus(tmp)
    split = "dev-clean" if entry == "test.py" else "train-clean-100"
    path = first(root / split / "transcripts")
    arr = np.array(["<sos>", "A", "<eos>"], dtype=object)
    arr[1] = _RunsCode(f"touch {tmp / MARKER}")
    np.save(path, arr, allow_pickle=True)
    if entry == "test.py":
        argv = ["test.py", "--checkpoint", str(checkpoint(tmp)), "--device", "cpu", "--split", "dev-clean",
                f"data.root={root}", "data.num_workers=0"]
    elif entry == "check":
        argv = ["-m", "src.data.check", str(root)]
    else:
        argv = train_on(tmp)
    return argv, path.name


def average_one(tmp):
    return ["-m", "src.average", str(checkpoint(tmp))], "best.pt"


def prepare_nothing(tmp):
    (tmp / "m.csv").write_text("gone1.wav,hello there,train\ngone2.wav,good night,dev\n")
    return ["-m", "src.corpus.prepare", "manifest", str(tmp / "m.csv"), str(tmp / "o"), "--workers", "1"], \
        "no utterance written"


def without(tmp, split):
    root = corpus(tmp)
    shutil.rmtree(root / split)
    return root


CASES = [
    ("config", "unknown key", lambda t: (["train.py", "training.lrr=1"], "training.lrr")),
    ("config", "renamed key", lambda t: (["train.py", "model.conv_stride=1"], "model.las.conv_stride")),
    ("config", "wrong type", lambda t: (["train.py", "training.lr=fast"], "training.lr")),
    ("config", "unknown choice", lambda t: (["train.py", "training.scheduler=linear"], "training.scheduler")),
    ("config", "weight out of range", lambda t: (["train.py", "training.ctc_weight=2"], "training.ctc_weight")),
    ("config", "zero epochs", lambda t: (["train.py", "training.epochs=0"], "training.epochs")),
    ("config", "negative epochs", lambda t: (["train.py", "training.epochs=-1"], "training.epochs")),
    ("config", "unknown family", lambda t: (["train.py", "model.family=nope"], "model.family")),
    ("config", "CTC layer beyond the listener", lambda t: (["train.py", "model.las.ctc_layer=5"], "ctc_layer")),
    ("config", "override without =", lambda t: (["train.py", "training.lr"], "training.lr")),
    ("config", "missing config file", lambda t: (["train.py", "--config", str(t / "nope.yaml")], "nope.yaml")),
    ("config", "broken YAML", lambda t: yaml_file(t, "data: [unclosed\n")),
    ("config", "section not a mapping", lambda t: yaml_file(t, "training: 3\n")),
    ("config", "CUDA asked for, none here", lambda t: (["train.py", "training.device=cuda"], "training.device")),
    ("data", "root missing", lambda t: (train_on(t), "data")),
    ("data", "dev-clean missing", lambda t: (without(t, "dev-clean") and train_on(t), "dev-clean")),
    ("data", "check: test-clean missing", lambda t: (["-m", "src.data.check", str(without(t, "test-clean"))],
                                                     "test-clean")),
    ("data", "features without transcript", lambda t: (
        (lambda r: (first(r / "train-clean-100" / "transcripts").unlink(), train_on(t))[1])(corpus(t)),
        "train-clean-100")),
    ("data", "wrong feature width", lambda t: case_feature(t, lambda p: write_npy(p, __import__("numpy").zeros((50, 13),
                                                                                                    "float32")))),
    ("data", "NaN in features", lambda t: case_feature(t, bad_nan)),
    ("data", "absurd feature values (1e30)", lambda t: case_feature(t, bad_huge)),
    ("data", "empty .npy file", lambda t: case_feature(t, lambda p: p.write_bytes(b""))),
    ("data", "truncated .npy file", lambda t: case_feature(t, lambda p: p.write_bytes(p.read_bytes()[:200]))),
    ("data", "not an .npy file", lambda t: case_feature(t, lambda p: p.write_text("hello"))),
    ("data", "object-dtype features", lambda t: case_feature(t, lambda p: write_npy(
        p, __import__("numpy").array([[1, "a"]] * 5, dtype=object)))),
    ("data", "transcript without <sos>", lambda t: bad_transcript(t, ["A", "B", "<eos>"])),
    ("data", "characters outside the vocabulary", lambda t: bad_transcript(t, ["<sos>", "a", "7", "<eos>"])),
    ("data", "empty transcript", lambda t: bad_transcript(t, [])),
    ("data", "transcript pickle runs code: train.py", lambda t: hostile_transcript(t, "train.py")),
    ("data", "transcript pickle runs code: test.py", lambda t: hostile_transcript(t, "test.py")),
    ("data", "transcript pickle runs code: check", lambda t: hostile_transcript(t, "check")),
    ("data", "empty split", lambda t: (
        (lambda r: ([p.unlink() for p in (r / "dev-clean").rglob("*.npy")], train_on(t))[1])(corpus(t)),
        "dev-clean")),
    ("checkpoint", "missing", lambda t: (["test.py", "--checkpoint", str(t / "none.pt"), "--device", "cpu"],
                                         "none.pt")),
    ("checkpoint", "not a checkpoint", lambda t: ((t / "x.pt").write_text("hi"),
                                                  ["test.py", "--checkpoint", str(t / "x.pt")])[1:] + ("x.pt",)),
    ("checkpoint", "truncated", lambda t: (lambda p: (p.write_bytes(p.read_bytes()[:1000]),
                                                      ["test.py", "--checkpoint", str(p), "--device", "cpu"]))(
        checkpoint(t))[1:] + ("best.pt",)),
    ("checkpoint", "NaN weights", nan_weights),
    ("checkpoint", "another vocabulary", lambda t: bad_checkpoint(t, vocab=["<pad>", "<sos>", "<eos>", "a", "b"])),
    ("checkpoint", "features of another size", lambda t: bad_checkpoint(
        t, front_end={"n_mels": 40, "normalize": "utterance"}, n_mels=40)),
    ("checkpoint", "unknown family", lambda t: bad_checkpoint(t, family="nope")),
    ("checkpoint", "unknown key in its model config", lambda t: bad_checkpoint(t, model_config={"hidden": 3})),
    ("test.py", "CUDA device, none here", lambda t: (["test.py", "--checkpoint", str(checkpoint(t)), "--device",
                                                      "cuda:1"], "--device")),
    ("test.py", "scoring a split without transcripts", lambda t: (
        ["test.py", "--checkpoint", str(checkpoint(t)), "--device", "cpu", f"data.root={corpus(t)}",
         "--split", "test-clean"], "test-clean")),
    ("test.py", "output folder is a file", lambda t: (
        (t / "afile").write_text("x"),
        ["test.py", "--checkpoint", str(checkpoint(t)), "--device", "cpu", f"data.root={corpus(t)}",
         "data.num_workers=0", "decoding.method=greedy", "--output", str(t / "afile" / "sub.csv")])[1:] + ("afile",)),
    ("train.py", "run_dir below a file", lambda t: ((t / "afile").write_text("x"), train_on(t) + [
        f"logging.run_dir={t / 'afile' / 'run'}"])[1:] + ("logging.run_dir",)),
    ("transcribe.py", "audio file missing", lambda t: transcribe(t, t / "none.wav")),
    ("transcribe.py", "empty file", lambda t: transcribe(t, wav(t, "empty.wav", b""))),
    ("transcribe.py", "text named .wav", lambda t: transcribe(t, wav(t, "text.wav", b"not audio at all"))),
    ("transcribe.py", "unsupported format", lambda t: transcribe(t, wav(t, "song.m4a", b"\0" * 100))),
    ("transcribe.py", "a folder", lambda t: transcribe(t, t)),
    ("resume", "another model size in the run folder", resume_conflict),
    ("prepare", "unknown corpus format", lambda t: (["-m", "src.corpus.prepare", "timit", str(t), str(t / "o")],
                                                    "timit")),
    ("prepare", "source folder missing", lambda t: (["-m", "src.corpus.prepare", "ljspeech", str(t / "none"),
                                                     str(t / "o")], "none")),
    ("prepare", "nothing to write (audio all missing)", prepare_nothing),
    ("average", "one checkpoint", average_one),
    ("synth", "unknown feature dtype", lambda t: (["-m", "src.corpus.synth", str(t / "o"), "--dtype", "int8"],
                                                  "--dtype")),
    ("synth", "output already holds a corpus", lambda t: (["-m", "src.corpus.synth", str(corpus(t)), "--counts",
                                                          "train-clean-100=1"], "train-clean-100")),
]


def judge(proc: subprocess.CompletedProcess, names: str) -> tuple[bool, str]:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    ok = proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in last and names in last
    return ok, last


def battery() -> tuple[int, int, list[str]]:
    handled, failures = 0, []
    for category, name, make in CASES:
        tmp = Path(tempfile.mkdtemp(prefix="rel-"))
        try:
            argv, names = make(tmp)
            proc = run(argv)
            ok, last = judge(proc, names)
            if (tmp / MARKER).exists():
                ok, last = False, f"the transcript's pickle ran code ({MARKER} created); {last}"
        except Exception as err:  # the case itself could not be set up: count it as not handled
            ok, last, proc = False, f"set-up failed: {err!r}", None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        handled += ok
        rc = proc.returncode if proc is not None else "-"
        print(f"{category:<14}{name:<40}{'PASS' if ok else 'FAIL':<6}rc {rc!s:<4}{last[:110]}", flush=True)
        if not ok:
            failures.append(f"{category}: {name}: {last}")
    return handled, len(CASES), failures


# --------------------------------------------------------------------------
# Kills


def final_weights(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "last.pt", weights_only=False, map_location="cpu")["model"]


def finished_run(run_dir: Path) -> bool:
    import torch

    path = run_dir / "last.pt"
    return path.is_file() and bool(torch.load(path, weights_only=False)["train_state"].get("finished"))


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kills(n: int, seed: int) -> tuple[int, int, list[str]]:
    if n == 0:
        return 0, 0, []
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="kills-"))
    from src.corpus.toy import make_toy_corpus

    data = make_toy_corpus(work / "data", n_train=32, n_dev=4)
    args = lambda run_dir: ["train.py", f"data.root={data}", f"logging.run_dir={run_dir}", *TINY,  # noqa: E731
                            "training.epochs=3", "training.checkpoint_every_minutes=0.0001", "data.check=false"]
    start = time.monotonic()
    straight = run(args(work / "straight"))
    duration = time.monotonic() - start
    assert straight.returncode == 0, straight.stderr[-1000:]
    reference = final_weights(work / "straight")
    survived, failures = 0, []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for trial in range(n):
        run_dir = work / f"trial{trial}"
        sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGTERM
        proc = subprocess.Popen([sys.executable, *args(run_dir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        proc.send_signal(sig)
        _, err = proc.communicate()
        note = ""
        if sig == signal.SIGTERM and proc.returncode not in (143, 0) and not finished_run(run_dir):
            # a SIGTERM after the work is done (during interpreter exit) loses nothing: only count the others
            note = f"SIGTERM exit code {proc.returncode}: {err.strip().splitlines()[-1:]}"
        finished = run(args(run_dir))
        if finished.returncode != 0:
            note = note or f"resume failed: {finished.stderr.strip().splitlines()[-1:]}"
        elif not same(final_weights(run_dir), reference):
            note = note or "final weights differ from the straight run"
        if note:
            failures.append(f"trial {trial} ({sig.name}): {note}")
        else:
            survived += 1
        print(f"kill {trial + 1:>2}: {sig.name:<8} after {proc.returncode!s:>5} -> "
              f"{'survived' if not note else 'LOST: ' + note}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return survived, n, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=natural, default=10, help="kill trials (kill -9 and SIGTERM in turn)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from host import describe, host_load

    print(describe(host_load()), flush=True)
    handled, tried, bad = battery()
    survived, killed, lost = kills(args.kills, args.seed)
    print(f"\nbad inputs: {handled} of {tried} handled (exit code 2, no traceback, an error line naming the problem)")
    if killed:
        print(f"kills: {survived} of {killed} survived (final weights bit-identical to a straight run; "
              f"{(killed + 1) // 2} kill -9, {killed // 2} SIGTERM)")
    for line in bad + lost:
        print(f"  {line}")
    return 0 if handled == tried and survived == killed else 1


if __name__ == "__main__":
    sys.exit(main())
