"""Run-folder safety: check a folder is writable before any work, write files so a crash never leaves half of one.

A run that finds out at its first checkpoint (minutes or hours in) that it cannot write has wasted that time; one
that is killed while writing a cache must not leave a file the next run cannot read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from smis_jax.errors import UserError

__all__ = ["FolderError", "check_writable", "savez_atomic"]


class FolderError(UserError, ValueError):
    """A folder cannot be created or written; the one-line message names it and says why."""


def check_writable(folder: str | Path, what: str = "folder") -> Path:
    """Create ``folder`` (and its parents) if needed and prove a file can be written in it; else FolderError."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder}: {what} cannot be written (it is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FolderError(f"{folder}: {what} cannot be written ({e.strerror or e})") from None
    return folder


def savez_atomic(path: str | Path, **arrays) -> Path:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place: readers see the whole file or
    none (an interrupted or killed write leaves at most a ``.tmp-*`` file, never a truncated ``path``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
