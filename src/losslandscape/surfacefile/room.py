"""Disk room and writes the file system refuses (a full disk, a quota, a read-only or
forbidden folder), for every file the tool writes.

A full disk, an exceeded quota, a read-only or forbidden folder: HDF5 (1.10) reports a failed
write late (when a dataset or the file is closed, or flushed) and a file closed after one
segfaults the process (measured: `H5D_close` on a NULL address, exit 139), and a failed write of
new metadata leaves a file that no longer opens. So nothing is written where it might not fit:
`check_room` reserves the bytes a new file or a new part of one needs (posix_fallocate on a
probe file beside it, freed at once: quotas count) before HDF5 writes, and a failure is one
line naming the path, the cause and the room needed. Writing points needs no room: datasets are
allocated and filled when the file is made. Where a write fails anyway (a sparse copy of the
file, a copy-on-write file system), `write_failed` prints one line and ends the process at once
(MPI_Abort under MPI) without closing the file: the points written before stay, and the same
command resumes once there is room.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from losslandscape.errors import UserError

# run before a failed write ends the process (writelock registers the release of its locks)
_BEFORE_EXIT: list[Callable[[], None]] = []


def before_exit(fn: Callable[[], None]) -> None:
    """Run `fn` when `write_failed` ends the process (os._exit skips atexit)."""
    _BEFORE_EXIT.append(fn)


# errors a full, forbidden or read-only file system gives; HDF5 hides them in its messages
FS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def failed_write(exc: BaseException) -> bool:
    """Whether `exc` is a write that the file system refused: an OSError of FS_ERRORS, or HDF5's
    "file write failed" (with the errno in its text, or none where MPI-IO wrote)."""
    if isinstance(exc, UserError) or not isinstance(exc, (OSError, RuntimeError)):
        return False
    return _errno(exc) in FS_ERRORS or "write failed" in str(exc)


def _errno(exc: BaseException) -> int | None:
    found = _HDF5_ERRNO.search(str(exc))
    return int(found.group(1)) if found else getattr(exc, "errno", None)


def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def fs_cause(code: int | None, folder: Path, need: int = 0) -> str:
    """What went wrong, in words: the system's message and, for a full disk, the room."""
    text = os.strerror(code) if code else "the write failed"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        room = (f"{'it needs about ' + human(need) + ', ' if need else ''}"
                f"{human(free) + ' free' if free is not None else ''} in {folder}")
        return f"{text}: {room}" if room else text
    if code in (errno.EACCES, errno.EPERM):
        return f"{text} (no permission to write in {folder})"
    return text


def sweep_probes(path: str | Path) -> None:
    """Remove the room probes beside `path` that a killed process left (its pid is gone)."""
    path = Path(path)
    for probe in path.parent.glob(f".{path.name}.room-*"):
        pid = probe.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            probe.unlink(missing_ok=True)


def check_room(path: str | Path, nbytes: int, field: str = "output.surface", what: str = "") -> None:
    """Reserve `nbytes` beside `path` (a probe file, posix_fallocate, removed at once): one
    UserError naming the path, the cause and the room needed where they cannot be written there
    (no room, a quota, a read-only or forbidden folder). The folder is made if missing."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{field}: cannot make the folder {folder} for {path}: "
                        f"{fs_cause(exc.errno, folder.parent)}") from None
    probe = folder / f".{path.name}.room-{os.getpid()}"
    label = f"{what} {path}".strip()
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # a probe of this process is under way (cannot happen twice at once)
    except OSError as exc:
        raise UserError(f"{field}: cannot write {label}: {fs_cause(exc.errno, folder, nbytes)}") from None
    try:
        os.posix_fallocate(fd, 0, max(int(nbytes), 1))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no fallocate: compare with free space
            free = free_bytes(folder)
            if free is None or free >= nbytes:
                return
            exc.errno = errno.ENOSPC
        raise UserError(f"{field}: no room for {label}: {fs_cause(exc.errno, folder, nbytes)}") from None
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)



def write_failed(path: str | Path, exc: BaseException, field: str = "output.surface",
                 remove: list[Path] = ()) -> None:
    """A write to `path` failed: print one line (the path, the cause, what to do), remove the
    temporary files in `remove`, and end the process now: under MPI with MPI_Abort (every rank
    ends within seconds), else os._exit(1). The file is not closed: HDF5 1.10 segfaults closing
    a file after a failed write. Every point whose done flag was written before stays."""
    path = Path(path)
    for p in remove:
        Path(p).unlink(missing_ok=True)
    rank, comm = _mpi_rank()
    line = write_failure(path, exc, field)
    if rank is not None:
        line = f"rank {rank}: {line}"
    for fn in _BEFORE_EXIT:
        fn()
    if comm is None or _first_on_node(path):
        print(f"losslandscape: error: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    if comm is not None:
        comm.Abort(1)
    os._exit(1)


def _first_on_node(path: Path) -> bool:
    """Whether this is the first rank of its node to fail writing `path` in this MPI job: a disk
    that is full for one worker is full for all, and the job's error is one line. The ranks of a
    job on a node share their parent (mpirun, orted or slurmstepd): a marker named after it and
    its start time is made by the first (node-local memory: the disk may be full)."""
    import hashlib
    import tempfile

    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    key = hashlib.sha256(f"{parent} {started} {os.path.abspath(path)}".encode()).hexdigest()[:16]
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    try:
        os.close(os.open(folder / f"losslandscape-write-failed-{key}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def write_failure(path: str | Path, exc: BaseException, field: str = "output.surface") -> str:
    """The one line for a write to `path` that the file system refused."""
    path = Path(path)
    code = _errno(exc)
    if code is None and free_bytes(path.parent) == 0:  # MPI-IO does not pass the errno on
        code = errno.ENOSPC
    again = "the points written before are kept; run the same command again once there is room" \
        if code in (errno.ENOSPC, errno.EDQUOT) else "run the same command again once it can be written"
    return f"{field}: cannot write {path}: {fs_cause(code, path.parent)}; {again}"


def _mpi_rank():
    """(rank, COMM_WORLD) under an MPI job of more than one process, else (None, None)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized() or mpi.COMM_WORLD.size == 1:
        return None, None
    return mpi.COMM_WORLD.rank, mpi.COMM_WORLD
