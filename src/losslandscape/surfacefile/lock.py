"""One writer per file: a lock beside each surface or shard file that a job writes.

Two jobs writing one HDF5 file (a double submission, a `surface` run started while an array
task or a merge works on the same file) would keep two metadata caches of one file, which HDF5
does not support. So the process that writes a file holds `<file>.lock`: the `surface` and
`trajectory` runs and the Hessian maps (rank 0 under MPI; its workers write through parallel
HDF5 under its lock), each SLURM array task for its own shard file, `merge` and `submit` for
the surface. A `surface` run is also refused while an array task holds a lock on one of the
surface's shards. Readers (`render`, `summary`, `status`, `open_surface`) take no lock.

The lock is keyed on the file, not on the name it is given: `<file>.lock` lies beside the
file's real path (os.path.realpath), so a symbolic link to the file or to a folder above it
leads to the same lock. A hard link cannot be told that way (its other names may be in any
folder), so a file with more than one name (st_nlink > 1) is refused as a write target, one
line saying so: every writer of it is refused, whichever name it is given.

The lock file holds JSON: host, pid, the process's start time (to tell a reused pid), the SLURM
job id where there is one, what the job does and when it started. It is made atomically: written
and locked under a temporary name (created with O_EXCL, which follows no link), then hard-linked
to `<file>.lock` (fails if one exists; NFS and Lustre keep link atomic). While the job runs it
holds a POSIX record lock (fcntl) on it, which the kernel (and NFS's lock manager, or Lustre
mounted with `-o flock`) drops when the process ends, however it ends. A second writer is refused
with one line naming the first. An existing lock is opened with O_NOFOLLOW after lstat: one that
is not a regular file (a symbolic link, a folder, a FIFO) is refused in one line, never opened
through; nothing is ever written into an existing lock file.

A lock left behind (SIGKILL, MPI_Abort, a lost node) never blocks the next run:
- the record lock is free: nobody holds the lock, whatever the file says (empty, not JSON, JSON
  of another shape). The next writer takes it over with a warning: under the record lock of the
  old file (so two newcomers cannot both take it) it renames a new lock file of its own over
  the name. On another host, where the lock names a SLURM job that `squeue` still lists, it is
  kept (a file system whose locks are only node-local, such as Lustre's `localflock`, cannot
  show a live holder on another node).
- where the file system has no record locks (ENOLCK, ENOSYS): a holder on this host is alive if
  its pid runs with the recorded start time; on another host, if its SLURM job is still listed
  by `squeue`. A lock from another host without a SLURM job, or one that names no holder (empty
  or not JSON), cannot be judged there: the run is refused, naming the lock to remove.

HDF5's own file locking is off for every open (fileformat.open_h5: `locking=False`), so parallel
HDF5 keeps working on file systems without locks; this lock only needs a small file beside the
surface, and where record locks fail it falls back to the rules above.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import weakref
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from losslandscape.cluster import SlurmEnvironment, queued
from losslandscape.errors import UserError
from losslandscape.surfacefile import room as diskspace
from losslandscape.surfacefile.room import fs_cause, sweep_probes

log = logging.getLogger(__name__)

SUFFIX = ".lock"
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def lock_path(path: str | Path) -> Path:
    """The lock of the file `path` names: beside its real path (links resolved, the lock's own
    name not), so that every name of the file leads to one lock."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + SUFFIX)


@dataclass
class _Held:
    fd: int
    path: Path  # the lock file
    count: int = 1
    generation: int = 0  # tells this hold from a later one of the same file
    names: set = dataclass_field(default_factory=set)  # the paths it was taken by (a link may change meanwhile)


_generations = iter(range(1, 1 << 62))


_held: dict[str, _Held] = {}
_owned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> the finalizers of its holds


def _key(path: str | Path) -> str:
    """The held lock `path` was taken by, else the lock it leads to now."""
    name = os.path.abspath(path)
    for key, held in _held.items():
        if name in held.names:
            return key
    return str(lock_path(path))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _me(what: str) -> dict:
    slurm = SlurmEnvironment.from_environ()
    job = slurm.job_id
    if slurm.array_job_id and slurm.array_task_id is not None:
        job = f"{slurm.array_job_id}_{slurm.array_task_id}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "slurm_job": job, "slurm_job_id": slurm.job_id, "what": what,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def describe(info: dict | None) -> str:
    if not info:
        return "another process (its lock names none)"
    text = f"host {info.get('host')}, pid {info.get('pid')}"
    if info.get("slurm_job"):
        text += f", SLURM job {info['slurm_job']}"
    if info.get("what"):
        text += f", {info['what']}"
    return text + (f", since {info['started']}" if info.get("started") else "")


# what a lock file may say, by field; anything else in it is ignored (it names no holder)
_FIELDS = {"host": str, "pid": int, "pid_start": str, "slurm_job": str, "slurm_job_id": str, "what": str,
           "started": str}
