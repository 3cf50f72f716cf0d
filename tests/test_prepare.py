"""src.corpus.prepare on tiny corpora the tests build, and src.corpus.text.normalize_text."""
import csv
import io
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from src.corpus import prepare as prep
from src.corpus import synth
from src.data.features import load_audio, log_mel
from src.corpus.text import normalize_text
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    ("Hello there, my old friend.", "HELLO THERE MY OLD FRIEND"),
    ("The cat sat on the mat.", "THE CAT SAT ON THE MAT"),
    ("Don't panic; it's only a test!", "DON'T PANIC IT'S ONLY A TEST"),
    ("A café-bar, near the sea.", "A CAFE BAR NEAR THE SEA"),
]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


# --------------------------------------------------------------------------
# Text


@pytest.mark.parametrize("raw, expected", [
    ("Don't panic -- it's only a café/bar!", "DON'T PANIC IT'S ONLY A CAFE BAR"),
    ("  hello,   WORLD.  ", "HELLO WORLD"),
    ("'Quoted,' she said.", "QUOTED SHE SAID"),
    ("the boys' toys", "THE BOYS' TOYS"),
    ("don\u2019t", "DON'T"),
    ("Straße und Ærø", "STRASSE UND AERO"),
    ("naïve\tco-op", "NAIVE CO OP"),
    ("Call 911", None),
    ("x\u00b2", None),
    ("tom & jerry", None),
    ("Привет мир", None),
    ("...", None),
    ("", None),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalized_text_uses_only_the_alphabet():
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")
    for raw in ["Ça va? Très bien!", "rock 'n' roll", "it's 'the' end'", "A -- B // C"]:
        out = normalize_text(raw)
        assert out is not None and set(out) <= allowed and "  " not in out and out == out.strip()


# --------------------------------------------------------------------------
# Fixtures: espeak-ng speech saved in the formats the corpora use


@pytest.fixture(scope="module")
def waves():
    """Four espeak-ng utterances: list of ((N,) float32 at 22050 Hz, raw text, normalised text)."""
    out = []
    for raw, norm in SENTENCES:
        data = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", raw], check=True, capture_output=True).stdout
        wave, sr = sf.read(io.BytesIO(data), dtype="float32")
        assert sr == 22050
        out.append((wave, raw, norm))
    return out


def write_audio(path: Path, wave: np.ndarray, sr: int = 22050) -> None:
    """Save ``wave`` as wav/flac/mp3 by the file's extension (mp3 via libsndfile, else sox/ffmpeg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp3":
        if "MP3" in sf.available_formats():
            sf.write(path, wave, sr, format="MP3")
            return
        wav = path.with_suffix(".src.wav")
        sf.write(wav, wave, sr, subtype="PCM_16")
        tool = shutil.which("ffmpeg") or shutil.which("sox")
        if tool is None:
            pytest.skip("this libsndfile cannot write MP3 and neither ffmpeg nor sox is installed")
        if "ffmpeg" in tool:
            cmd = [tool, "-loglevel", "error", "-i", str(wav), str(path)]
        else:
            cmd = [tool, str(wav), str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
        wav.unlink()
        return
    sf.write(path, wave, sr, subtype="PCM_16")


def outputs(out: Path) -> dict[str, list[str]]:
    """split -> sorted feature file stems."""
    return {d.name: sorted(p.stem for p in (d / "mfcc").glob("*.npy")) for d in sorted(out.iterdir()) if d.is_dir()}


def transcript(out: Path, split: str, name: str) -> str:
    tokens = np.load(out / split / "transcripts" / f"{name}.npy")
    assert tokens[0] == "<sos>" and tokens[-1] == "<eos>" and all(len(t) == 1 for t in tokens[1:-1])
    return "".join(tokens[1:-1])


def reference_split(key: str) -> str:
    bucket = zlib.crc32(key.encode()) % 100
    return "train-clean-100" if bucket < 90 else "dev-clean" if bucket < 95 else "test-clean"


# --------------------------------------------------------------------------
# Formats


def make_librispeech(root: Path, split: str, waves, speaker: int) -> None:
    """SPEAKER/CHAPTER/*.flac + trans.txt; plus an unmappable line, a corrupt file, a missing file."""
    chapter = root / split / str(speaker) / "100"
    lines = []
    for i, (wave, _, norm) in enumerate(waves):
        utt = f"{speaker}-100-{i:04d}"
        write_audio(chapter / f"{utt}.flac", wave)
        lines.append(f"{utt} {norm}")
    bad_text = f"{speaker}-100-0010"
    write_audio(chapter / f"{bad_text}.flac", waves[0][0])
    lines.append(f"{bad_text} CHAPTER 11 BEGINS")
    corrupt = f"{speaker}-100-0011"
    (chapter / f"{corrupt}.flac").write_bytes(b"fLaC" + os.urandom(300))
    lines.append(f"{corrupt} THIS FILE IS BROKEN")
    lines.append(f"{speaker}-100-0012 THIS FILE IS MISSING")
    (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_split_folder_and_parent_folder(tmp_path, waves):
    src = tmp_path / "LibriSpeech"
    make_librispeech(src, "dev-clean", waves[:2], speaker=84)
    make_librispeech(src, "test-clean", waves[2:], speaker=61)
    out1 = tmp_path / "one"
    summary = prep.prepare("librispeech", src / "dev-clean", out1, progress=False)
    assert outputs(out1) == {"dev-clean": ["84-100-0000", "84-100-0001"]}
    assert summary.skipped == {"unmappable text": 1, "unreadable audio": 1, "missing audio": 1}
    assert transcript(out1, "dev-clean", "84-100-0001") == SENTENCES[1][1]
    with open(out1 / "prepare_skipped.tsv") as f:
        assert sorted(r["reason"] for r in csv.DictReader(f, delimiter="\t")) == [
            "missing audio", "unmappable text", "unreadable audio"]

    out2 = tmp_path / "all"
    summary = prep.prepare("librispeech", src, out2, progress=False)
    assert outputs(out2) == {"dev-clean": ["84-100-0000", "84-100-0001"], "test-clean": ["61-100-0000", "61-100-0001"]}
    assert transcript(out2, "test-clean", "61-100-0000") == SENTENCES[2][1]  # test keeps transcripts
    assert sum(summary.skipped.values()) == 6 and sum(summary.written.values()) == 4
    assert abs(summary.seconds - sum(w.size for w, _, _ in waves) / 22050) < 1e-6


def test_ljspeech_uses_the_normalised_column_and_a_hash_split(tmp_path, waves):
    src = tmp_path / "LJSpeech-1.1"
    rows = []
    for i, (wave, raw, norm) in enumerate(waves):
        utt = f"LJ001-{i:04d}"
        write_audio(src / "wavs" / f"{utt}.wav", wave)
        rows.append(f"{utt}|{raw.upper()} 1|{raw}")  # column 2 has a digit; column 3 is used
    (src / "metadata.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = prep.prepare("ljspeech", src, out, progress=False)
    assert not summary.skipped and sum(summary.written.values()) == 4
    for i, (_, _, norm) in enumerate(waves):
        utt = f"LJ001-{i:04d}"
        split = reference_split(utt)
        assert (out / split / "mfcc" / f"{utt}.npy").is_file()
        assert transcript(out, split, utt) == norm
    assert {reference_split(f"LJ{i:03d}-0001") for i in range(400)} == {"train-clean-100", "dev-clean", "test-clean"}


def test_commonvoice_mp3_clips(tmp_path, waves):
    src = tmp_path / "cv" / "en"
    src.mkdir(parents=True)
    for tsv, indices in [("train", [0, 1]), ("dev", [2]), ("test", [3])]:
        lines = ["client_id\tpath\tsentence\tup_votes"]
        for i in indices:
            write_audio(src / "clips" / f"common_voice_en_{i}.mp3", waves[i][0])
            lines.append(f"abc\tcommon_voice_en_{i}.mp3\t{waves[i][1]}\t2")
        (src / f"{tsv}.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = prep.prepare("commonvoice", src, out, progress=False)
    assert not summary.skipped
    assert outputs(out) == {"dev-clean": ["common_voice_en_2"], "test-clean": ["common_voice_en_3"],
                            "train-clean-100": ["common_voice_en_0", "common_voice_en_1"]}
    assert transcript(out, "dev-clean", "common_voice_en_2") == SENTENCES[2][1]
    feats = np.load(out / "train-clean-100" / "mfcc" / "common_voice_en_0.npy")
    # mp3 is lossy and adds encoder delay: compare lengths, not values
    assert feats.shape[1] == 28 and abs(feats.shape[0] - (1 + waves[0][0].size * 16000 // 22050 // 160)) < 15


def test_manifest_features_equal_synth_features_and_workers(tmp_path):
    if not synth.FORTUNES_DIR.is_dir():
        pytest.skip("fortunes are not installed")
    jobs = synth.plan_corpus({"train-clean-100": 3}, seed=7, sentences=[("THE END OF THE DAY", "the end of the day."),
                                                                        ("A QUIET NIGHT IN", "a quiet night in.")])
    src = tmp_path / "corpus"
    rows = [["path", "text", "split"]]
    for job in jobs:
        wave, sr = synth.speak(job)
        write_audio(src / "audio" / f"{job.name}.wav", wave, sr)  # 16-bit: exactly espeak's samples
        rows.append([f"audio/{job.name}.wav", job.text, "train"])
    with open(src / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    summary = prep.prepare("manifest", src / "manifest.csv", out, workers=2, progress=False)
    assert summary.written == {"train-clean-100": 3}
    for job in jobs:
        synth_feats = log_mel(*synth.speak(job))
        np.testing.assert_array_equal(np.load(out / "train-clean-100" / "mfcc" / f"{job.name}.npy"), synth_feats)
        assert transcript(out, "train-clean-100", job.name) == job.text


def test_interrupted_run_resumes_without_redoing_or_duplicating(tmp_path, waves):
    src = tmp_path / "corpus"
    rows = []
    for i, (wave, raw, _) in enumerate(waves):
        write_audio(src / f"u{i}.wav", wave)
        rows.append(f"u{i}.wav,\"{raw}\",dev")
    (src / "bad.wav").write_bytes(b"RIFF" + os.urandom(100))
    rows.append("bad.wav,fine words,dev")
    (src / "list.csv").write_text("\n".join(rows[:2]) + "\n")
    out = tmp_path / "out"
    first = prep.prepare("manifest", src / "list.csv", out, progress=False)  # the run that got cut short
    assert sum(first.written.values()) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    # what a kill leaves: a half-written .tmp, and a transcript whose features never landed
    mfcc = out / "dev-clean" / "mfcc"
    (mfcc / "u2.npy.tmp").write_bytes(b"\x93NUMPY half")
    np.save(out / "dev-clean" / "transcripts" / "u3.npy", np.array(["<sos>", "X", "<eos>"]))
    (src / "list.csv").write_text("\n".join(rows) + "\n")
    second = prep.prepare("manifest", src / "list.csv", out, progress=False)
    assert second.already_done == 2 and sum(second.written.values()) == 2
    assert second.skipped == {"unreadable audio": 1}
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing redone
    assert outputs(out) == {"dev-clean": ["u0", "u1", "u2", "u3"]}
    assert not list(out.rglob("*.tmp"))
    assert transcript(out, "dev-clean", "u3") == SENTENCES[3][1]
    np.testing.assert_array_equal(np.load(mfcc / "u2.npy"), log_mel(*load_audio(src / "u2.wav")))
    third = prep.prepare("manifest", src / "list.csv", out, progress=False)
    assert third.already_done == 4 and not third.written and third.skipped == {"unreadable audio": 1}


def test_empty_and_too_long_audio_are_skipped(tmp_path):
    src = tmp_path / "c"
    src.mkdir()
    sf.write(src / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(src / "long.wav", np.zeros(16000 * 3, np.float32), 16000)
    (src / "m.csv").write_text("empty.wav,hello there,train\nlong.wav,hello there,train\n")
    summary = prep.prepare("manifest", src / "m.csv", tmp_path / "out", max_seconds=2.0, progress=False)
    assert summary.skipped == {"empty audio": 1, "too long": 1} and not summary.written


def test_user_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        prep.prepare("librispeech", tmp_path / "nope", tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="unknown FORMAT"):
        prep.prepare("timit", tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="trans.txt"):
        prep.prepare("librispeech", tmp_path, tmp_path / "out", progress=False)
    result = subprocess.run([sys.executable, "-m", "src.corpus.prepare", "timit", str(tmp_path), str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: unknown FORMAT 'timit'")
