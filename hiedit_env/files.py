"""Files: every file the package writes is written whole or not at all, and output paths are checked
before the work that fills them.

A write goes to a temporary name in the target's folder and is renamed over the target
(:func:`os.replace` is atomic on one file system), so a kill, a full disk or an error part-way leaves
either the old file or the new one, never a truncated mix. Checking an output path first means a
long evaluation or training run is never thrown away at its last line because the path was a
directory or not writable.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, flush it to disk, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix, since some writers (SB3's ``save``) append one when
    it is missing. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named here, created by ``write``: a file made by mkstemp would keep mode 0600 instead of the umask's.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a file that can be written: not a directory, in a folder that exists or can be made,
    and writable. Raises :class:`OSError` naming ``what`` and the problem; creates only the folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {str(path)!r} is not writable")
    _check_folder(path.parent, what, path)
    return path


def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a folder that can be written into (made if missing). Raises :class:`OSError`
    naming ``what`` and the problem."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is a file; give a directory")
    _check_folder(path, what, path)
    return path


def _check_folder(folder: Path, what: str, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            f"{what} {str(target)!r}: cannot create the folder {str(folder)!r}: {err.strerror or err}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(target)!r}: the folder {str(folder)!r} is not writable")
