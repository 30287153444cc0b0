"""The run driver: a per-point job (a `Work`: a surface, a SLURM task's shard, the Hessian
maps) from a verb to its written points, in one process or as an MPI coordinator with workers.

The path of one job, in the order it runs (the steps are the work's: work.py, hessianmaps.py):

    run_job     read the environment once; one process, or every rank (building the work is
                one agreed step: a bad spec is one line, not a hang)
    run_serial  plan -> load -> make + create -> prepare -> attach -> evaluate and write, unit by unit
    run_mpi     the same steps spread over the ranks: rank 0 plans, makes and prepares, each
                worker loads and attaches; the file is created by every rank together (parallel
                HDF5) or by rank 0; then rank 0 hands out units (distributed.coordinate) and the
                workers evaluate them (distributed.serve), writing themselves or through rank 0;
                with evaluation.ranks_per_model = K the workers form groups of K (groups.py),
                each sharding one model once loaded, and a unit goes to a whole group

Units are fixed in one process (numerics/grid.split_units) and sized as they go under MPI
(numerics/schedule.Units). A signal (SIGTERM: a SLURM time limit; Ctrl-C) finishes the current
point, then stops with a resumable file. Exit codes: 0 complete, 3 stopped by a signal.

Rank 0 (or the one process) opens a surface file three times on a new run (create, prepare,
evaluate) and three times on a resume (plan, prepare, evaluate), once more when the run adds
a split or a note to the file (surfacefile/write.prepare).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from losslandscape.numerics.grid import split_units
from losslandscape.numerics.schedule import Units, resolve_unit_size
from losslandscape.errors import EXIT_DONE, EXIT_ERROR, EXIT_STOPPED, JobFailed, UserError, print_error
from losslandscape.run import groups
from losslandscape.run.distributed import agree, coordinate, describe, or_abort, serve
from losslandscape.run.environment import MPIEnvironment, mpi_environment
from losslandscape.run.protocol import Finished
from losslandscape.run.work import Notes, Work
from losslandscape.surfacefile import lock as writelock
from losslandscape.surfacefile import room
from losslandscape.surfacefile.format import A_VALUES
from losslandscape.surfacefile.write import open_points

log = logging.getLogger(__name__)



def run_job(make_work: Callable[[], Work], log_rank: Callable[[int], None] | None = None, comm=None) -> int:
    """A verb's per-point job, from building its work to the last point written: one process,
    or every rank of `comm` (default: COMM_WORLD) under mpirun/srun. The environment is read
    here, once. `log_rank(rank)` is called first on each rank of an MPI job (the command line
    names the rank in its log lines).

    Under MPI a failure that the ranks agreed on is printed once, by rank 0, and returns 1;
    anything else escaping on one rank may leave the others waiting, so it ends the job with
    MPI_Abort after its one line."""
    env = mpi_environment(comm)
    if env.comm is None:
        return run_serial(make_work())
    if log_rank is not None:
        log_rank(env.rank)
    try:
        return run_mpi(agree(env.comm, make_work), env)
    except JobFailed as exc:
        if exc.printer:
            print_error(exc.line)
        return EXIT_ERROR
    except Exception as exc:
        print_error(describe(exc, env.rank))
        env.comm.Abort(1)
        raise


# --- one process ----------------------------------------------------------------------------

def run_serial(work: Work, stop: StopFlag | None = None) -> int:
    """Compute every pending point of `work` in this process. The file is opened once for the
    whole evaluation, and it is closed and its write lock released when this returns or raises,
    whatever the exception (not when `work` is collected: a notebook keeps the last traceback,
    and with it `work`, alive). `stop`: the flag the signals set (the caller's, to tell Ctrl-C
    from SIGTERM afterwards)."""
    try:
        return _serial(work, stop if stop is not None else StopFlag())
    finally:
        writelock.release_owned(work)


def _serial(work: Work, stop: StopFlag) -> int:
    k = work.ranks_per_model
    if k > 1:
        raise UserError(f"evaluation.ranks_per_model: {k} shares one model among {k} worker ranks of an MPI job, "
                        f"and this is one process; run it under mpirun or srun with 1 + a multiple of {k} ranks "
                        f"(e.g. mpirun -n {1 + k}), or set ranks_per_model = 1")
    plan = work.plan()  # read-only: new file, conversion, resume, or refused
    evaluator = work.load()  # before anything is written: a run that cannot start leaves no file
    notes = evaluator_notes([evaluator])
    if plan is not None:
        # on the CPU this process's model makes the directions: a large model is not held twice
        work.create(work.make(plan, evaluator.model if evaluator.device.type == "cpu" else None), notes)
        gc.collect()  # the model and directions `make` built (a large model's are GBs) go now
    prep = work.prepare(plan is not None, notes)
    if len(prep.pending) == 0:
        return EXIT_DONE
    progress = Progress(prep.total, prep.total - len(prep.pending), work.label)
    with open_points(prep.path) as f, contextlib.closing(progress):  # the bar too, however the run ends
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
    return _finish(stop, prep.path, work)


def evaluate_unit(work: Work, evaluator, axes, unit: np.ndarray, done, stop: StopFlag) -> Finished:
    """Evaluate the points of a unit (what each still lacks); stop early on a signal. Streamed
    data is read once for the whole unit (a signal during it loses the unit)."""
    out = Finished([], [], [])
    coords = axes.coordinates(unit)
    if evaluator.streamed:
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


def _finish(stopped, path: Path, work: Work) -> int:
    if stopped:
        log.warning("stopped early; %s is resumable: run the same command again", path)
        return EXIT_STOPPED
    work.finished(path)
    return EXIT_DONE


def evaluator_notes(notes_or_evaluators: list, merged: bool = False) -> Notes:
    """The attributes that record how the evaluating processes ran: BatchNorm folding (each
    distinct line) and the values a point has. `merged`: combine the notes of several workers."""
    if not merged:
        e = notes_or_evaluators[0]
        values = getattr(e, "values", None)  # a surface's evaluator; the Hessian maps' has none
        return {"batchnorm_folding": e.folding, **({A_VALUES: json.dumps(list(values))} if values else {})}
    folding = sorted({n["batchnorm_folding"] for n in notes_or_evaluators if n})
    # every worker runs the same model, data and loss: the first one's values stand for all
    values = next((n[A_VALUES] for n in notes_or_evaluators if n and A_VALUES in n), None)
    return {"batchnorm_folding": "; ".join(folding), **({A_VALUES: values} if values else {})}


# --- MPI: a coordinator (rank 0) and workers --------------------------------------------------

def run_mpi(work: Work, env: MPIEnvironment) -> int:
    """The job's steps over the ranks of `env.comm`; raises JobFailed on every rank when any
    rank failed."""
    comm, lead = env.comm, env.is_coordinator
    room.end_job_on_failed_write(comm)  # a refused write leaves its file open: only MPI_Abort ends the job
    # where each rank runs: the node-local worker index picks a worker's GPU (environment.device_for)
    log.info("on node %s: %s", env.node, "coordinator" if lead else
             f"worker {env.worker_index} of {env.workers_on_node} on this node")

    # 1. rank 0 plans and makes what a new file holds (nothing written); each worker loads
    k = work.ranks_per_model  # workers that share one model (groups.py)
    agree(comm, groups.check_size, comm.size, k)

    def lead_step():
        plan = work.plan()
        return None if plan is None else work.make(plan)

    loaded = agree(comm, lead_step if lead else lambda: work.load(env.worker_index, env.workers_on_node))
    made, evaluator = (loaded, None) if lead else (None, loaded)
    # with K > 1 each group shards its model over its ranks (built on the meta device: each reads its rows)
    group = groups.split(comm, k) if k > 1 else None
    try:
        if k > 1:
            agree(comm, (lambda: None) if lead else (lambda: groups.shard(evaluator, group, comm.rank)))
        evaluators = comm.gather(None if lead else evaluator_notes([evaluator]), root=0)
        notes = evaluator_notes(evaluators[1:], merged=True) if lead else {}

        # 2. the file (or the maps) is created by every rank together, or by rank 0 alone
        how = comm.bcast(None if made is None else "all" if env.parallel_hdf5 and work.collective(made) else "one",
                         root=0)
        if how == "all":
            made, notes = comm.bcast((made, notes), root=0)
            or_abort(comm, work.create, made, notes, comm)
        elif how == "one" and lead:
            or_abort(comm, work.create, made, notes)
        # what was created (its directions, whole; on every rank under parallel HDF5) is not kept for
        # the rest of the job: each worker reads its own copy of the directions from the file
        made = loaded = None
        gc.collect()

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

        # 4. the file is opened once on every rank that writes (collective with mpio); units go out
        stop = StopFlag()
        with stop.installed():
            if env.parallel_hdf5:
                f = or_abort(comm, open_points, prep.path, comm)
            elif lead:
                f = or_abort(comm, open_points, prep.path)
            else:
                f = None
            try:
                writer = or_abort(comm, work.writer, f, not env.parallel_hdf5) if f is not None else None
                if lead:
                    teams = groups.members(comm.size, k)
                    units = Units(prep.pending, work.unit_size, len(teams))
                    progress = Progress(prep.total, prep.total - len(prep.pending), work.label)
                    write = writer.write if writer is not None else None
                    stopped, error = coordinate(comm, units, write, stop, progress, teams)
                else:
                    stopped, error = False, serve(comm, *_worker(work, evaluator, prep, writer, stop))
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
    finally:
        if group is not None:
            groups.leave()
            group.Free()


def _worker(work: Work, evaluator, prep, writer, stop: StopFlag):
    """(evaluate, start) of a worker for distributed.serve: `start` reads what each point
    already has; `evaluate` computes a unit and writes it where this worker can write (its
    report then carries the counts only), else its values go to rank 0 with the report."""
    done = {}
    share = getattr(evaluator, "share", None)
    writes = share is None or share.rank == 0  # of a group sharing one model, its first rank writes
    agreed = stop if share is None else Agreed(stop, share)

    def start() -> None:
        with open_points(prep.path, write=False) if writer is None else contextlib.nullcontext(writer.f) as f:
            done.update(work.done(f))

    def evaluate(unit: np.ndarray) -> Finished:
        finished = evaluate_unit(work, evaluator, prep.axes, unit, done, agreed)
        finished.stopped = bool(stop)
        if not writes:
            return Finished([], None, [], finished.stopped)
        if writer is not None and finished.points:
            writer.write(finished)
            finished.results = None  # counts only: the values are in the file
        return finished

    return evaluate, start


class Agreed:
    """A stop flag that a group sharing one model agrees on: true when it is on some rank of the
    group (each test is collective: every rank of the group tests it at the same places)."""

    def __init__(self, stop: StopFlag, share):
        self.stop, self.share = stop, share

    def __bool__(self) -> bool:
        return self.share.any(bool(self.stop))


# --- signals and progress -------------------------------------------------------------------

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
