"""Atomic file writes: the one place that writes ``path.tmp`` and renames it over ``path``.

    with atomic_write("runs/las/last.pt", "wb") as f:
        torch.save(payload, f)

A crash or a kill while writing leaves at most a stale ``path.tmp``; ``path``
is always either the old complete file or the new complete one. The data is
flushed and fsynced before the rename, so a power cut cannot leave a renamed
but empty file. On an error inside the block the temporary file is removed
and the error propagates.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def temp_path(path: str | Path) -> Path:
    """The temporary name used while ``path`` is written: ``path.tmp`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on a clean exit fsync it and rename it to ``path``."""
    from src.errors import UserError

    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, mode, **open_kwargs)
    except OSError as err:  # a read-only folder, a file where a folder should be, a full disk ...
        raise UserError(f"{path}: cannot write here ({err.strerror or err}); choose another path") from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
