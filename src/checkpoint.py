"""Checkpoints: what they hold, written atomically, read without running code, the model rebuilt
from the file alone.

A checkpoint is a dict saved with ``torch.save`` and read with ``weights_only=True``, so it holds only
tensors and plain containers (a file whose unpickling would call anything else is refused):

    model         state_dict of the (unwrapped) model                      } WEIGHTS_KEYS: every
    family        the model family (src/models/registry.py)                } checkpoint, the epoch
    model_config  dict of that family's config section: every size         } snapshots and averaged
    front_end     {"n_mels": D, "normalize": how features were normalised} } ones included
    n_mels        D again
    vocab         list[str], the output vocabulary (id -> token)
    config        the full resolved config (dict)
    metrics       the dev figures when it was written
    optimizer, scheduler, scaler, train_state, rng     last.pt and best.pt only (resume)

Files of earlier versions are brought to this layout by src/compat.py when read. A checkpoint with a
NaN or infinite weight is never written, and loading one is a one-line error.

    python -m src.checkpoint upgrade OLD.pt --trust     # a file from before weights_only loading, re-saved
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from src.atomic import atomic_write
from src.compat import upgrade_checkpoint
from src.config import build_section
from src.errors import UserError, first_line, run_cli
from src.models.registry import families, get_family
from src.vocab import VOCAB

REQUIRED_KEYS = ("model", "model_config", "n_mels", "vocab")
WEIGHTS_KEYS = ("model", "family", "model_config", "front_end", "n_mels", "vocab", "config")
SNAPSHOT = "epoch_{:03d}.pt"  # the weights after an epoch, for averaging (training.keep_epochs)
SNAPSHOT_RE = re.compile(r"^epoch_(\d{3,})\.pt$")


class FrontEnd(NamedTuple):
    """How features must look for a model: dimension D and the normalisation it was trained with."""

    n_mels: int
    normalize: str


# --------------------------------------------------------------------------
# What a checkpoint holds


def model_payload(model: nn.Module, family: str, family_cfg: Any, data_cfg: Any, config: dict) -> dict[str, Any]:
    """The WEIGHTS_KEYS of a checkpoint: the weights and everything that rebuilds the model from them."""
    return {
        "model": model.state_dict(),
        "family": family,
        "model_config": dataclasses.asdict(family_cfg),
        "front_end": {"n_mels": data_cfg.n_mels, "normalize": data_cfg.normalize},
        "n_mels": data_cfg.n_mels,
        "vocab": list(VOCAB),
        "config": config,
    }


def weights_only(payload: dict[str, Any], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint payload cut down to WEIGHTS_KEYS (plus ``metrics``): no training state."""
    out = {k: payload[k] for k in WEIGHTS_KEYS if k in payload}
    out["metrics"] = dict(metrics if metrics is not None else payload.get("metrics") or {})
    return out


def snapshots(run_dir: Path) -> list[Path]:
    """The run's epoch snapshots, oldest first (by epoch number)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("epoch_*.pt") if (m := SNAPSHOT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_snapshots(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch snapshots."""
    for old in snapshots(run_dir)[:-keep] if keep > 0 else snapshots(run_dir):
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Writing and reading


