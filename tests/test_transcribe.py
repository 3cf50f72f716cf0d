"""transcribe.py: audio files -> text through the same features as prepare.

The reference is the other road to the same text: prepare the audio into the
competition layout (src.corpus.prepare), load it with SpeechDataset and decode
it. transcribe.py must print exactly those transcripts, for wav and flac.
"""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from src.checkpoint import save_checkpoint
from src.config import Config, DecodingConfig, LASConfig, ModelConfig, to_dict
from src.corpus import prepare as prep
from src.data.dataset import SpeechDataset, collate
from src.decoding import decode_batch
from src.models import build_model
from src.vocab import VOCAB

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(las=LASConfig(conv_channels=16, listener_hidden=16, attention_dim=16, embedding_dim=16,
                                  speller_hidden=32))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SMALL, 28, len(VOCAB))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "family": "las", "model_config": to_dict(SMALL.las), "n_mels": 28,
                           "vocab": list(VOCAB), "config": to_dict(Config())})
    return path, model.eval()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng (see .ci/run)")
    folder = tmp_path_factory.mktemp("audio")
    paths = []
    for i, (text, fmt) in enumerate([("hello there", "wav"), ("the quick brown fox", "flac")]):
        wav = folder / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)  # 22050 Hz: transcribe resamples
        wave, sr = sf.read(wav, dtype="float32")
        path = folder / f"u{i}.{fmt}"
        sf.write(path, wave, sr)
        paths.append(path)
    return paths


def reference_transcripts(paths, model, tmp_path):
    """prepare (manifest) -> SpeechDataset -> decode_batch, in the order of ``paths``."""
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([[str(p), "SOME WORDS", "dev"] for p in paths])
    prep.prepare("manifest", manifest, tmp_path / "out", workers=1, progress=False)
    dataset = SpeechDataset(tmp_path / "out", "dev-clean", normalize="utterance", with_transcripts=False)
    by_name = {dataset[i]["name"]: dataset[i] for i in range(len(dataset))}
    items = [by_name[p.stem] for p in paths]
    return decode_batch(model, collate(items), DecodingConfig(method="greedy"))


def test_transcribe_prints_what_prepare_and_decode_give(checkpoint, audio, tmp_path):
    path, model = checkpoint
    expected = reference_transcripts(audio, model, tmp_path)
    out = subprocess.run(
        [sys.executable, "transcribe.py", str(path), *map(str, audio), "decoding.method=greedy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").split("\n")
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in audio]
    assert [line.split("\t", 1)[1] for line in lines] == expected
    assert all(set(text) <= set(VOCAB[3:]) for text in expected)


@pytest.mark.parametrize("case", ["missing", "not audio", "no checkpoint"])
def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, case):
    path, _ = checkpoint
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(64))
    args = {
        "missing": [str(path), str(tmp_path / "nope.wav")],
        "not audio": [str(path), str(junk)],
        "no checkpoint": [str(tmp_path / "none.pt"), str(junk)],
    }[case]
    out = subprocess.run([sys.executable, "transcribe.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    named = {"missing": "nope.wav", "not audio": "junk.wav", "no checkpoint": "none.pt"}[case]
    assert named in lines[0]
