"""notebooks/kaggle.py runs top to bottom as a script: on the bundled sample, with a budget of
seconds and a tiny model, it finds the data, trains, decodes test-clean into a checked submission;
a second session finds the first one's last.pt under its input folder and continues from it."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "kaggle.py"
SAMPLE_TEST = ROOT / "data" / "sample" / "test-clean" / "mfcc"
TINY = ("model.las.conv_channels=8 model.las.listener_hidden=8 model.las.attention_dim=8 "
        "model.las.embedding_dim=8 model.las.speller_hidden=8 logging.wandb=disabled training.dev_max_utterances=5 "
        "training.final_check=false decoding.beam_size=2")


def run_notebook(tmp_path: Path, working: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ASR_WORKING": str(working), "ASR_MINUTES": "0.05",
                   "ASR_PIP": "0", "ASR_PRESET": "none", "ASR_EXTRA": TINY, **env}
    for key in ("ASR_DATA", "ASR_CODE", "ASR_REPO", "ASR_RESUME", "ASR_RUN"):
        if key not in env:
            environment.pop(key, None)
    return subprocess.run([sys.executable, str(NOTEBOOK)], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=240)


def read_submission(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["index", "label"]
        return list(reader)


def test_the_notebook_trains_decodes_and_resumes_on_the_sample(tmp_path):
    first = tmp_path / "working1"
    proc = run_notebook(tmp_path, first, ASR_INPUT=str(ROOT / "data"))  # data/sample holds train-clean-100/mfcc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"data: {ROOT / 'data' / 'sample'}" in proc.stdout
    assert "resume: none, a new run" in proc.stdout
    run_dir = first / "runs" / "kaggle"
    assert (run_dir / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    rows = read_submission(first / "submission.csv")
    assert [int(r["index"]) for r in rows] == list(range(len(os.listdir(SAMPLE_TEST)))) == list(range(50))
    assert all(re.fullmatch(r"[A-Z' ]*", r["label"]) for r in rows)

    # A new session: the first run's folder attached as a dataset, no data there (the sample is used).
    attached = tmp_path / "input" / "earlier-run"
    shutil.copytree(run_dir, attached)
    before = torch.load(attached / "last.pt", weights_only=True)["train_state"]
    second = tmp_path / "working2"
    proc = run_notebook(tmp_path, second, ASR_INPUT=str(tmp_path / "input"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the bundled sample" in proc.stdout
    assert f"resumed from {attached / 'last.pt'}: epoch {before['epoch'] + 1}, batch {before['batch']}" in proc.stdout
    budget = before["elapsed_minutes"] + 0.05
    assert f"training.max_minutes={budget:g}" in proc.stdout  # the minutes so far plus this session's
    after = torch.load(second / "runs" / "kaggle" / "last.pt", weights_only=True)["train_state"]
    assert after["global_step"] > before["global_step"]
    assert len(read_submission(second / "submission.csv")) == 50
