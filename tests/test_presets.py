"""Presets (configs/*.yaml) and resuming: which preset train.py picks and says, what a preset sets,
resuming from any path, refusing a resume whose settings changed, and a run with nothing to do."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.config import choose_preset, load_config, preset_names, to_dict
from src.errors import UserError
from test_resume import final_weights, make_corpus, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.las.conv_channels=8", "model.las.listener_hidden=8", "model.las.attention_dim=8",
        "model.las.embedding_dim=8", "model.las.speller_hidden=8", "logging.wandb=disabled", "data.num_workers=0",
        "training.device=cpu"]


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid_and_sets_exactly_its_keys(name):
    """Each preset loads over config.yaml, names its source in its header, and the resolved config
    differs from config.yaml's exactly where the preset's file says."""
    path = ROOT / "configs" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith(f"# {name}: ") and "Source:" in text
    preset = flat(yaml.safe_load(text))
    cfg = flat(to_dict(load_config(ROOT / "config.yaml", preset=name)))
    base = flat(to_dict(load_config(ROOT / "config.yaml")))
    assert {k for k in base if base[k] != cfg[k]} == {k for k in preset if preset[k] != base[k]}
    assert all(cfg[k] == v for k, v in preset.items())


def test_auto_picks_by_hardware_and_family(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_preset("auto", ROOT / "config.yaml", [])[0] == "cpu-las"
    assert choose_preset("auto", ROOT / "config.yaml", ["model.family=ds2"])[0] == "cpu-ds2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    name, why = choose_preset("auto", ROOT / "config.yaml", ["model.family=transformer"])
    assert name == "gpu-transformer" and "CUDA GPU" in why
    assert choose_preset("none", ROOT / "config.yaml", [])[0] == "none"
    with pytest.raises(UserError, match="--preset gpu-lass: no such preset; choose one of cpu-ds2"):
        choose_preset("gpu-lass", ROOT / "config.yaml", [])


def test_gpu_las_preset_runs_on_the_cpu_with_three_pblstm_layers(tmp_path):
    """python train.py --preset gpu-las (a budget of seconds) names the preset and saves its config."""
    corpus = make_corpus(tmp_path / "corpus", n_train=8, n_dev=2)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "--preset", "gpu-las", f"data.root={corpus}",
                           f"logging.run_dir={run_dir}", "logging.wandb=disabled", "data.check=false",
                           "training.max_minutes=0.05", "training.final_check=false", "data.num_workers=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == "preset gpu-las (asked for)"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["las"]["listener_layers"] == 3 and saved["model"]["las"]["conv_stride"] == 1
    assert saved["training"]["lr"] == 1e-3 and saved["data"]["max_utterances_per_batch"] == 64


def test_resume_from_any_path_equals_resume_from_last(tmp_path):
    """training.resume_from: a last.pt copied elsewhere continues the run exactly as run_dir/last.pt does."""
    corpus = make_corpus(tmp_path / "corpus")
    same_plan = ("training.scheduler=plateau", "training.specaugment.start=0", "training.specaugment.ramp=0")
    straight, _ = final_weights(tiny_config(corpus, tmp_path / "a", *same_plan))  # nothing depends on the epochs
    final_weights(tiny_config(corpus, tmp_path / "b", *same_plan, "training.epochs=1"))
    uploaded = tmp_path / "upload" / "my_checkpoint.pt"
    uploaded.parent.mkdir()
    (tmp_path / "b" / "last.pt").rename(uploaded)
    resumed, run = final_weights(tiny_config(corpus, tmp_path / "c", *same_plan, f"training.resume_from={uploaded}"))
    assert run.state.epoch == 2
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    with pytest.raises(UserError, match="missing.pt: checkpoint not found"):
        final_weights(tiny_config(corpus, tmp_path / "d", f"training.resume_from={tmp_path / 'missing.pt'}"))


def test_changed_settings_stop_a_resume_unless_asked(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    final_weights(tiny_config(corpus, tmp_path / "a", "training.epochs=1"))
    with pytest.raises(UserError, match=r"last.pt: settings changed since it was written: training.lr 0.003 -> "
                                        r"0.001.*training.resume_changed=true"):
        final_weights(tiny_config(corpus, tmp_path / "a", "training.lr=1e-3"))
    _, run = final_weights(tiny_config(corpus, tmp_path / "a", "training.lr=1e-3", "training.resume_changed=true"))
    assert run.state.epoch == 2
    final_weights(tiny_config(corpus, tmp_path / "a", "training.lr=1e-3", "training.epochs=3"))  # epochs may change


def test_a_run_with_nothing_to_do_leaves_its_config_alone(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    final_weights(tiny_config(corpus, tmp_path / "a", "training.epochs=1"))
    saved = (tmp_path / "a" / "config.yaml").read_bytes()
    _, run = final_weights(tiny_config(corpus, tmp_path / "a", "training.epochs=1", "logging.log_every=7"))
    assert (tmp_path / "a" / "config.yaml").read_bytes() == saved
    assert "nothing to do" in (tmp_path / "a" / "train.log").read_text()
