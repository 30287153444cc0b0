"""Every file `render` writes (pictures, html pages, vtp files) goes through `write_file`: the
bytes go to a new temporary file in the output folder, which is renamed over the name once
whole. So a name is never written through: a symbolic link named like an output is replaced by
the file, its target left alone (a dangling link too); and a write the file system refuses (a
full disk, a quota, a read-only or forbidden folder) is one line naming the path and the cause,
and leaves neither a partial file nor the temporary one, nor a folder it made.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from losslandscape.errors import UserError
from losslandscape.surfacefile.room import fs_cause

FIELD = "--out"
# the temporary file's name: short, so that it fits wherever the output's name fits
_TEMPORARY = ".render-{}.tmp"


def write_file(path: Path, fill: Callable[[BinaryIO], None]) -> Path:
    """Write `path` with `fill(file)`, which writes the bytes to a binary file object: into a new
    temporary file beside it (O_EXCL: follows no link), renamed over `path` once closed. An
    OSError is a UserError naming the path and the cause; nothing is left of a failed write."""
    path = Path(path)
    made = _make_folder(path.parent)
    tmp = None
    try:
        fd, tmp = _temporary(path.parent)
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)  # the name, whatever it was (a link too), now is this file
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise UserError(f"{FIELD}: cannot write {path}: {fs_cause(exc.errno, path.parent)}") from None
        raise
    return path


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    return write_file(path, lambda f: f.write(text.encode(encoding)))


def _temporary(folder: Path) -> tuple[int, Path]:
    while True:
        tmp = folder / _TEMPORARY.format(secrets.token_hex(6))
        try:  # mode 0o666 less the umask, as a plain open would give the output
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _make_folder(folder: Path) -> list[Path]:
    """Make `folder` and the folders above it that are missing; return those made, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            for done in reversed(made):
                done.rmdir()
            raise UserError(f"{FIELD}: cannot make the folder {folder}: {fs_cause(exc.errno, folder.parent)}") from None
        made.append(folder)
    return made
