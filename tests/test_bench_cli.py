"""The bench scripts refuse a bad number with argparse's one-line error and exit status 2."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("bench_accuracy.py", ["--minutes", "0"], "--minutes"),
    ("bench_accuracy.py", ["--beam", "ten"], "--beam"),
    ("bench_cores.py", ["--repeat", "0"], "--repeat"),
    ("bench_cores.py", ["--utterances", "-5"], "--utterances"),
    ("bench_ctc_decode.py", ["--beam", "0"], "--beam"),
    ("bench_ctc_prefix.py", ["--frames", "0"], "--frames"),
    ("bench_decode.py", ["--beams", "5", "0"], "--beams"),
    ("bench_decode.py", ["--chars-per-frame", "nan"], "--chars-per-frame"),
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
