"""Driving a per-point job (job.Work: a surface, a shard, the Hessian maps): one process, or an
MPI coordinator with workers.

This module moves work and results between ranks and into the file; what a step does is the
work's (job.py), the numerics are evaluate.py's. Exit codes: 0 complete, 3 stopped by a
signal with a resumable file.

Rank 0 (or the one process) opens a surface file three times on a new run (create, prepare,
evaluate) and three times on a resume (plan, prepare, evaluate), once more when the run adds
a split or a note to the file (lifecycle.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm

from losslandscape.run.environment import MPIEnvironment, mpi_environment
from losslandscape.errors import EXIT_DONE, EXIT_STOPPED, JobFailed, UserError, one_line, print_error
from losslandscape.surfacefile import room
from losslandscape.surfacefile.format import open_h5
from losslandscape.numerics.grid import split_units
from losslandscape.run.work import SurfaceWork, Work, begin, evaluator_notes
from losslandscape.run.protocol import POLL_MIN_SECONDS, POLL_SECONDS, TAG_ERROR, TAG_REQUEST, TAG_UNIT, Finished

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT (a SLURM time limit, Ctrl-C): finish the current point, then stop."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.signum = signum
        log.warning("received %s: finishing the current point (streamed data: dropping the current unit), then "
                    "stopping", signal.Signals(signum).name)

    @contextmanager
    def installed(self):
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Progress:
    """A tqdm bar on a terminal; plain log lines every `every` seconds otherwise."""

    def __init__(self, total: int, initial: int, label: str = "surface", every: float = 10.0):
        self.tty = sys.stderr.isatty() or "ipykernel" in sys.modules  # a terminal or a notebook
        self.bar = tqdm(total=total, initial=initial, unit="pt", dynamic_ncols=True, disable=not self.tty,
                        desc=label)
        self.total, self.done, self.every = total, initial, every
        self.start, self.start_done, self.last = time.monotonic(), initial, 0.0

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if not self.tty and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%d/%d points (%.0f%%), %.2f points/s, ETA %s", self.done, self.total,
                     100.0 * self.done / self.total, rate, _hms(eta))

    def close(self) -> None:
        self.bar.close()


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_serial(work: Work) -> int:
    """Compute every pending point of `work` (a surface, a shard, the Hessian maps) in this
    process. The file is opened once for the whole evaluation."""
    plan = work.plan()
    evaluator = work.load()
    if hasattr(work, "centre") and evaluator.device.type == "cpu":
        work.centre = evaluator.model
    prep = begin(work, plan, evaluator_notes([evaluator]))
    if hasattr(work, "centre"):
        work.centre = None
    if len(prep.pending) == 0:
        return EXIT_DONE
    stop = StopFlag()
    progress = Progress(prep.total, prep.total - len(prep.pending), work.label)
    with open_h5(prep.path, "r+") as f:
        work.attach(evaluator, prep, f)
        writer = work.writer(f)
        done = work.done(f)
        with stop.installed():
            for unit in split_units(prep.pending, resolve_unit_size(work.unit_size)):
                finished = evaluate_unit(work, evaluator, prep.axes, unit, done, stop)
                if finished.points:
                    writer.write(finished)
                    progress.update(len(finished.points))
                if stop:
                    break
    progress.close()
    return _finish(stop, prep.path, work)


def _finish(stopped, path, work) -> int:
    if stopped:
        log.warning("stopped early; %s is resumable: run the same command again", path)
        return EXIT_STOPPED
    work.finished(path)
    return EXIT_DONE


def evaluate_unit(work, evaluator, axes, unit, done, stop) -> Finished:
    """Evaluate the points of a unit (what each still lacks); stop early on a signal. Streamed
    data is read once for the whole unit (a signal during it loses the unit)."""
    out = Finished([], [], [])
    coords = axes.coordinates(unit)
    if getattr(evaluator, "streamed", False) and hasattr(work, "unit_values"):
        t0 = time.perf_counter()
        results = work.unit_values(evaluator, unit.tolist(), [(float(a), float(b)) for a, b in coords], done,
                                   lambda: bool(stop))
        if results is None:
            return out
        seconds = (time.perf_counter() - t0) / max(len(results), 1)
        return Finished(unit.tolist(), results, [seconds] * len(results))
    for p, (a, b) in zip(unit.tolist(), coords):
        if stop:
            break
        t0 = time.perf_counter()
        out.results.append(work.point(evaluator, p, float(a), float(b), done))
        out.seconds.append(time.perf_counter() - t0)
        out.points.append(p)
    return out


# --- MPI ----------------------------------------------------------------------------------
#
# No hang, ever: every step that can fail runs inside `agree`, which gathers each rank's
# error to rank 0 and lets every rank learn the outcome, so all ranks leave together with
# one line printed by rank 0. During the evaluation a failing worker reports its error to
# the coordinator, which stops handing out work, waits DRAIN_SECONDS for the others to
# finish their unit, and otherwise ends the job with MPI_Abort. A step that is itself
# collective (creating or opening the file under parallel HDF5) aborts the job at once.

DRAIN_SECONDS = 10.0  # how long the coordinator waits for busy workers after an error
RELEASE_SECONDS = 30.0  # how long a failed worker waits for the coordinator before it aborts


def describe(exc: BaseException, rank: int) -> str:
    """One line naming the rank and the cause; a bug's traceback goes to the debug log."""
    if not isinstance(exc, UserError):
        log.debug("rank %d failed", rank, exc_info=exc)
    return f"rank {rank}: {one_line(exc)}"


