"""The house rules that keep the code navigable: imports run one way (import-linter's contracts in
.importlinter), and the training loop stays the loop."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_run_one_way():
    """lint-imports checks .importlinter: the layers, no family importing another, training never
    importing the submission code. A cycle or an upward import fails here."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_broken_layer_is_caught(tmp_path):
    """The contract can fail: a copy of the package whose config imports the training loop is refused."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    config = copy / "src" / "config.py"
    config.write_text(config.read_text() + "\nfrom src.training import loop  # noqa: E402,F401\n")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe, "--config", str(copy / ".importlinter")], cwd=copy, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "src.config is not allowed to import src.training" in proc.stdout, proc.stdout[-2000:]


def test_the_training_loop_is_the_loop():
    lines = (ROOT / "src" / "training" / "loop.py").read_text().count("\n")
    assert lines <= 400, f"src/training/loop.py has {lines} lines: move what is not the loop beside it"
