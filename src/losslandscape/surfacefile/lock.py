"""One writer per file: a lock beside each surface or shard file that a job writes.

Two jobs writing one HDF5 file (a double submission, a `surface` run started while an array
task or a merge works on the same file) would keep two metadata caches of one file, which HDF5
does not support. So the process that writes a file holds `<file>.lock`: the `surface` and
`trajectory` runs and the Hessian maps (rank 0 under MPI; its workers write through parallel
HDF5 under its lock), each SLURM array task for its own shard file, `merge` and `submit` for
the surface. A `surface` run is also refused while an array task holds a lock on one of the
surface's shards. Readers (`render`, `summary`, `status`, `open_surface`) take no lock.

The lock file holds JSON: host, pid, the process's start time (to tell a reused pid), the SLURM
job id where there is one, what the job does and when it started. It is made atomically: written
and locked under a temporary name, then hard-linked to `<file>.lock` (fails if one exists; NFS
and Lustre keep link atomic). While the job runs it holds a POSIX record lock (fcntl) on it, which
the kernel (and NFS's lock manager, or Lustre mounted with `-o flock`) drops when the process
ends, however it ends. A second writer is refused with one line naming the first.

A lock left behind (SIGKILL, MPI_Abort, a lost node) never blocks the next run:
- the record lock is free: the holder is gone. The next writer takes the lock over (in place,
  under the record lock, so two newcomers cannot both take it). On another host, where the lock
  names a SLURM job that `squeue` still lists, it is kept (a file system whose locks are only
  node-local, such as Lustre's `localflock`, cannot show a live holder on another node).
- where the file system has no record locks (ENOLCK, ENOSYS): a holder on this host is alive if
  its pid runs with the recorded start time; on another host, if its SLURM job is still listed
  by `squeue`. A lock from another host without a SLURM job cannot be judged there: the run is
  refused, naming the lock to remove.

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
import socket
import weakref
from dataclasses import dataclass
from pathlib import Path

from losslandscape.errors import UserError
from losslandscape.surfacefile import room as diskspace
from losslandscape.surfacefile.room import fs_cause, sweep_probes

log = logging.getLogger(__name__)

SUFFIX = ".lock"
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


@dataclass
class _Held:
    fd: int
    path: Path  # the lock file
    count: int = 1
    generation: int = 0  # tells this hold from a later one of the same file


_generations = iter(range(1, 1 << 62))


_held: dict[str, _Held] = {}


def _key(path: str | Path) -> str:
    return os.path.abspath(lock_path(path))


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _me(what: str) -> dict:
    from losslandscape.run.environment import SlurmEnvironment  # noqa: PLC0415 (SLURM's variables are read there)

    slurm = SlurmEnvironment.from_environ()
    job = slurm.job_id
    if slurm.array_job_id and slurm.array_task_id is not None:
        job = f"{slurm.array_job_id}_{slurm.array_task_id}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
            "slurm_job": job, "slurm_job_id": slurm.job_id, "what": what,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def describe(info: dict | None) -> str:
    if not info:
        return "another process (its lock is being written)"
    text = f"host {info.get('host')}, pid {info.get('pid')}"
    if info.get("slurm_job"):
        text += f", SLURM job {info['slurm_job']}"
    if info.get("what"):
        text += f", {info['what']}"
    return text + (f", since {info['started']}" if info.get("started") else "")


def _read(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "null")
    except (OSError, ValueError):
        return None


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
    from losslandscape.run.status import queued  # noqa: PLC0415

    try:
        return bool(queued([str(job_id)]))
    except Exception:  # no squeue here: cannot tell
        return None


def _alive(info: dict | None, record_lock: bool | None) -> bool | None:
    """Whether the holder named by `info` still runs: True, False, or None (cannot tell).
    `record_lock`: the result of trying its record lock (True: free, None: no locks)."""
    if record_lock is False or not info:
        return True  # held by a live process (or being written this moment: a takeover rewrites it)
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
    a UserError naming it; a stale lock is taken over. Released by `release`, when `owner` (the
    job's Work object) is garbage-collected (a finished run drops it), or at exit."""
    key = _key(path)
    if key not in _held:
        _take(path, key, what, field)
        _sweep(Path(key), path)
    else:
        _held[key].count += 1
    if owner is not None:  # released with the owner, unless this hold has ended (and another begun) by then
        weakref.finalize(owner, _release_hold, path, _held[key].generation)


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
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # released meanwhile
        except OSError as exc:
            raise UserError(f"{field}: cannot open the lock {lock} of {path} ({exc.strerror})") from None
        state = _try_lock(fd)
        if state is True and not _same_file(lock, fd):
            os.close(fd)  # the holder removed it as we opened it (and another may have made one): look again
            continue
        info = _read(fd)
        alive = _alive(info, state)
        if alive is False:
            if state is True:  # ours now, in place: nobody else can take it over meanwhile
                _write(fd, me)
                _held[key] = _Held(fd, lock, generation=next(_generations))
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


def _create(lock: Path, me: dict, field: str, path) -> int | None:
    """Make the lock file with our record in it, locked, atomically (link); None if one exists."""
    tmp = lock.with_name(f".{lock.name}.{me['host']}.{me['pid']}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
    except OSError as exc:
        raise UserError(f"{field}: cannot write the lock {lock} of {path}: {fs_cause(exc.errno, lock.parent)}") from None
    try:
        _try_lock(fd)
        _write(fd, me)
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
        return os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def busy(path: str | Path) -> dict | None:
    """The holder of `path`'s lock where one is alive (or cannot be judged), else None. Takes
    nothing: the record lock is tested and released at once. A lock this process holds is not
    looked at (closing another descriptor of it would drop the record lock)."""
    if _key(path) in _held:
        return None
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
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