def _first(errors: list[str | None]) -> str | None:
    """The error line to print: the lowest failing rank's, naming the others with the same cause."""
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return None
    rank, line = failed[0]
    cause = line.split(": ", 1)[1]
    if len(failed) == len(errors) and all(e.split(": ", 1)[1] == cause for _, e in failed):
        return cause  # the same on every rank (a spec, a missing file): no rank to name
    same = [r for r, e in failed[1:] if e.split(": ", 1)[1] == cause]
    if same:
        line = f"ranks {', '.join(str(r) for r in [rank, *same])}: {cause}"
    others = len(failed) - 1 - len(same)
    return line + (f" (and {others} other rank(s) failed too)" if others else "")


def agree(comm, step, *args):
    """Run `step` on this rank, then learn on every rank whether any rank failed (collective).

    Returns the step's result; raises JobFailed everywhere if some rank raised."""
    result, error = None, None
    try:
        result = step(*args)
    except Exception as exc:  # any error of any rank ends the job; KeyboardInterrupt propagates
        error = describe(exc, comm.rank)
    errors = comm.gather(error, root=0)
    line = comm.bcast(_first(errors) if comm.rank == 0 else None, root=0)
    if line is not None:
        raise JobFailed(line, comm.rank == 0)
    return result


def _or_abort(comm, step, *args):
    """A collective step: if it fails on this rank, the others may be waiting inside it, so the
    only way out that cannot hang is MPI_Abort (after the one line)."""
    try:
        return step(*args)
    except Exception as exc:
        _abort(comm, describe(exc, comm.rank))


def _abort(comm, line: str) -> None:
    print_error(line)
    comm.Abort(1)


def run(work: Work, comm=None) -> int:
    """Compute every pending point of `work` (a surface, a SLURM task's shard, the Hessian maps):
    one process, or a coordinator and workers under mpirun/srun."""
    env = mpi_environment(comm)
    if env.comm is None:
        return run_serial(work)
    return run_mpi(work, env)


def run_mpi(work: Work, env: MPIEnvironment) -> int:
    """The job's steps over the ranks of `env.comm` (job.py: plan, load, make + create, prepare,
    attach, evaluate); raises JobFailed on every rank when any rank failed."""
    comm, lead = env.comm, env.is_coordinator
    room.end_job_on_failed_write(comm)  # a refused write leaves its file open: only MPI_Abort ends the job
    from mpi4py import MPI

    # where each rank runs: the node-local worker index picks a worker's GPU (environment.device_for)
    log.info("on node %s: %s", MPI.Get_processor_name(), "coordinator" if lead else
             f"worker {env.worker_index} of {env.workers_on_node} on this node")

    # 1. rank 0 plans and makes what a new file holds (nothing written); each worker loads
    def lead_step():
        plan = work.plan()
        return None if plan is None else work.make(plan)

    loaded = agree(comm, lead_step if lead else lambda: work.load(env.worker_index, env.workers_on_node))
    made, evaluator = (loaded, None) if lead else (None, loaded)
    evaluators = comm.gather(None if lead else evaluator_notes([evaluator]), root=0)
    notes = evaluator_notes(evaluators[1:], merged=True) if lead else {}

    # 2. the file (or the maps) is created by every rank together, or by rank 0 alone
    how = comm.bcast(None if made is None else "all" if env.parallel_hdf5 and work.collective(made) else "one",
                     root=0)
    if how == "all":
        made, notes = comm.bcast((made, notes), root=0)
        _or_abort(comm, work.create, made, notes, comm)
    elif how == "one" and lead:
        _or_abort(comm, work.create, made, notes)

    # 3. rank 0 records the run and finds the pending points; workers read the directions
    def prepare_step():
        prep = work.prepare(how is not None, notes)
        log.info("%d workers; %s", env.size - 1,
                 "workers write through parallel HDF5" if env.parallel_hdf5 else "rank 0 writes (no parallel HDF5)")
        return prep

    prep = comm.bcast(agree(comm, prepare_step if lead else lambda: None), root=0)
    if len(prep.pending) == 0:
        return EXIT_DONE
    agree(comm, (lambda: None) if lead else (lambda: work.attach(evaluator, prep, None, first=comm.rank == 1)))
    return _evaluate_mpi(work, env, evaluator, prep)


