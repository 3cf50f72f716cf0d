"""Argument types shared by the bench scripts: a bad number ends in argparse's one-line
``error: argument --beam: ...`` and exit status 2, never a traceback half way through a run."""
from __future__ import annotations

import argparse


def _number(text: str, kind: type, low: float, strict: bool, what: str, finite: bool = False):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low or (strict and value == low) or value != value or finite and value == float("inf"):  # NaN, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def count(text: str) -> int:
    """An integer of at least 1 (utterances, repeats, beam sizes, steps)."""
    return _number(text, int, 1, False, "a whole number of at least 1")


def natural(text: str) -> int:
    """An integer of at least 0 (warmup steps, "0 = all")."""
    return _number(text, int, 0, False, "a whole number of at least 0")


def positive(text: str) -> float:
    """A number above 0 (minutes, rates)."""
    return _number(text, float, 0.0, True, "a number above 0")


def non_negative(text: str) -> float:
    """A finite number of at least 0 (weights, penalties)."""
    return _number(text, float, 0.0, False, "a finite number of at least 0", finite=True)


def preset_list(text: str) -> list[str]:
    """``--presets a,b``: names of configs/NAME.yaml (UserError, one line, naming the unknown ones)."""
    from src.config import preset_names
    from src.errors import UserError

    presets = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in presets if p not in preset_names()]
    if unknown or not presets:
        raise UserError(f"--presets {text}: no such preset {', '.join(unknown)}; "
                        f"choose from {', '.join(preset_names())}")
    return presets