_JOB_ID = re.compile(r"[0-9]+([_+][0-9]+)?")


def _read(fd: int) -> dict | None:
    """The holder the lock file names: its fields of the expected types (short printable strings,
    a SLURM job id of digits), or None where it names none (empty, not JSON, another shape)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "null")
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    kept = {k: v for k, v in info.items() if k in _FIELDS and type(v) is _FIELDS[k]
            and (not isinstance(v, str) or (len(v) <= 200 and v.isprintable()))}
    if "slurm_job_id" in kept and not _JOB_ID.fullmatch(kept["slurm_job_id"]):
        del kept["slurm_job_id"]
    return kept or None


def _write(fd: int, info: dict) -> None:
    data = (json.dumps(info, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _try_lock(fd: int) -> bool | None:
    """True: this process now holds the record lock; False: another process holds it; None: the
    file system has no record locks."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in NO_LOCKS:
            return None
        raise


def _slurm_job_running(job_id: str | None) -> bool | None:
    """Whether SLURM still lists the job (None: no job id, or squeue cannot tell)."""
    if not job_id:
        return None
    try:
        return bool(queued([str(job_id)]))
    except Exception:  # no squeue here: cannot tell
        return None


def _alive(info: dict | None, record_lock: bool | None) -> bool | None:
    """Whether the holder named by `info` still runs: True, False, or None (cannot tell).
    `record_lock`: the result of trying its record lock (True: free, None: no locks)."""
    if record_lock is False:
        return True  # held by a live process
    if not info:  # names no holder: nobody holds its record lock, or (without record locks) cannot tell
        return False if record_lock is True else None
    same_host = info.get("host") == socket.gethostname()
    if record_lock is True:  # the kernel says nobody holds it
        if same_host:
            return False
        running = _slurm_job_running(info.get("slurm_job_id"))
        return bool(running)  # a job SLURM still lists keeps it; otherwise the record lock is trusted
    if same_host:
        pid = info.get("pid")
        return isinstance(pid, int) and _start_time(pid) is not None and _start_time(pid) == info.get("pid_start")
    return _slurm_job_running(info.get("slurm_job_id"))


def acquire(path: str | Path, what: str, field: str = "output.surface", owner: object = None) -> None:
    """Hold the write lock of `path` (re-entrant within this process): a live holder elsewhere is
    a UserError naming it; a stale lock is taken over. Released by `release`, by
    `release_owned(owner)` (the driver, when a run ends however it ends), when `owner` (the
    job's Work object) is garbage-collected, or at exit."""
    key = _key(path)
    if key not in _held:
        _take(path, key, what, field)
        _held[key].names.add(os.path.abspath(path))
        _one_name(path, key, field)
        _sweep(Path(key), path)
    else:
        _held[key].count += 1
        _held[key].names.add(os.path.abspath(path))
    if owner is not None:  # released with the owner, unless this hold has ended (and another begun) by then
        _owned.setdefault(owner, []).append(weakref.finalize(owner, _release_hold, path, _held[key].generation))


def _take(path, key: str, what: str, field: str) -> None:
    lock = Path(key)
    me = _me(what)
    try:
        diskspace.make_folder(lock.parent)  # a new file's folder is made here, before its lock (removed if left empty)
    except OSError as exc:
        raise UserError(f"{field}: cannot make the folder {lock.parent} for {path}: "
                        f"{fs_cause(exc.errno, lock.parent.parent)}") from None
    for _ in range(20):
        fd = _create(lock, me, field, path)
        if fd is not None:
            _held[key] = _Held(fd, lock, generation=next(_generations))
            return
        fd = _open_lock(lock, field, path)
        if fd is None:
            continue  # released meanwhile
        state = _try_lock(fd)
        if state is True and not _same_file(lock, fd):
            os.close(fd)  # the holder removed it as we opened it (and another may have made one): look again
            continue
        info = _read(fd)
        alive = _alive(info, state)
        if alive is False:
            if state is True:  # under the old file's record lock nobody else can take it over: ours replaces it
                try:
                    mine = _create(lock, me, field, path, replace=True)
                finally:
                    os.close(fd)
                _held[key] = _Held(mine, lock, generation=next(_generations))
            else:  # no record locks: remove it and make ours
                os.close(fd)
                Path(lock).unlink(missing_ok=True)
            log.warning("%s: took over the lock %s left by %s, which has ended", path, lock, describe(info))
            if state is True:
                return
            continue
        os.close(fd)
        if alive is None:
            raise UserError(f"{field}: {path} is locked by {describe(info)} ({lock}); this host cannot tell whether "
                            f"that job still runs: remove {lock} if it has ended")
        raise UserError(f"{field}: {path} is being written by {describe(info)}; wait for it to end or choose "
                        f"another file (lock {lock})")
    raise UserError(f"{field}: cannot take the lock {lock} of {path} (it changes hands too often)")


