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
    add_config_args,
    dump_yaml,
    load_config,
    to_dict,
)
from src.errors import UserError
from src.models.las import LASConfig

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
    cfg = load_config(None, ["training.lr=3e-4", "model.las.listener_layers=2", "data.in_memory=true"])
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
            "model.las.ctc_head=false",
            "model.las.listener_hidden=128",
            "training.grad_clip=1",
            "data.root=/some/where",
            "training.teacher_forcing.start=0.9",
            "training.teacher_forcing.stages=[[0.9, 0.6]]",
        ],
    )
    assert cfg.training.lr == 3e-4 and type(cfg.training.lr) is float
    assert cfg.training.min_lr == 1e-6 and type(cfg.training.min_lr) is float
    assert cfg.data.in_memory is True
    assert cfg.model.las.ctc_head is False
    assert cfg.model.las.listener_hidden == 128 and type(cfg.model.las.listener_hidden) is int
    assert cfg.training.grad_clip == 1.0 and type(cfg.training.grad_clip) is float
    assert cfg.data.root == "/some/where"
    assert cfg.training.teacher_forcing.start == 0.9
    assert cfg.training.teacher_forcing.stages == [[0.9, 0.6]]
    # untouched keys keep their defaults
    assert cfg.data.n_mels == DataConfig().n_mels and cfg.model.las.speller_hidden == LASConfig().speller_hidden


def test_float_written_without_dot_in_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 3e-4\n")  # PyYAML reads this as the string '3e-4'
    cfg = load_config(path)
    assert cfg.training.lr == 3e-4 and type(cfg.training.lr) is float


@pytest.mark.parametrize(
    "text, bad, closest",
    [
        ("training:\n  lr_rate: 0.1\n", "training.lr_rate", "training.lr"),
        ("model:\n  las:\n    listner_hidden: 64\n", "model.las.listner_hidden", "model.las.listener_hidden"),
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
        ("model.las.listner_hidden=64", "model.las.listner_hidden", "model.las.listener_hidden"),
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
        ("model.las.listener_hidden=1.5", "model.las.listener_hidden"),
        ("model.las.listener_hidden=true", "model.las.listener_hidden"),
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
    with pytest.raises(UserError, match="training.decay_fraction"):
        load_config(None, ["training.scheduler=wsd", "training.decay_fraction=0"])
    with pytest.raises(UserError, match="training.specaugment.freq_warp"):
        load_config(None, ["training.specaugment.freq_warp=0.6"])
    with pytest.raises(UserError, match="training.specaugment.time_stretch"):
        load_config(None, ["training.specaugment.time_stretch=-0.1"])
    with pytest.raises(UserError, match="training.specaugment.perturb"):
        load_config(None, ["training.specaugment.perturb=sometimes"])
    with pytest.raises(UserError, match="not key=value"):
        load_config(None, ["training.lr"])
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(UserError, match=r"'data.num_workers' must be auto \| \[0, 256\]"):
            load_config(None, [f"data.num_workers={bad}"])


def test_config_file_swap_with_argparse(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("data:\n  n_mels: 40\n  normalize: none\nmodel:\n  las:\n    listener_hidden: 64\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", str(path), "model.las.listener_hidden=32", "training.epochs=2"])
    cfg = load_config(args.config, args.overrides)
    assert cfg.data.n_mels == 40 and cfg.data.normalize == "none"
    assert cfg.model.las.listener_hidden == 32  # the command line wins over the file
    assert cfg.training.epochs == 2
    assert cfg.model.las.speller_hidden == LASConfig().speller_hidden  # not in the file: default
    assert parser.parse_args([]).config == "config.yaml"


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_family_config_round_trip_from_checkpoint_dict():
    from src.checkpoint import family_config_from_dict

    las = LASConfig(listener_hidden=96, ctc_head=False)
    assert family_config_from_dict("las", dataclasses.asdict(las), "ckpt") == las
    with pytest.raises(UserError, match="model.las.hidden"):
        family_config_from_dict("las", {"hidden": 3}, "ckpt")


@pytest.mark.parametrize(
    "override, new",
    [("model.listener_hidden=64", "model.las.listener_hidden"), ("model.conv_stride=1", "model.las.conv_stride"),
     ("decoding.max_length_ratio=2.0", "decoding.max_chars_per_frame")],
)
def test_renamed_keys_say_what_they_are_now_called(tmp_path, override, new):
    with pytest.raises(UserError, match=f"is now called '{new}") as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)
    key, value = override.split("=")
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")  # a config file of the old layout
    with pytest.raises(UserError, match=f"{path}: '{key}' is now called '{new}"):
        load_config(path)


def test_model_family_must_be_registered_and_las_settings_are_checked_once():
    with pytest.raises(UserError, match="model.family.*las"):
        load_config(None, ["model.family=nope"])
    with pytest.raises(UserError, match="model.las.ctc_layer"):
        load_config(None, ["model.las.listener_layers=2", "model.las.ctc_layer=3"])
    with pytest.raises(UserError, match="training.epochs"):
        load_config(None, ["training.epochs=0"])
