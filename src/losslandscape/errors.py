"""The one exception type for mistakes a user can fix.

`cli.py` catches it and prints its message as one line on stderr (exit 1);
every other exception is a bug and keeps its traceback.
"""

import os
from pathlib import Path


class UserError(Exception):
    """Bad input: a spec value, a missing file, a model that does not fit its checkpoint."""


def readable_file(path, field: str, expected: str = "a file") -> None:
    """Raise a one-line UserError unless `path` is a non-empty file this process can read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{field}: no such file {str(path)!r}")
    if path.is_dir():
        raise UserError(f"{field}: {str(path)!r} is a folder; expected {expected}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{field}: {str(path)!r} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise UserError(f"{field}: {str(path)!r} is empty; expected {expected}")
