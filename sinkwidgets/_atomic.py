"""Atomic file writes: a unique temporary file in the target's folder, then ``os.replace``.

Two writers to one path never share a temporary file (each gets its own from :func:`tempfile.mkstemp`), a reader
sees either the old file or a complete new one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import SinkwidgetsFileNotFoundError, SinkwidgetsIsADirectoryError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *, binary: bool = True,
                 what: str = "file") -> Path:
    """Call ``write(fh)`` on a fresh temporary file next to ``path``, then atomically replace ``path`` with it.

    Raises ``IsADirectoryError`` when ``path`` is a directory and ``FileNotFoundError`` when its folder does not
    exist, before anything is written. On any failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise SinkwidgetsIsADirectoryError(f"cannot write the {what} to {str(path)!r}: it is a directory; give a "
                                           "file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SinkwidgetsFileNotFoundError(
            f"cannot write the {what} to {str(path)!r}: folder {str(folder)!r} does not exist (or is not a folder); "
            "create it first, or give a path in an existing folder"
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
