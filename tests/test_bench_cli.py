"""The bench scripts: a bad number is argparse's one-line error and exit status 2; bench_voices.py's sums."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("bench_accuracy.py", ["--minutes", "0"], "--minutes"),
    ("bench_accuracy.py", ["--beam", "ten"], "--beam"),
    ("bench_accuracy.py", ["--length-penalty", "-1"], "--length-penalty"),
    ("bench_accuracy.py", ["--length-penalty", "inf"], "--length-penalty"),
    ("bench_cores.py", ["--repeat", "0"], "--repeat"),
    ("bench_cores.py", ["--utterances", "-5"], "--utterances"),
    ("bench_ctc_decode.py", ["--beam", "0"], "--beam"),
    ("bench_ctc_prefix.py", ["--frames", "0"], "--frames"),
    ("bench_decode.py", ["--beams", "5", "0"], "--beams"),
    ("bench_decode.py", ["--chars-per-frame", "nan"], "--chars-per-frame"),
    ("bench_fullsize.py", ["--pipeline-seconds", "0"], "--pipeline-seconds"),
    ("bench_fullsize.py", ["--parts", "startup,nothing"], "--parts"),
    ("bench_levenshtein.py", ["--pairs", "0"], "--pairs"),
    ("bench_profile.py", ["--warmup", "-1"], "--warmup"),
    ("bench_reliability.py", ["--kills", "-1"], "--kills"),
    ("bench_train.py", ["--steps", "2.5"], "--steps"),
]


@pytest.mark.parametrize("script, args, option", CASES, ids=[f"{s} {' '.join(a)}" for s, a, _ in CASES])
def test_a_bad_number_is_a_one_line_error(script, args, option):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and f"argument {option}" in error[0], proc.stderr
    assert proc.stdout == ""  # nothing ran


def test_bench_voices_sums_edits_per_speaker(tmp_path):
    """bench_voices.py: a speaker's CER is its summed distances over its summed reference lengths
    (worked out by hand here), best first, and the split line matches the whole split's CER."""
    scores = tmp_path / "scores.tsv"
    scores.write_text("name\tdistance\treference\thypothesis\n"
                      "7-1-0000\t3\tTHE CAT\tTHE BAT\n"       # speaker 7: (3 + 1) / (7 + 3) = 40%
                      "12-5-0001\t1\tA DOG\tA DO\n"           # speaker 12: 1 / 5 = 20%
                      "7-1-0002\t1\tYES\tYE\n")
    speakers = tmp_path / "speakers.tsv"
    speakers.write_text("speaker\tsplit\tengine\tvoice\tvariant\tspeed\tpitch\tutterances\n"
                        "7\tdev-clean\tespeak\tde\tf2\t150\t40\t2\n12\tdev-clean\tflite\tslt\t\t\t\t1\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_voices.py"), str(scores),
                           "--speakers", str(speakers)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].split() == ["12", "flite", "slt", "1", "20.00"]
    assert lines[3].split() == ["7", "espeak", "de", "f2", "150", "40", "2", "40.00"]
    assert lines[4].startswith("split CER 33.33%; per speaker 20.00-40.00%")  # (3 + 1 + 1) / (7 + 5 + 3)
    assert lines[4].endswith("holds 80% of the edits")  # the worse of the two holds 4 of the 5 edits
    missing = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_voices.py"), str(tmp_path / "none.tsv")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "none.tsv" in missing.stderr


def test_bench_accuracy_groups_the_channel_split_by_kind(tmp_path, monkeypatch):
    """The channel rows by kind: an utterance's kind is the first word of its description in
    CORPUS/<split>.tsv (as src.corpus.synth --channel writes it); a split without a table has none."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from bench_accuracy import channel_kinds

    (tmp_path / "dev-clean-channel.tsv").write_text(
        "name\tchannel\n1-1-0000\treverb: RT60 0.63 s\n1-1-0001\tnoise: pink, SNR 10.9 dB\n"
        "1-1-0002\treverb+noise: RT60 0.72 s, pink SNR 18.3 dB\n1-1-0003\treverb: RT60 0.48 s\n")
    names = ["1-1-0003", "1-1-0001", "1-1-0000", "1-1-0002", "9-9-0009"]
    assert channel_kinds(tmp_path, "dev-clean-channel", names) == {
        "reverb": [0, 2], "noise": [1], "reverb+noise": [3], "unknown": [4]}
    assert channel_kinds(tmp_path, "dev-clean", names) == {}
