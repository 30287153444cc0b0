"""Importing a user's own "module:factory" (a model or a data set), found where the user is.

A factory named `mynet:build` is looked for, in this order, in the folders of
the job specs this process has read, in the working directory, and on the
ordinary `sys.path` (installed packages, PYTHONPATH). SLURM array tasks read
the same folders from their shard file (their user's own submission), so they find it too.

A surface file received from someone else runs none of their code (`from_file`): the
folders it names are looked in only where they are the user's own (the file's folder, the
working directory) or the user trusts the file (`--trust-file`), and a factory that would
otherwise come from such a folder, from Python's standard library, or a checkpoint that the
file says to unpickle fully, is refused with one line saying how to allow it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Callable
from pathlib import Path

from losslandscape.errors import UserError

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


def check_name(name: str, field: str) -> None:
    """The form of "package.module:factory", nothing imported: one line naming `field` unless the
    module's dotted parts are names a file can have and the factory is a Python name."""
    if name in _REGISTERED or name.startswith("python:"):
        return
    module_name, _, attr = name.partition(":")
    parts = module_name.split(".")
    if not (attr.isidentifier() and all(p and p.isprintable() and not set(p) & set("/\\ ") for p in parts)):
        shown = repr(name) if len(name) <= 80 else f"{name[:40]!r}... ({len(name):,} characters)"
        raise UserError(f'{field}: {shown} is not of the form "package.module:factory"')


def import_factory(name: str, field: str) -> Callable:
    """The callable `factory` of "package.module:factory"; every failure a user can fix is one line.
    A function of Python's standard library (os:system, shutil:rmtree) is no factory: refused,
    never called (a data factory is called with the split's name)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name.startswith("python:"):
        raise UserError(f"{field}: {name!r} names a model or data set given to the Python interface in another "
                        "process; compute this surface from Python, or name a module:factory")
    check_name(name, field)
    module_name, _, attr = name.partition(":")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__main__":
        raise UserError(f"{field}: {name!r} is a function of Python's standard library, not a factory; refused "
                        "(name a function of your own module, e.g. mynet:build)")
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


FILE_FACTORIES = ("model.name", "data.name", "evaluation.loss")  # the fields that may name "module:factory"


def from_file(path: str | Path, folders: list[str], spec, trust: bool = False, verb: str = "hessian") -> None:
    """Make the factories of a file's spec findable, running nothing of its sender's.

    `folders` are the file's import folders (fileformat.import_dirs). Those that are the file's
    own folder or the working directory are looked in; others only when `trust`. Without
    `trust`, a factory found only in a folder named by the file, one of the standard library
    (a "factory" such as shutil:rmtree, called with the split name) and a checkpoint the file
    says to unpickle fully (model.trust_checkpoint) are refused: one UserError line."""
    path = Path(path)
    own = {str(path.resolve().parent), os.getcwd()}
    foreign = []
    for folder in folders:
        resolved = str(Path(folder).resolve())
        if trust or resolved in own:
            remember(resolved)
        else:
            foreign.append(resolved)
    remember(path.resolve().parent)
    if trust:
        return
    allow = f"pass --trust-file if you trust where {path} came from"
    for field in FILE_FACTORIES:
        name = getattr(getattr(spec, field.split(".")[0]), field.split(".")[1])
        if ":" not in name or name in _REGISTERED or name.startswith("python:"):
            continue  # a zoo name, a built-in loss, or the Python interface's live objects
        top = name.partition(":")[0].split(".")[0]
        if top in sys.stdlib_module_names or top == "__main__":
            raise UserError(f"{verb}: {path} names {field} = {name!r}, a function of Python's standard library, "
                            f"not a factory; refused; {allow}")
        if top in sys.modules:
            continue  # imported here already, from where this process looks: nothing runs on import
        if _find(top, [*search_dirs(), *sys.path]) is None:
            where = _find(top, foreign)
            if where is not None:
                raise UserError(f"{verb}: {path} names {field} = {name!r}, which would be imported from {where}, a "
                                f"folder named in the file (not its own folder or the working directory); refused; "
                                f"{allow}")
    if spec.model.trust_checkpoint:
        raise UserError(f"{verb}: {path} says to unpickle its checkpoint {spec.model.checkpoint} fully "
                        f"(model.trust_checkpoint = true, which can run code from it); refused; {allow}")


def _find(top: str, folders: list[str]) -> str | None:
    """Where the top-level module `top` would be imported from among `folders` (nothing is run)."""
    for folder in folders:
        found = importlib.machinery.PathFinder.find_spec(top, [folder])
        if found is not None:
            return found.origin if found.origin not in (None, "namespace") else folder
    return None
