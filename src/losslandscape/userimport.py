"""Importing a user's own "module:factory" (a model or a data set), found where the user is.

A factory named `mynet:build` is looked for, in this order, in the folders of
the job specs this process has read, in the working directory, and on the
ordinary `sys.path` (installed packages, PYTHONPATH). SLURM array tasks read
the same folders from their shard file, so they find it too.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

_DIRS: list[str] = []
_REGISTERED: dict[str, Callable] = {}  # "python:..." names of live objects given to the Python interface


def register(name: str, factory: Callable) -> None:
    """Serve `name` from `factory` (the Python interface's live models and tensors)."""
    _REGISTERED[name] = factory


def remember(directory: str | Path) -> None:
    """Add a folder (a job spec's) to the places factories are looked for."""
    path = str(Path(directory).resolve())
    if path not in _DIRS:
        _DIRS.append(path)


def search_dirs() -> list[str]:
    """The folders looked in before `sys.path`: the specs' folders, then the working directory."""
    return [*_DIRS, *([os.getcwd()] if os.getcwd() not in _DIRS else [])]


def import_factory(name: str, field: str) -> Callable:
    """The callable `factory` of "package.module:factory"; every failure a user can fix is one line."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name.startswith("python:"):
        raise UserError(f"{field}: {name!r} names a model or data set given to the Python interface in another "
                        "process; compute this surface from Python, or name a module:factory")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(f'{field}: {name!r} is not of the form "package.module:factory"')
    for d in reversed(search_dirs()):
        if d not in sys.path:
            sys.path.insert(0, d)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise UserError(f"{field}: cannot import {module_name!r} ({exc}; looked beside the job spec, "
                            f"in the working directory and on sys.path: {', '.join(search_dirs())}, ...)"
                            ) from None
        raise UserError(f"{field}: cannot import {module_name!r} ({' '.join(str(exc).split())})") from exc
    except ImportError as exc:
        # errors raised by the user's own module code keep their traceback: that is where they debug
        raise UserError(f"{field}: cannot import {module_name!r} ({' '.join(str(exc).split())})") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserError(f"{field}: module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise UserError(f"{field}: {name!r} is not callable")
    return factory
