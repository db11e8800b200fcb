"""The one saved-file layout of :class:`~sinkwidgets.SinkTrace` and :class:`~sinkwidgets.tags.TagData`: an ``.npz``
of named arrays plus ``__header__``, a JSON object (``format``, ``format_version``, tokens, meta) stored as uint8.

Both classes write with :func:`write_headered` (atomically, via :func:`sinkwidgets._atomic.atomic_write`) and read
with :func:`read_headered`, so a bad target, a damaged, foreign or newer file gets the same checks and the same kind
of error from either.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .errors import SinkwidgetsFileNotFoundError, SinkwidgetsIsADirectoryError, SinkwidgetsValueError

HEADER = "__header__"


def header_array(header: dict[str, Any]) -> np.ndarray:
    """``header`` as the uint8 array stored under :data:`HEADER`."""
    return np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)


def npz_path(path: str | os.PathLike) -> Path:
    """The file a save writes for ``path``: ``.npz`` is appended when the name does not end in it."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def write_headered(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, kind: str, example: str,
                   compressed: bool) -> Path:
    """Write ``arrays`` (one of them the :data:`HEADER`) atomically to :func:`npz_path` of ``path``; return it.

    Raises ``ValueError`` for an empty path (the message shows ``example``, e.g. ``"tr.save('trace.npz')"``) and
    ``IsADirectoryError`` when ``path`` is a directory, before anything is written.
    """
    if isinstance(path, str) and path.strip() == "":
        raise SinkwidgetsValueError(f"{kind}.save(path=''): give a file name, e.g. {example}")
    if Path(path).is_dir():
        raise SinkwidgetsIsADirectoryError(f"{kind}.save({str(path)!r}): that is a directory; give a file name")
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(npz_path(path), lambda fh: save(fh, **arrays), what=kind)


def read_headered(path: str | os.PathLike, *, kind: str, format_name: str, max_version: int,
                  error: type[Exception], required: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a file written as ``kind`` (e.g. ``"SinkTrace"``), after checking it.

    Raises ``FileNotFoundError`` when ``path`` does not exist, and ``error`` when the file is not a readable
    ``.npz`` (truncated, not a zip), has no header, names another format, has a format version outside
    ``1..max_version``, or lacks one of the ``required`` arrays.
    """
    path = Path(path)
    where = repr(str(path))
    if not path.exists():
        raise SinkwidgetsFileNotFoundError(f"path={where}: no {kind} file at {where}; pass the path {kind}.save() "
                                           "wrote (it adds '.npz' to a name without it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if HEADER not in z.files:
                raise error(f"{where} is an .npz file but not a {kind} (no header); write it with {kind}.save()")
            header = json.loads(bytes(z[HEADER]).decode("utf-8"))
            data = {name: z[name] for name in z.files if name != HEADER}
    except error:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise error(f"{where} is not a readable {kind} file ({type(exc).__name__}: {exc}); it may be truncated or "
                    f"not written by {kind}.save()") from exc
    if not isinstance(header, dict) or header.get("format") != format_name:
        got = header.get("format") if isinstance(header, dict) else None
        raise error(f"{where} is not a {kind} file (format={got!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{where} has an invalid {kind} format version {version!r} (versions start at 1); the file was "
                    f"not written by {kind}.save()")
    if version > max_version:
        raise error(f"{where} has {kind} format version {version!r}; this sinkwidgets reads up to {max_version}: "
                    "upgrade sinkwidgets (pip install -U sinkwidgets)")
    missing = [n for n in required if n not in data]
    if missing:
        raise error(f"{where} lacks required arrays {missing}")
    return header, data