def _open_lock(lock: Path, field: str, path) -> int | None:
    """The existing lock file, opened for reading and its record lock without following a link;
    None if it is gone. One that is not a regular file is refused, and never opened."""
    try:
        kind = os.lstat(lock).st_mode
        if stat.S_ISREG(kind):
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            kind = os.fstat(fd).st_mode
            if not stat.S_ISREG(kind):  # replaced between lstat and open
                os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise UserError(f"{field}: cannot open the lock {lock} of {path} ({exc.strerror})") from None
        kind = stat.S_IFLNK
    if stat.S_ISREG(kind):
        return fd
    raise UserError(f"{field}: the lock {lock} of {path} is {_kind(kind)}, not a regular file; remove it "
                    "(the lock is a file this tool makes, and it follows no link)")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a file"


def _one_name(path, key: str, field: str) -> None:
    """Refuse (and release) a file with other names (hard links): the lock beside one name is
    not seen by a writer of another."""
    try:
        st = os.stat(key[:-len(SUFFIX)])
    except OSError:
        return  # not made yet
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        release(path)
        raise UserError(f"{field}: {path} has {st.st_nlink} names (hard links), and the write lock of one name "
                        "does not stop a writer of another; write a file with one name (copy it, or remove the "
                        "other links)")


def _create(lock: Path, me: dict, field: str, path, replace: bool = False) -> int | None:
    """Make the lock file with our record in it, locked, atomically: linked to the name (None if
    one exists), or renamed over it (`replace`: a lock taken over)."""
    tmp = lock.with_name(f".{lock.name}.{me['host']}.{me['pid']}")
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileExistsError:  # left by a killed process of our pid, or a link put there: never written through
            tmp.unlink()
            fd = os.open(tmp, flags, 0o644)
    except OSError as exc:
        raise UserError(f"{field}: cannot write the lock {lock} of {path}: {fs_cause(exc.errno, lock.parent)}") from None
    try:
        _try_lock(fd)
        _write(fd, me)
        if replace:
            os.rename(tmp, lock)
        else:
            os.link(tmp, lock)
    except FileExistsError:
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise UserError(f"{field}: cannot write the lock {lock} of {path}: {fs_cause(exc.errno, lock.parent)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return fd


def _sweep(lock: Path, path) -> None:
    """The writer, now alone, removes what a process killed at the wrong moment left beside the
    file: the temporary of a lock (.<file>.lock.<host>.<pid>) and a room probe, where that pid is
    gone from this host."""
    host = socket.gethostname()
    for tmp in lock.parent.glob(f".{lock.name}.{host}.*"):
        pid = tmp.name.rsplit(".", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _start_time(int(pid)) is None:
            tmp.unlink(missing_ok=True)
    sweep_probes(path)


def _same_file(lock: Path, fd: int) -> bool:
    try:
        here, held = os.lstat(lock), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def busy(path: str | Path) -> dict | None:
    """The holder of `path`'s lock where one is alive (or cannot be judged), else None. Takes
    nothing: the record lock is tested and released at once. A lock this process holds is not
    looked at (closing another descriptor of it would drop the record lock)."""
    if _key(path) in _held:
        return None
    lock = lock_path(path)
    try:
        fd = _open_lock(lock, "", path)
    except UserError:  # not a regular file: no holder there (its writer is refused taking it)
        return None
    if fd is None:
        return None
    try:
        state = _try_lock(fd)
        info = _read(fd)
        if state is True:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return None if _alive(info, state) is False else (info or {})
    finally:
        os.close(fd)


def release(path: str | Path) -> None:
    """Give up one hold of `path`'s lock; the last removes the lock file."""
    key = _key(path)
    held = _held.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count > 0:
        return
    del _held[key]
    try:
        if _same_file(held.path, held.fd):
            held.path.unlink()  # before the record lock goes: nobody takes over a lock being removed
    except OSError:
        pass
    os.close(held.fd)
    diskspace.remove_made_folders()  # a run that failed before its file was made leaves no empty folder


def release_owned(owner: object) -> None:
    """End now the holds taken for `owner`, without waiting for it to be collected (a failed
    call's traceback keeps it alive: a notebook keeps its last one)."""
    for finalizer in _owned.pop(owner, []):
        finalizer()  # runs once: the collection of `owner` later does nothing


def _release_hold(path: str | Path, generation: int) -> None:
    held = _held.get(_key(path))
    if held is not None and held.generation == generation:
        release(path)


def release_all() -> None:
    for key in list(_held):
        _held[key].count = 1
        release(key[:-len(SUFFIX)])


class holding:
    """`with holding(path, what):` the lock for a block (re-entrant)."""

    def __init__(self, path: str | Path, what: str, field: str = "output.surface"):
        self.path, self.what, self.field = path, what, field

    def __enter__(self):
        acquire(self.path, self.what, self.field)
        return self

    def __exit__(self, *exc):
        release(self.path)


atexit.register(release_all)


diskspace.before_exit(release_all)  # a failed write ends the process without atexit
