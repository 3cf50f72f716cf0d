"""bench/gpu_check.py on the CPU (--device cpu --tiny): every GPU preset trains with a finite, falling
loss in fp32 (and bf16 where the CPU can), its worst batch passes the memory probe, it decodes at a
measured speed; fp16 and torchrun are skipped with a line; nothing heavy is imported."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("gpu-las", "gpu-transformer", "gpu-ds2")
FORBIDDEN = ("wandb", "kaggle", "soundfile", "torchaudio", "espeak", "matplotlib")
# Runs the script as __main__, then names any forbidden module it imported (after the table).
RUNNER = (f"import os, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
          f"try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
          f"finally:\n    print('imported:', sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))")


def rows_of(table: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in PRESETS:
            rows[(cells[0], cells[1])] = cells
    return rows


def test_the_cpu_path_trains_probes_and_decodes_every_gpu_preset(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "imported: []" in proc.stdout, proc.stdout[-500:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fp16: skipped, fp16 autocast needs CUDA" in proc.stdout
    table = out.read_text()
    assert table.strip() in proc.stdout
    rows = rows_of(table)
    for preset in PRESETS:
        train = rows[(preset, "train fp32")]
        assert train[2] == "yes"
        first, last = map(float, re.search(r"loss (\S+) -> (\S+) ", train[5]).groups())
        assert math.isfinite(first) and math.isfinite(last) and last < first, train
        assert float(train[3]) > 0  # utt/s
        assert rows[(preset, "OOM probe fp32")][2] == "yes"
        decode = [cells for (p, check), cells in rows.items() if p == preset and check.startswith("decode beam")]
        assert len(decode) == 1 and decode[0][2] == "yes" and float(decode[0][3]) > 0, decode
    assert rows[(PRESETS[0], "torchrun 2 GPUs")][2] == "skipped"
    assert all(cells[2] in ("yes", "skipped") for cells in rows.values())


def test_a_bad_option_is_a_one_line_error():
    for args, needle in ((["--steps", "0"], "argument --steps"), (["--presets", "gpu-lass", "--device", "cpu"],
                                                                  "--presets gpu-lass: no such preset")):
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and needle in errors[0] and proc.stdout == "", proc.stderr