def _evaluate_mpi(work: Work, env: MPIEnvironment, evaluator, prep) -> int:
    """Open the file once on every rank that writes (collective with mpio), evaluate, close."""
    comm, lead = env.comm, env.is_coordinator
    stop = StopFlag()
    with stop.installed():
        if env.parallel_hdf5:
            f = _or_abort(comm, open_h5, prep.path, "r+", comm)
        elif lead:
            f = _or_abort(comm, open_h5, prep.path, "r+")
        else:
            f = None
        error = None
        try:
            writer = _or_abort(comm, work.writer, f, not env.parallel_hdf5) if f is not None else None
            if lead:
                stopped, error = coordinate(comm, prep, work.unit_size, writer, stop, work.label)
            else:
                error = serve(comm, work, evaluator, prep, writer, stop)
                stopped = False
        finally:
            if f is not None:
                f.close()
    stopped, line = comm.bcast((bool(stopped), error), root=0)
    if line is not None:
        if lead:
            log.warning("%s keeps every point computed so far: run the same command again to compute the rest",
                        prep.path)
        raise JobFailed(line, lead)
    if not lead:
        return EXIT_STOPPED if stopped else EXIT_DONE
    return _finish(stopped, prep.path, work)


# evaluation.unit_size = "auto" (issue #22; the figures: coordsim.py, `make bench`). The
# coordinator serves a request in about 25-50 us of CPU and answers within POLL_SECONDS of
# its arrival, so a unit should last much longer than that wait and come rarely enough for
# one core; and the last units should be small, so that workers finish together.
AUTO_UNITS_PER_WORKER = 4  # guided self-scheduling: a unit is the pending points / (this x workers)
AUTO_MAX_UNIT = 16  # points a SIGKILLed worker can lose, and the largest unit early in a run
AUTO_SERIAL_UNIT = 4  # one process or SLURM array tasks: no load to balance; the unit is the flush
AUTO_WAIT_SHARE = 0.02  # a worker's wait for its next unit: at most this share of the unit's time
AUTO_LOAD = 0.25  # the coordinator's busy share at most (REQUEST_SECONDS per request)
REQUEST_SECONDS = 50e-6  # coordinator CPU per request, rounded up from 23-48 us measured at 16-256 workers


def resolve_unit_size(unit_size: int | str) -> int:
    """The points per unit of one process or of a SLURM array's static split: `unit_size`, or
    AUTO_SERIAL_UNIT for "auto" (the coordinator sizes "auto" units as it goes: `Units`)."""
    return AUTO_SERIAL_UNIT if unit_size == "auto" else int(unit_size)


class Units:
    """The units still to hand out, in the order of `pending`: of `unit_size` points, or for
    "auto" (guided self-scheduling) the pending points / (AUTO_UNITS_PER_WORKER x workers),
    at most AUTO_MAX_UNIT and at least what keeps a worker's wait (POLL_SECONDS) within
    AUTO_WAIT_SHARE of its unit and the coordinator within AUTO_LOAD of a core, given the
    seconds per point the workers report (`observe`); but never more than an equal share of
    what is left, so that near the end the units shrink to single points and workers finish
    together."""

    def __init__(self, pending: np.ndarray, unit_size: int | str, workers: int):
        self.pending, self.next = np.asarray(pending, dtype=np.int64), 0
        self.size = None if unit_size == "auto" else int(unit_size)
        if self.size is not None and self.size < 1:
            raise ValueError("unit_size must be >= 1")
        self.workers, self.floor, self.point_seconds = max(workers, 1), 1, None

    def __len__(self) -> int:
        return len(self.pending) - self.next

    def observe(self, seconds: list[float]) -> None:
        """A finished unit's seconds per point (a moving average sets the smallest auto unit)."""
        if self.size is not None or not seconds:
            return
        t = float(np.mean(seconds))
        self.point_seconds = t if self.point_seconds is None else 0.8 * self.point_seconds + 0.2 * t
        t = max(self.point_seconds, 1e-9)
        need = max(POLL_SECONDS / (AUTO_WAIT_SHARE * t), self.workers * REQUEST_SECONDS / (AUTO_LOAD * t))
        self.floor = int(min(max(np.ceil(need), 1), AUTO_MAX_UNIT))

    def popleft(self) -> np.ndarray:
        size = self.size
        if size is None:
            guided = int(np.ceil(len(self) / (AUTO_UNITS_PER_WORKER * self.workers)))
            share = int(np.ceil(len(self) / self.workers))  # near the end: no more than an equal share
            size = min(max(guided, self.floor), share, AUTO_MAX_UNIT)
        unit = self.pending[self.next:self.next + size]
        self.next += len(unit)
        return unit


