"""Errors and exits: the error types, the one line an error is shown as, the one function that
prints it, and the exit codes.

A `UserError` is a mistake a user can fix (a spec value, a missing file, a model that does not
fit its checkpoint, a full disk): the command line prints it as one line on stderr and exits 1,
the Python interface raises it. Every other exception is a bug and keeps its traceback (`-v`
logs it; `one_line` names where it was raised). Library code raises and never exits: only the
command line (frontends/verbs.py) and the MPI driver end a process.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
import sys
from pathlib import Path

# exit codes of the command line
EXIT_DONE = 0  # every point computed
EXIT_ERROR = 1  # a user error (one line on stderr), a command-line mistake, or a bug (its traceback)
EXIT_STOPPED = 3  # stopped early by a signal (SIGTERM, a time limit): the file resumes
EXIT_MISSING = 4  # merge: finished with points still missing
EXIT_INTERRUPTED = 130  # Ctrl-C outside a per-point run

PREFIX = "losslandscape: error: "
MAX_LINE = 4000  # characters of an error line, beyond which its middle is cut


class UserError(Exception):
    """Bad input: a spec value, a missing file, a model that does not fit its checkpoint.

    Made within a call of the Python interface (`named_as_given`), its message names what the
    caller passed (`train=`, `out`) where the library would name a value the interface made up
    for the spec (its generated model and data names, the file the weights are kept in)."""

    def __init__(self, *args):
        rules = _GIVEN.get()
        if rules and args and isinstance(args[0], str):
            args = (as_given(args[0], rules), *args[1:])
        super().__init__(*args)


class WriteFailed(UserError):
    """The file system refused a write to an HDF5 file (no room, a quota, read-only).

    The file was left open on purpose: HDF5 1.10 segfaults when a file is closed after a failed
    write (surfacefile/room.py), so the process keeps it open for good. A Python caller lives on
    (and exits normally: tests/test_diskfull_python.py); the command line ends its process with
    `room.exit_now`, without the interpreter's clean-up, and under MPI the driver aborts the job."""


class JobFailed(Exception):
    """Raised on every rank of an MPI job when any rank failed: `line` is printed once, by
    the rank with `printer` set (rank 0)."""

    def __init__(self, line: str, printer: bool):
        super().__init__(line)
        self.line, self.printer = line, printer


def one_line(exc: BaseException) -> str:
    """An exception as one line: a UserError's message; for any other (a bug) its type, its
    message and the file:line where it was raised (`raised_at`), pointing at -v for the traceback
    (the command line's flag: not within a call of the Python interface, where the traceback is
    Python's)."""
    if isinstance(exc, UserError):
        return str(exc)
    where = raised_at(exc)
    text = " ".join(str(exc).split())[:300]
    hint = "" if _GIVEN.get() is not None else "; -v for the traceback"
    return f"{type(exc).__name__}{': ' + text if text else ''} ({where}{hint})"


def raised_at(exc: BaseException) -> str:
    """"at file:line" of the innermost frame of `exc`'s traceback in the user's code (a model's
    forward, a Dataset, a loss), where there is one; else of the innermost frame (a bug of the
    tool, a library refusing its input); "no traceback" for an exception never raised."""
    frames = [(tb.tb_frame.f_code.co_filename, tb.tb_lineno) for tb in _walk(exc.__traceback__)]
    if not frames:
        return "no traceback"
    file, line = user_frame(frames)
    return f"at {Path(file).name}:{line}"


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def user_frame(frames: list[tuple[str, int]]) -> tuple[str, int]:
    """Of (file, line) frames, outermost first: the innermost one in the user's code (not in
    Python's library, an installed package such as torch or transformers, or this tool), else
    the innermost."""
    return next((f for f in reversed(frames) if not _library_file(f[0])), frames[-1])


def _library_file(filename: str) -> bool:
    if filename.startswith("<"):  # code without a file: frozen imports, exec'd strings
        return not filename.startswith("<ipython-input")
    path = os.path.normcase(os.path.realpath(filename))
    return any(path.startswith(root) for root in _library_roots())


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    """Folders whose files are not the user's: the standard library, the installed packages,
    this package."""
    import site
    import sysconfig

    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(os.path.dirname(os.path.abspath(__file__)))
    return tuple(os.path.join(os.path.normcase(os.path.realpath(p)), "") for p in paths if p)


def print_error(line: str | BaseException) -> None:
    """THE printer: "losslandscape: error: <one line>" on stderr, flushed (MPI_Abort may follow)."""
    if isinstance(line, BaseException):
        line = one_line(line)
    line = " ".join(str(line).split("\n"))
    if len(line) > MAX_LINE:  # a value from a received file may be megabytes long: cut in the middle
        line = f"{line[:MAX_LINE // 2]} ... {line[-MAX_LINE // 2:]}"
    print(PREFIX + line, file=sys.stderr, flush=True)


# How an option is named in an error: its Python keyword (`top_k`) unless the command line is
# running a verb, which names its flag (`--top-k`). A context variable, so that a message
# built deep in the library (or on an MPI rank) names what the user typed.
_FLAGS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("losslandscape_flags", default={})


def option(name: str) -> str:
    """The name of option `name` (a keyword of a verb's options, spec.Hessian, spec.Submit) as
    the user gave it: `--name` under the command line, `name` in Python."""
    return _FLAGS.get().get(name, name)


def option_value(name: str, value) -> str:
    """Option `name` given `value`, as the user would write it: `--samples 32` or `samples=32`."""
    shown = option(name)
    return f"{shown} {value}" if shown.startswith("-") else f"{shown}={value!r}"


@contextlib.contextmanager
def named_as_flags(flags: dict[str, str]):
    """Within the block, errors name the options in `flags` ({keyword: "--flag"}) by their flag."""
    token = _FLAGS.set(flags)
    try:
        yield
    finally:
        _FLAGS.reset(token)


# How a call of the Python interface names what it was given: (pattern, replacement) rules for
# the messages of the errors made within it (`named_as_given`); None outside such a call.
_GIVEN: contextvars.ContextVar[list[tuple[re.Pattern, str]] | None] = contextvars.ContextVar("losslandscape_given",
                                                                                           default=None)


@contextlib.contextmanager
def named_as_given(rules: list[tuple[str, str]]):
    """Within the block (one call of the Python interface), a UserError's message has each
    regular expression of `rules` replaced (re.sub, in order), so that it names the keywords the
    caller passed, not the spec values made up for them; and one_line points at no `-v`."""
    token = _GIVEN.set([(re.compile(pattern), replacement) for pattern, replacement in rules])
    try:
        yield
    finally:
        _GIVEN.reset(token)


def as_given(text: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def readable_file(path, field: str, expected: str = "a file") -> None:
    """Raise a one-line UserError unless `path` is a non-empty file this process can read."""
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:  # a name the file system cannot take (ENAMETOOLONG)
        raise UserError(f"{field}: {str(path)[:80]!r}... cannot be a file name ({exc.strerror})") from None
    if not exists:
        raise UserError(f"{field}: no such file {str(path)!r}")
    if path.is_dir():
        raise UserError(f"{field}: {str(path)!r} is a folder; expected {expected}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{field}: {str(path)!r} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise UserError(f"{field}: {str(path)!r} is empty; expected {expected}")
