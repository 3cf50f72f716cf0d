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
from src.config import Config, DecodingConfig, ModelConfig, to_dict
from src.models.las import LASConfig
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


# --------------------------------------------------------------------------
# audio without speech: a warning and an empty transcript, never invented text


def _write(path: Path, wave, sr: int = 16000, subtype: str | None = None) -> Path:
    sf.write(path, np.asarray(wave, dtype=np.float32), sr, subtype=subtype)
    return path


def _no_speech_files(folder: Path, speech: Path) -> list[Path]:
    wave, sr = sf.read(speech, dtype="float32")
    rng = np.random.default_rng(3)
    return [
        _write(folder / "silence30s.wav", np.zeros(30 * 16000)),
        _write(folder / "hiss.flac", 1e-3 * rng.standard_normal(3 * 16000)),  # -60 dBFS white noise
        _write(folder / "clip50ms.wav", wave[len(wave) // 3:][: int(0.05 * sr)], sr),  # 0.05 s of the speech
        _write(folder / "one_sample.wav", [0.25]),
        _write(folder / "no_samples.wav", np.zeros(0)),
    ]


def test_no_speech_gets_a_warning_and_an_empty_transcript(checkpoint, audio, tmp_path):
    path, model = checkpoint
    silent = _no_speech_files(tmp_path, audio[0])
    files = [silent[0], audio[0], *silent[1:], audio[1]]
    (tmp_path / "ref").mkdir()
    expected = reference_transcripts(audio, model, tmp_path / "ref")  # the speech files as before
    out = subprocess.run(
        [sys.executable, "transcribe.py", str(path), *map(str, files), "decoding.method=greedy"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr  # at least one file was transcribed
    lines = out.stdout.rstrip("\n").split("\n")
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in files]
    texts = {line.split("\t")[0]: line.split("\t", 1)[1] for line in lines}
    assert [texts[str(p)] for p in audio] == expected
    assert all(texts[str(p)] == "" for p in silent)
    warned = out.stderr.strip().splitlines()
    assert len(warned) == len(silent), out.stderr
    for p, line in zip(silent, warned):
        assert line.startswith(f"{p}: no speech found (") and line.endswith("); nothing transcribed"), line
    assert "below -55 dBFS" in warned[0] and "shorter than 0.1 s" in warned[2]


def test_only_silence_exits_1(checkpoint, audio, tmp_path, capsys):
    from src.errors import run_cli
    from src.transcribe import main

    path, _ = checkpoint
    silent = _no_speech_files(tmp_path, audio[0])[:2]
    with pytest.raises(SystemExit) as code:
        run_cli(lambda: main([str(path), *map(str, silent)]))
    assert code.value.code == 1  # nothing transcribed: not an error (2), not success (0)
    captured = capsys.readouterr()
    assert captured.out == "".join(f"{p}\t\n" for p in silent)
    assert [line.split(": no speech found")[0] for line in captured.err.splitlines()] == [str(p) for p in silent]


def test_transcripts_are_bounded_by_what_the_audio_can_hold(checkpoint, audio, monkeypatch):
    """Whatever a decoder returns, a file gets at most max(16, ceil(0.25 * frames)) characters: the length
    policy is applied once, in src/decoding, over every decoder."""
    import src.transcribe as tr
    from src.data.features import load_audio, log_mel

    path, _ = checkpoint
    monkeypatch.setattr("src.decoding.greedy_decode", lambda model, encoded, max_lens: [[3] * 5000 for _ in max_lens])
    texts = tr.transcribe(path, list(audio), DecodingConfig(method="greedy"))
    for p, text in zip(audio, texts):
        frames = log_mel(*load_audio(p)).shape[0]
        assert len(text) == max(16, -(-frames // 4)), (p, frames, len(text))


# --------------------------------------------------------------------------
# unreadable audio: the message says what is wrong with this file


def _bad_audio(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """case -> (file, words the one-line error must hold)."""
    folder.mkdir(exist_ok=True)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    broken = folder / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVE")
    text = folder / "notes.m4a"
    text.write_text("not audio at all\n")
    nan = _write(folder / "nan.wav", np.r_[np.zeros(800), np.nan, 0.5 * np.ones(800)], subtype="FLOAT")
    sub = folder / "takes.wav"
    sub.mkdir()
    return {
        "zero bytes": (empty, ["empty file (0 bytes)", "re-export or re-record it"]),
        "damaged wav": (broken, ["damaged or is not really .wav", "re-export it"]),
        "unsupported format": (text, [".m4a is not a format soundfile reads", "convert it to wav or flac"]),
        "NaN samples": (nan, ["1 NaN or Inf samples", "re-export"]),
        "a folder": (sub, ["is a folder, not an audio file"]),
    }


@pytest.mark.parametrize("case", ["zero bytes", "damaged wav", "unsupported format", "NaN samples", "a folder"])
def test_unreadable_audio_message_is_accurate(checkpoint, tmp_path, capsys, case):
    from src.errors import run_cli
    from src.transcribe import main

    path, _ = checkpoint
    bad, words = _bad_audio(tmp_path / "audio")[case]
    with pytest.raises(SystemExit) as code:
        run_cli(lambda: main([str(path), str(bad)]))
    assert code.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), lines
    assert all(w in lines[0] for w in words), lines[0]
    if case in ("zero bytes", "NaN samples", "a folder"):
        assert "convert" not in lines[0]  # converting would not help


def test_empty_wav_end_to_end(checkpoint, tmp_path):
    path, _ = checkpoint
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = subprocess.run([sys.executable, "transcribe.py", str(path), str(empty)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"error: {empty}: empty file (0 bytes), it holds no audio; re-export or re-record it"]
