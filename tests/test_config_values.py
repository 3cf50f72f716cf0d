"""Every setting is checked where it is read: numeric and enumerated settings have a declared range
(each config class's RANGES), every bad value is a one-line UserError naming the key, and nothing
reaches torch. Driven by hypothesis over every field."""
import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.config import Config, _field_types, _type_of, allowed, load_config
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def leaves(cls=Config, prefix=""):
    """(dotted key, type, the RANGES spec or None) of every setting."""
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            yield from leaves(typ, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", typ, getattr(cls, "RANGES", {}).get(name)


LEAVES = list(leaves())
NUMERIC = [(k, t, s) for k, t, s in LEAVES if t in (int, float)]


def test_every_numeric_setting_declares_its_range_and_every_default_is_in_it():
    assert len(NUMERIC) > 60
    missing = [k for k, t, s in NUMERIC if s is None]
    assert not missing, f"no RANGES entry for {missing}"
    defaults = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(Config())))
    for key, _, spec in LEAVES:
        if spec is not None:
            value = defaults
            for part in key.split("."):
                value = value[part]
            assert allowed(spec, value), (key, value, spec)


def test_the_spec_language_against_hand_written_cases():
    assert allowed("[0, 1]", 0) and allowed("[0, 1]", 1.0) and not allowed("[0, 1]", 1.0000001)
    assert allowed("(0, 1]", 1) and not allowed("(0, 1]", 0.0) and not allowed("[0, 1)", 1.0)
    assert not allowed("[0, 1]", math.nan) and not allowed("[0, 1e9]", math.inf) and not allowed("[0, 1]", True)
    assert allowed("-1 | [0, 1]", -1.0) and allowed("-1 | [0, 1]", 0.5) and not allowed("-1 | [0, 1]", -0.5)
    assert allowed("gru | lstm", "lstm") and not allowed("gru | lstm", "rnn") and allowed("2 | 4", 4)
    assert allowed("auto | [0, 256]", "auto") and allowed("auto | [0, 256]", "3") and not allowed("auto | [0, 256]", "-1")


BAD = st.one_of(
    st.integers(max_value=-1), st.just(0), st.just(0.0), st.floats(max_value=-1e-9, allow_nan=False),
    st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.sampled_from([10**12, 1e30, 2**70]),
    st.text(min_size=1, max_size=5), st.booleans(), st.just([1, 2]), st.just({"a": 1}),
)


def as_override(key: str, value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={'.nan' if math.isnan(value) else ('.inf' if value > 0 else '-.inf')}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC), BAD)
def test_negative_zero_nan_infinite_huge_and_wrong_typed_values(leaf, value):
    """Each value is refused in one line naming the key, unless the declared range admits it; then
    the config holds exactly that value."""
    key, typ, spec = leaf
    override = as_override(key, value)
    try:
        cfg = load_config(None, [override])
    except UserError as err:
        message = str(err)
        assert "\n" not in message and key.split(".")[-1] in message, (override, message)
        return
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert isinstance(got, typ) and allowed(spec, got), (override, got)


@pytest.mark.parametrize("override", ["model.las.listener_hidden=-5", "training.lr=-1",
                                      "model.las.locked_dropout=1.5", "decoding.beam_size=.nan",
                                      "model.transformer.heads=0", "training=3"])
def test_the_entry_point_exits_2_with_one_line(override, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", override, f"logging.run_dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert override.split("=")[0] in proc.stderr and "command line" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_with_out_of_range_sizes_is_refused_before_torch_sees_them(tmp_path):
    from src.checkpoint import family_config_from_dict

    with pytest.raises(UserError, match="ckpt.pt: 'model.las.listener_hidden' must be"):
        family_config_from_dict("las", {"listener_hidden": 10**9}, "ckpt.pt")


def test_types_of_the_model_sections_are_known():
    assert _type_of("model.las.listener_hidden") is int and typing.get_origin(_type_of("training.teacher_forcing.stages")) in (None, list)
