"""The Kaggle commands without credentials, and that nothing imports kaggle at module level."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src import kaggle as kaggle_cli
from src.errors import UserError
from src.submission import write_submission

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_ENV = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in KAGGLE_ENV:
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_ENV}
    env["HOME"] = str(home)
    return env


def test_download_without_credentials_is_one_line_and_exit_2(no_credentials):
    proc = subprocess.run([sys.executable, "-m", "src.kaggle", "download", "--dir", str(no_credentials / "data")],
                          cwd=ROOT, env=clean_env(no_credentials), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "~/.kaggle/kaggle.json" in lines[0] and "chmod 600" in lines[0]
    assert "kaggle.com/settings" in lines[0]
    assert not (no_credentials / "data").exists()


def test_no_credentials_never_imports_kaggle(no_credentials):
    code = (
        "import sys\n"
        "from src import kaggle as k\n"
        "from src.errors import UserError\n"
        "try:\n"
        "    k.main(['submit', '--file', sys.argv[1]])\n"
        "except UserError as e:\n"
        "    print('USERERROR', e)\n"
        "print('IMPORTED' if 'kaggle' in sys.modules else 'NOT IMPORTED')\n"
    )
    sub = write_submission(no_credentials / "sub.csv", ["HELLO", "WORLD"])
    proc = subprocess.run([sys.executable, "-c", code, str(sub)], cwd=ROOT, env=clean_env(no_credentials),
                          capture_output=True, text=True, timeout=60)
    assert "USERERROR no Kaggle credentials" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "NOT IMPORTED"


@pytest.mark.parametrize("setup", ["json", "env", "config_dir"])
def test_credentials_are_found_where_kaggle_looks(no_credentials, monkeypatch, setup):
    assert kaggle_cli.credential_source() is None
    if setup == "json":
        (no_credentials / ".kaggle").mkdir()
        (no_credentials / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    elif setup == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", "u")
        monkeypatch.setenv("KAGGLE_KEY", "k")
    else:
        cfg = no_credentials / "elsewhere"
        cfg.mkdir()
        (cfg / "kaggle.json").write_text("{}")
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    assert kaggle_cli.credential_source() is not None


def test_submit_checks_the_file_first(no_credentials):
    bad = no_credentials / "bad.csv"
    bad.write_text("index,label\n0,hello\n")
    with pytest.raises(UserError, match="not allowed"):
        kaggle_cli.main(["submit", "--file", str(bad)])


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported by statements that run at import time (not inside def/class bodies)."""
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


def test_nothing_imports_kaggle_at_module_level():
    files = sorted((ROOT / "src").rglob("*.py")) + [p for p in ROOT.glob("*.py")]
    assert files
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if "kaggle" in _module_level_imports(ast.parse(p.read_text(), filename=str(p)))]
    assert offenders == []
    # and the helper does see a module-level import when there is one
    assert "kaggle" in _module_level_imports(ast.parse("try:\n    import kaggle\nexcept ImportError:\n    pass\n"))
    assert "kaggle" not in _module_level_imports(ast.parse("def f():\n    import kaggle\n"))
