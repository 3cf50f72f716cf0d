"""src.config: defaults, typed overrides, unknown keys with a suggestion, --config swap."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from src.config import (
    DEFAULT_DATA_ROOT,
    Config,
    DataConfig,
    ModelConfig,
    add_config_args,
    dump_yaml,
    load_config,
    model_config_from_dict,
    to_dict,
)
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= flat_keys(v, f"{prefix}{k}.")
    return keys


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.data.root == DEFAULT_DATA_ROOT
    assert cfg.data.n_mels == 28 and isinstance(cfg.data.n_mels, int)
    assert cfg.data.train_partition == "train-clean-100"
    assert isinstance(cfg.training.lr, float) and isinstance(cfg.data.in_memory, bool)


def test_repository_config_yaml_loads_and_names_every_key():
    path = ROOT / "config.yaml"
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # the file spells out every key of the dataclasses (and, by loading, no unknown one)
    assert flat_keys(yaml.safe_load(path.read_text())) == flat_keys(to_dict(Config()))


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["training.lr=3e-4", "model.listener_layers=2", "data.in_memory=true"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "training.lr=3e-4",
            "training.min_lr=1e-6",
            "data.in_memory=true",
            "model.ctc_head=false",
            "model.listener_hidden=128",
            "training.grad_clip=1",
            "data.root=/some/where",
            "training.teacher_forcing.start=0.9",
            "training.teacher_forcing.stages=[[0.9, 0.6]]",
        ],
    )
    assert cfg.training.lr == 3e-4 and type(cfg.training.lr) is float
    assert cfg.training.min_lr == 1e-6 and type(cfg.training.min_lr) is float
    assert cfg.data.in_memory is True
    assert cfg.model.ctc_head is False
    assert cfg.model.listener_hidden == 128 and type(cfg.model.listener_hidden) is int
    assert cfg.training.grad_clip == 1.0 and type(cfg.training.grad_clip) is float
    assert cfg.data.root == "/some/where"
    assert cfg.training.teacher_forcing.start == 0.9
    assert cfg.training.teacher_forcing.stages == [[0.9, 0.6]]
    # untouched keys keep their defaults
    assert cfg.data.n_mels == DataConfig().n_mels and cfg.model.speller_hidden == ModelConfig().speller_hidden


def test_float_written_without_dot_in_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 3e-4\n")  # PyYAML reads this as the string '3e-4'
    cfg = load_config(path)
    assert cfg.training.lr == 3e-4 and type(cfg.training.lr) is float


@pytest.mark.parametrize(
    "text, bad, closest",
    [
        ("training:\n  lr_rate: 0.1\n", "training.lr_rate", "training.lr"),
        ("model:\n  listner_hidden: 64\n", "model.listner_hidden", "model.listener_hidden"),
        ("dataa:\n  n_mels: 40\n", "dataa", "data"),
        ("training:\n  teacher_forcing:\n    strat: 0.5\n", "training.teacher_forcing.strat", "training.teacher_forcing.start"),
    ],
)
def test_unknown_key_in_file_names_the_closest(tmp_path, text, bad, closest):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{bad}'" in msg and f"did you mean '{closest}'" in msg


@pytest.mark.parametrize(
    "override, bad, closest",
    [
        ("model.listner_hidden=64", "model.listner_hidden", "model.listener_hidden"),
        ("data.n_mel=40", "data.n_mel", "data.n_mels"),
        ("trainig.epochs=3", "trainig.epochs", "training.epochs"),
    ],
)
def test_unknown_key_on_command_line_names_the_closest(override, bad, closest):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert "command line" in msg and f"'{bad}'" in msg and f"did you mean '{closest}'" in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.in_memory=3", "data.in_memory"),
        ("model.listener_hidden=1.5", "model.listener_hidden"),
        ("model.listener_hidden=true", "model.listener_hidden"),
        ("training.lr=fast", "training.lr"),
        ("training.lr=true", "training.lr"),
        ("data.root=[a, b]", "data.root"),
        ("training.teacher_forcing.stages=0.5", "training.teacher_forcing.stages"),
    ],
)
def test_wrong_types_are_rejected(override, key):
    with pytest.raises(UserError, match=f"'{key}' expects"):
        load_config(None, [override])


def test_wrong_type_in_file_and_section_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  n_mels: twenty\n")
    with pytest.raises(UserError, match="'data.n_mels' expects int"):
        load_config(path)
    path.write_text("data: 5\n")
    with pytest.raises(UserError, match="'data' must be a mapping"):
        load_config(path)


def test_value_checks():
    with pytest.raises(UserError, match="data.normalize"):
        load_config(None, ["data.normalize=global"])
    with pytest.raises(UserError, match="data.max_frames_per_batch"):
        load_config(None, ["data.max_frames_per_batch=0"])
    with pytest.raises(UserError, match="training.ctc_weight"):
        load_config(None, ["training.ctc_weight=1.5"])
    with pytest.raises(UserError, match="not key=value"):
        load_config(None, ["training.lr"])


def test_config_file_swap_with_argparse(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("data:\n  n_mels: 40\n  normalize: none\nmodel:\n  listener_hidden: 64\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", str(path), "model.listener_hidden=32", "training.epochs=2"])
    cfg = load_config(args.config, args.overrides)
    assert cfg.data.n_mels == 40 and cfg.data.normalize == "none"
    assert cfg.model.listener_hidden == 32  # the command line wins over the file
    assert cfg.training.epochs == 2
    assert cfg.model.speller_hidden == ModelConfig().speller_hidden  # not in the file: default
    assert parser.parse_args([]).config == "config.yaml"


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_model_config_round_trip_from_checkpoint_dict():
    mc = ModelConfig(listener_hidden=96, ctc_head=False)
    assert model_config_from_dict(dataclasses.asdict(mc)) == mc
    with pytest.raises(UserError, match="model.hidden"):
        model_config_from_dict({"hidden": 3})