def coordinate(comm, prep, unit_size: int | str, writer, stop: StopFlag, label: str = "surface") -> tuple[bool, str | None]:
    """Rank 0: hand out units on request until none are left. Returns (stopped by a signal,
    the error line if some rank failed). After an error no more work is handed out; workers
    still busy after DRAIN_SECONDS are ended with MPI_Abort.

    Waiting is Iprobe + a short sleep: a blocking receive in Open MPI spins a whole core. The
    sleep starts at POLL_MIN_SECONDS after a message and doubles up to POLL_SECONDS while none
    comes: a busy coordinator answers at once, an idle one costs nothing.
    """
    from mpi4py import MPI

    units = Units(prep.pending, unit_size, comm.size - 1)
    active = set(range(1, comm.size))
    progress = Progress(prep.total, prep.total - len(prep.pending), label)
    status = MPI.Status()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    error, deadline, nap = None, None, POLL_MIN_SECONDS
    while active:
        if error is not None and time.monotonic() > deadline:
            progress.close()
            _abort(comm, f"{error} (ranks {', '.join(map(str, sorted(active)))} did not finish their unit "
                         f"within {DRAIN_SECONDS:g} s and were ended)")
        if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            time.sleep(nap)
            nap = min(2 * nap, POLL_SECONDS)
            continue
        nap = POLL_MIN_SECONDS
        worker, tag = status.Get_source(), status.Get_tag()
        message = comm.recv(source=worker, tag=tag)
        if tag == TAG_ERROR:
            if error is None:
                error, deadline = message, time.monotonic() + DRAIN_SECONDS
            comm.send(None, dest=worker, tag=TAG_UNIT)  # released: it closes the file with the others
            active.discard(worker)
            continue
        try:
            if message is not None and message.points:
                if message.results is not None and writer is not None:
                    writer.write(message)  # the worker could not write itself
                progress.update(len(message.points))
                units.observe(message.seconds)
            if message is not None and message.stopped and not stop:
                stop.signum = signal.SIGTERM  # a signalled worker means the job is being stopped
        except Exception as exc:  # the coordinator's own failure ends the job like a worker's
            if error is None:
                error, deadline = describe(exc, 0), time.monotonic() + DRAIN_SECONDS
        if units and not stop and error is None:
            comm.send(units.popleft(), dest=worker, tag=TAG_UNIT)
        else:
            comm.send(None, dest=worker, tag=TAG_UNIT)
            active.discard(worker)
    progress.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    log.info("coordinator CPU use: %.2f s in %.1f s (%.1f%% of a core)", cpu, wall, 100.0 * cpu / max(wall, 1e-9))
    return bool(stop) or bool(units), error


def serve(comm, work, evaluator, prep, writer, stop: StopFlag) -> str | None:
    """A worker: evaluate units until told to stop. On an error, report it to the coordinator
    and wait to be released (then the file is closed with everyone), or abort the job."""
    try:
        with open_h5(prep.path, "r") if writer is None else contextlib.nullcontext(writer.f) as f:
            done = work.done(f)
        report = None
        while True:
            comm.send(report, dest=0, tag=TAG_REQUEST)
            unit = comm.recv(source=0, tag=TAG_UNIT)
            if unit is None:
                return None
            finished = evaluate_unit(work, evaluator, prep.axes, unit, done, stop)
            finished.stopped = bool(stop)
            if writer is not None and finished.points:
                writer.write(finished)
                finished.results = None  # counts only: the values are in the file
            report = finished
    except Exception as exc:
        line = describe(exc, comm.rank)
        comm.send(line, dest=0, tag=TAG_ERROR)
        deadline = time.monotonic() + RELEASE_SECONDS
        while not comm.Iprobe(source=0, tag=TAG_UNIT):
            if time.monotonic() > deadline:
                _abort(comm, line)
            time.sleep(POLL_SECONDS)
        comm.recv(source=0, tag=TAG_UNIT)
        return line