def non_finite_tensor(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or None."""
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; refuse (UserError) model weights that are not finite,
    so a broken model never replaces a good file."""
    path = Path(path)
    bad = non_finite_tensor(payload.get("model", {}))
    if bad is not None:
        raise UserError(f"{path}: not written: weight {bad} is NaN or infinite (training diverged); the previous "
                        "checkpoint is kept: lower training.lr or raise training.warmup_steps and resume")
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint (UserError on a missing, corrupt or unsafe file). Nothing in the file runs:
    it is read with ``weights_only=True`` unless ``trust`` (the upgrade command) says otherwise."""
    path = Path(path)
    if not path.is_file():
        hint = "train first (python train.py) or pass the right path"
        if path.name == "best.pt" and (path.parent / "last.pt").is_file():
            hint = f"{path.parent / 'last.pt'} exists (no dev evaluation has finished yet): pass --checkpoint with it"
        raise UserError(f"{path}: checkpoint not found; {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except Exception as err:  # truncated, not a torch file, a pickle that would run code ...
        if "GLOBAL" in str(err):  # torch's weights_only unpickler met a callable it does not admit
            raise UserError(f"{path}: refused: it holds Python objects whose loading could run code; if you "
                            f"trust the file, convert it once: python -m src.checkpoint upgrade {path} --trust") from None
        raise UserError(f"{path}: not a readable checkpoint ({first_line(err)}); delete it or use another one") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise UserError(f"{path}: not a model checkpoint of this project (missing {', '.join(missing)})")
    ckpt = upgrade_checkpoint(ckpt)
    ckpt["_path"] = str(path)
    return ckpt


def _source(ckpt: dict[str, Any]) -> str:
    return ckpt.get("_path", "checkpoint")


def family_config_from_dict(name: str, values: dict, source: str) -> Any:
    """A family's config dataclass from a checkpoint's dict (types checked, unknown keys rejected)."""
    return build_section(get_family(name).config_cls, values, f"model.{name}.", source)


def model_spec(ckpt: dict[str, Any], path: str | Path | None = None) -> tuple[str, Any]:
    """(family name, family config dataclass) of a checkpoint."""
    source = str(path) if path is not None else _source(ckpt)
    family = ckpt.get("family", "las")
    if family not in families():
        raise UserError(f"{source}: written by model family '{family}', which this code does not have "
                        f"({', '.join(families())}); use a checkpoint of one of those families")
    return family, family_config_from_dict(family, dict(ckpt["model_config"]), source)


def front_end(ckpt: dict[str, Any]) -> FrontEnd:
    """How the model's features were made (n_mels, normalisation)."""
    saved = ckpt["front_end"]
    return FrontEnd(int(saved["n_mels"]), str(saved["normalize"]))


def check_vocabulary(ckpt: dict[str, Any]) -> None:
    """UserError (one line) when the checkpoint's vocabulary is not this project's."""
    vocab, ours = list(ckpt["vocab"]), VOCAB
    if vocab != ours:
        raise UserError(
            f"{_source(ckpt)}: the checkpoint's vocabulary ({len(vocab)} tokens) is not this project's "
            f"({len(ours)} tokens, src/vocab.py); use a checkpoint trained by this project"
        )


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The model described by ``ckpt`` (family and sizes from the file), weights loaded, in eval mode."""
    family, family_cfg = model_spec(ckpt)
    bad = non_finite_tensor(ckpt["model"])
    if bad is not None:
        raise UserError(f"{_source(ckpt)}: weight {bad} is NaN or infinite, the model is broken; "
                        "use another checkpoint (e.g. an earlier last.pt or best.pt) or retrain")
    model = get_family(family).build(family_cfg, front_end(ckpt).n_mels, len(ckpt["vocab"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise UserError(f"{_source(ckpt)}: weights do not match its model_config ({first_line(err)})") from None
    return model.to(device).eval()


def load_for_decoding(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, FrontEnd]:
    """The model of checkpoint ``path`` ready to decode (eval mode, on ``device``), and how its
    features must be made. One-line UserErrors for a missing, unsafe, broken or foreign file."""
    ckpt = load_checkpoint(path, map_location="cpu")
    check_vocabulary(ckpt)
    return model_from_checkpoint(ckpt, device), front_end(ckpt)


# --------------------------------------------------------------------------
# python -m src.checkpoint upgrade OLD.pt --trust


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.checkpoint",
                                     description="Re-save a checkpoint of an earlier version in today's safe format.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="read a checkpoint with full unpickling (it may run code) and re-save it")
    up.add_argument("path", help="the checkpoint to convert (rewritten in place unless --out)")
    up.add_argument("--out", default=None, help="where to write the converted file (default: over the input)")
    up.add_argument("--trust", action="store_true", help="required: you trust this file's origin")
    args = parser.parse_args(argv)
    if not args.trust:
        raise UserError(f"{args.path}: upgrading reads the file with full unpickling, which runs any code it "
                        "holds; add --trust if you trust where it came from")
    ckpt = load_checkpoint(args.path, trust=True)
    ckpt.pop("_path", None)
    buffer = io.BytesIO()
    try:  # written and read back in memory first: the file on disk changes only when the result is safe
        torch.save(ckpt, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise UserError(f"{args.path}: holds objects that are not tensors or plain values ({first_line(err)}); "
                        "it cannot be stored in the safe format") from None
    out = Path(args.out or args.path)
    save_checkpoint(out, ckpt)
    print(f"upgraded {args.path} -> {out} (loads with weights_only=True)")
    return 0


if __name__ == "__main__":
    run_cli(main)
