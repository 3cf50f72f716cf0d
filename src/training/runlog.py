"""What a run reports: one line per epoch to the console and train.log, wandb when asked."""
from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from src.config import Config, to_dict
from src.errors import first_line


class WarnOnce:
    """Print each distinct warning once per run."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=2)


class RunLog:
    """Console + run_dir/train.log (+ wandb) on rank 0; silent elsewhere."""

    def __init__(self, cfg: Config, run_dir: Path, is_main: bool, warn: WarnOnce, wandb_id: str | None):
        self.is_main = is_main
        self.path = run_dir / "train.log"
        self.warn = warn
        self.wandb = None
        self.wandb_id = wandb_id
        if is_main and cfg.logging.wandb != "disabled":
            self._init_wandb(cfg, run_dir)

    def _init_wandb(self, cfg: Config, run_dir: Path) -> None:
        os.environ["WANDB_MODE"] = cfg.logging.wandb
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb

            if self.wandb_id is None:  # kept in train_state: a resumed run continues the same wandb run
                self.wandb_id = secrets.token_hex(4)  # os.urandom: leaves the seeded RNGs alone
            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                dir=str(run_dir),
                mode=cfg.logging.wandb,
                config=to_dict(cfg),
                id=self.wandb_id,
                resume="allow",
            )
        except Exception as err:  # no account, no network, broken install: train anyway
            self.wandb = None
            first = first_line(err)
            self.warn("wandb", f"wandb ({cfg.logging.wandb}) unavailable, continuing without it: {first}")

    def line(self, text: str, console: bool = True) -> None:
        if not self.is_main:
            return
        if console:
            tqdm.write(text)
        with open(self.path, "a") as f:
            f.write(text + "\n")

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(values, step=step)
        except Exception as err:
            self.warn("wandb-log", f"wandb log failed, continuing: {err}")

    def image(self, key: str, path: Path, step: int, caption: str) -> None:
        if self.wandb is None:
            return
        try:
            import wandb

            self.wandb.log({key: wandb.Image(str(path), caption=caption)}, step=step)
        except Exception as err:
            self.warn("wandb-image", f"wandb image log failed, continuing: {err}")

    def finish(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass
