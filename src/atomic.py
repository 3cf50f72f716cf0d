"""Atomic file writes: the one place that writes ``path.tmp`` and renames it over ``path``.

    with atomic_write("runs/las/last.pt", "wb") as f:
        torch.save(payload, f)

A crash or a kill while writing leaves at most a stale ``path.tmp``; ``path``
is always either the old complete file or the new complete one. The data is
flushed and fsynced before the rename, so a power cut cannot leave a renamed
but empty file. On an error inside the block the temporary file is removed
and the error propagates; a full disk, a read-only file system or a folder
without write permission (found in the error or in what it was raised from:
torch.save wraps the OSError in a RuntimeError) becomes a one-line UserError
naming the path, the cause and the fix, with the previous ``path`` untouched.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

# errno -> (what happened, what to do): the environment's faults a user can fix
_WRITE_FAULTS = {
    errno.ENOSPC: ("disk full", "free space on that disk or choose a path on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose a path on another disk"),
    errno.EFBIG: ("file too large for this file system", "choose a path on another file system"),
    errno.EROFS: ("read-only file system", "choose a path on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to or fix its permissions"),
}


def write_fault(err: BaseException, *paths: Path) -> OSError | None:
    """The OSError among ``err`` and what it was raised from whose errno is in _WRITE_FAULTS, or None.

    Only an error about no file (a write or fsync on an open file) or about one of ``paths`` counts:
    a file the caller's code fails to open inside the block is its own error, not the disk's.
    """
    names = {None, *(str(p) for p in paths)}
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _WRITE_FAULTS and err.filename in names:
            return err
        err = err.__cause__ or err.__context__
    return None


def _fault_message(path: Path, err: OSError, doing: str) -> str:
    what, fix = _WRITE_FAULTS[err.errno]
    return f"{path}: {what} while {doing}; {fix}"


def temp_path(path: str | Path) -> Path:
    """The temporary name used while ``path`` is written: ``path.tmp`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = True, **open_kwargs) -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on a clean exit fsync it (unless ``fsync`` is False) and rename it
    to ``path``."""
    from src.errors import UserError

    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, mode, **open_kwargs)
    except OSError as err:  # a read-only folder, a file where a folder should be, a full disk ...
        if err.errno in _WRITE_FAULTS:
            raise UserError(_fault_message(path, err, "creating it")) from None
        raise UserError(f"{path}: cannot write here ({err.strerror or err}); choose another path") from None
    try:
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # nothing more to do on a disk that refuses even this
            pass
        fault = write_fault(err, tmp, path)
        if fault is not None:
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise UserError(_fault_message(path, fault, f"writing it ({kept})")) from None
        raise


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Create folder ``path`` if missing and make sure a file can be written in it (UserError otherwise).

    ``what`` names the setting the folder came from (e.g. "logging.run_dir"), for the message.
    Run before long work starts, so that a read-only or misplaced folder is refused at once.
    """
    from src.errors import UserError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder (or one above it) should be
        raise UserError(f"{path}: cannot create the folder ({what}): a file is in the way; "
                        f"set {what} to another path") from None
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            raise UserError(f"{path}: cannot create the folder ({what}): a file is in the way; "
                            f"set {what} to another path") from None
        raise UserError(f"{path}: cannot create the folder ({what}): {err.strerror or err}; "
                        f"set {what} to a folder you can write to") from None
    probe = path / f".write_test.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        reason = _WRITE_FAULTS[err.errno][0] if err.errno in _WRITE_FAULTS else (err.strerror or str(err))
        raise UserError(f"{path}: cannot write in this folder ({what}): {reason}; "
                        f"set {what} to a folder you can write to") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)
