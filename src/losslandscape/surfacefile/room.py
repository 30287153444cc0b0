"""Disk room and writes the file system refuses (a full disk, a quota, a read-only or
forbidden folder), for every file the tool writes.

A full disk, an exceeded quota, a read-only or forbidden folder: HDF5 (1.10) reports a failed
write late (when a dataset or the file is closed, or flushed) and a file closed after one
segfaults the process (measured: `H5D_close` on a NULL address, exit 139), and a failed write of
new metadata leaves a file that no longer opens. So nothing is written where it might not fit:
`check_room` compares the bytes a new file or a new part of one needs with the free space
(statvfs) and, where they fit, reserves just those bytes (posix_fallocate on a probe file beside
it, freed at once: quotas count) before HDF5 writes; a failure is one line naming the path, the
cause, the room needed and the room free measured before the probe. (A posix_fallocate asked
for more than is free takes every free block on ext4 before it fails: other jobs on the file
system would see a full disk meanwhile, hence the comparison first.) Writing points needs no room: datasets are
allocated and filled when the file is made. Where a write fails anyway (a sparse copy of the
file, a copy-on-write file system), `write_failed` keeps the file open for good (the
points written before stay) and raises `WriteFailed`, one line: the Python interface's caller
lives on, the command line prints the line and ends the process with `exit_now` (no clean-up
that would close the file), and under MPI the driver's handler ends the job with MPI_Abort.
The same command resumes once there is room.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from losslandscape.errors import UserError, WriteFailed, print_error

# run before `exit_now` ends the process (writelock registers the release of its locks)
_BEFORE_EXIT: list[Callable[[], None]] = []


def before_exit(fn: Callable[[], None]) -> None:
    """Run `fn` when `exit_now` ends the process (os._exit skips atexit)."""
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


def _read_only(folder: Path) -> bool:
    """Whether the file system is mounted read-only (the probe then says so, rather than "no room")."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def fs_cause(code: int | None, folder: Path, need: int = 0, free: int | None = None) -> str:
    """What went wrong, in words: the system's message and, for a full disk, the room (`free`
    where measured before, else measured now)."""
    text = os.strerror(code) if code else "the write failed"
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder) if free is None else free
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
    """Reserve `nbytes` beside `path` (a probe file, posix_fallocate, removed at once), where the
    free space (statvfs) holds them: one UserError naming the path, the cause, the room needed and
    the room free before, where they cannot be written there (no room, a quota, a read-only or
    forbidden folder). The folder is made if missing."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{field}: cannot make the folder {folder} for {path}: "
                        f"{fs_cause(exc.errno, folder.parent)}") from None
    label = f"{what} {path}".strip()
    free = free_bytes(folder)
    if free is not None and free < nbytes and not _read_only(folder):  # never ask posix_fallocate for more than is free
        raise UserError(f"{field}: no room for {label}: {fs_cause(errno.ENOSPC, folder, nbytes, free)}")
    probe = folder / f".{path.name}.room-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # a probe of this process is under way (cannot happen twice at once)
    except OSError as exc:
        raise UserError(f"{field}: cannot write {label}: {fs_cause(exc.errno, folder, nbytes, free)}") from None
    try:
        os.posix_fallocate(fd, 0, max(int(nbytes), 1))
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no fallocate: the comparison above holds
            return
        raise UserError(f"{field}: no room for {label}: {fs_cause(exc.errno, folder, nbytes, free)}") from None
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)



def write_failed(path: str | Path, exc: BaseException, field: str = "output.surface",
                 remove: list[Path] = ()) -> NoReturn:
    """A write to `path` failed: remove the temporary files in `remove`, keep the file open for
    good (HDF5 1.10 segfaults closing a file after a failed write; every point whose done flag
    was written before stays) and raise WriteFailed, one line naming the path, the cause and
    what to do. Under MPI the driver has installed `end_job_on_failed_write`, which ends the job
    here instead (one line per node, MPI_Abort): the other ranks may wait in a collective call."""
    path = Path(path)
    for p in remove:
        Path(p).unlink(missing_ok=True)
    _keep_open(path)
    line = write_failure(path, exc, field)
    for end in _ON_FAILED_WRITE:
        end(path, line)
    raise WriteFailed(line) from None


# HDF5 objects of the files a write failed to, never closed (see `write_failed`)
_LEFT_OPEN: list = []
_LEFT_OPEN_PATHS: set[str] = set()
# the MPI driver's: end the job where a write failed (`end_job_on_failed_write`)
_ON_FAILED_WRITE: list[Callable[[Path, str], None]] = []


def _keep_open(path: Path) -> None:
    """Hold a reference to every open HDF5 object of `path`, so that neither the garbage collector
    nor HDF5 closes them, and make `File.close` leave the file open."""
    import h5py

    want = os.path.realpath(path)
    _LEFT_OPEN_PATHS.add(want)
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if os.path.realpath(fid.name.decode() if isinstance(fid.name, bytes) else fid.name) == want:
            _LEFT_OPEN.extend(h5py.h5f.get_obj_ids(fid, types=h5py.h5f.OBJ_ALL))


def left_open() -> bool:
    """Whether a file of this process was left open after a failed write: the command line then
    ends its process with `exit_now`, skipping the interpreter's clean-up, which could close it."""
    return bool(_LEFT_OPEN_PATHS)


@functools.cache
def _file_class():
    import h5py

    class File(h5py.File):
        """h5py.File whose `close` leaves a file open once a write to it failed (`write_failed`)."""

        def close(self):
            if self.id.valid and os.path.realpath(self.filename) in _LEFT_OPEN_PATHS:
                return
            super().close()

    return File


def h5file(*args, **kwargs):
    """h5py.File(*args, **kwargs), closed unless a write to it failed: every file the tool opens."""
    return _file_class()(*args, **kwargs)


def exit_now(code: int = 1, comm=None) -> NoReturn:
    """End the process now, without the interpreter's clean-up (which would close a file left
    open after a failed write): run the `before_exit` functions, flush, and end it, under MPI
    with MPI_Abort (every rank ends within seconds). Only the command line and the MPI driver
    call it."""
    for fn in _BEFORE_EXIT:
        fn()
    sys.stdout.flush()
    sys.stderr.flush()
    if comm is not None:
        comm.Abort(code)
    os._exit(code)


def end_job_on_failed_write(comm) -> None:
    """The MPI driver's: from now on a write that the file system refuses on this rank ends the
    job at once (MPI_Abort), with one line from the first rank of each node that fails."""
    def end(path: Path, line: str) -> None:
        if _first_on_node(path):
            print_error(f"rank {comm.rank}: {line}")
        exit_now(1, comm)

    _ON_FAILED_WRITE[:] = [end]


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


# --- the folders a run makes for its output ------------------------------------------------------
# A run that fails before its file exists leaves no folder it made for it: the folders made here
# (the lock's, made first: writelock) are remembered and removed, where empty, when a lock is
# released and at exit. A folder that was there before, or holds anything, stays.
_MADE: list[Path] = []


def make_folder(folder: str | Path) -> None:
    """`mkdir -p folder`, remembering each folder it makes (`remove_made_folders`)."""
    folder = Path(os.path.abspath(folder))
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        made.mkdir(exist_ok=True)
        if made not in _MADE:
            _MADE.append(made)


def remove_made_folders() -> None:
    """Remove the folders `make_folder` made that are empty now, innermost first; forget them all."""
    for folder in sorted(_MADE, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only an empty folder goes
        except OSError:
            pass
    _MADE.clear()


atexit.register(remove_made_folders)  # after writelock's release_all (registered later, run first)
