"""Running a surface job: one process, or an MPI coordinator with workers.

This module moves work and results; the numerics live in evaluate.py. Exit
codes: 0 complete, 3 stopped by a signal with a resumable file.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import surface
from .environment import MPIEnvironment, mpi_environment, pick_device, set_threads
from .errors import UserError
from .grid import split_units
from .job import check_or_plan, load_worker, pending, prepare, shard_prepared

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_STOPPED = 0, 3


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
        log.warning("received %s: finishing the current point, then stopping", signal.Signals(signum).name)

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

    def __init__(self, total: int, initial: int, every: float = 10.0):
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="pt", dynamic_ncols=True, disable=not self.tty,
                        desc="surface")
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


def run_serial(spec, shard: Path | None = None) -> int:
    """Compute every pending point of the spec's surface (or of one shard) in this process."""
    splits = list(spec.data.splits)
    prep = prepare(spec) if shard is None else shard_prepared(shard, splits)
    _announce(prep, splits)
    if len(prep.pending) == 0:
        return EXIT_DONE
    threads = set_threads(spec.evaluation.threads)
    device = pick_device(spec.evaluation.device)
    log.info("evaluating on %s with %d CPU thread(s)", device, threads)
    evaluator = load_worker(spec, prep.directions_file, device)
    stop = StopFlag()
    progress = Progress(prep.total, prep.total - len(prep.pending))
    with stop.installed(), surface.open_h5(prep.path, "r+") as f:
        writer = surface.PointWriter(f)
        done = surface.done_masks(f)
        for unit in split_units(prep.pending, spec.evaluation.unit_size):
            finished = evaluate_unit(evaluator, prep.axes, unit, splits, done, stop)
            if finished.points:
                writer.write(*finished)
                progress.update(len(finished.points))
            if stop:
                break
    progress.close()
    return _finish(stop, prep.path)


def _announce(prep, splits: list[str]) -> None:
    if prep.directions_path is not None:
        log.info("shard %s: %d of %d points done, %d to compute", prep.path, prep.total - len(prep.pending),
                 prep.total, len(prep.pending))
        return
    with surface.open_h5(prep.path, "r") as f:
        log.info("%s %s", "created" if prep.created else "resuming",
                 surface.summary_line(prep.path, f, splits, len(prep.pending)))


def _finish(stopped, path) -> int:
    if stopped:
        log.warning("stopped early; %s is resumable: run the same command again", path)
        return EXIT_STOPPED
    log.info("surface complete: %s", path)
    return EXIT_DONE


@dataclass
class Finished:
    points: list[int]
    results: list[dict[str, tuple[float, float]]] | None
    seconds: list[float]
    stopped: bool = False  # the worker was signalled and will take no more work

    def __iter__(self):
        return iter((self.points, self.results, self.seconds))


def evaluate_unit(evaluator, axes, unit, splits: list[str], done: dict[str, np.ndarray], stop) -> Finished:
    """Evaluate the points of a unit (the splits each still lacks); stop early on a signal."""
    out = Finished([], [], [])
    coords = axes.coordinates(unit)
    for p, (a, b) in zip(unit.tolist(), coords):
        if stop:
            break
        t0 = time.perf_counter()
        todo = [s for s in splits if not done[s][p]]
        out.results.append(evaluator.evaluate(float(a), float(b), todo))
        out.seconds.append(time.perf_counter() - t0)
        out.points.append(p)
    return out


# --- MPI ----------------------------------------------------------------------------------

TAG_REQUEST, TAG_UNIT = 11, 12
POLL_SECONDS = 0.005


class QuietExit(Exception):
    """A worker's way out after the coordinator has reported an error (printed once, by rank 0)."""

    def __init__(self, code: int):
        self.code = code


def run(spec, comm=None, shard: Path | None = None) -> int:
    """The `surface` verb (or a SLURM task's shard): one process, or a coordinator and
    workers under mpirun/srun."""
    env = mpi_environment(comm)
    if env.comm is None:
        return run_serial(spec, shard)
    return run_mpi(spec, env, shard)


def run_mpi(spec, env: MPIEnvironment, shard: Path | None = None) -> int:
    comm = env.comm
    splits = list(spec.data.splits)
    # 1. rank 0 checks the file or works out a new one; everyone learns the outcome
    new, error, prep = None, None, None
    if env.is_coordinator:
        try:
            if shard is None:
                new = check_or_plan(spec)
            else:
                prep = shard_prepared(shard, splits)  # a damaged or foreign shard fails here, once
        except UserError as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error is not None:
        if env.is_coordinator:
            raise UserError(error)
        raise QuietExit(1)
    # 2. a new file's structure: collective under parallel HDF5, else rank 0 alone
    creating = comm.bcast(new is not None, root=0)
    if creating:
        if env.parallel_hdf5:
            new = comm.bcast(new, root=0)
            new.write(comm)
        elif env.is_coordinator:
            new.write()
    if env.is_coordinator:
        if shard is None:
            prep = pending(spec)
        prep.created = creating
        _announce(prep, splits)
        log.info("%d workers; %s", env.size - 1,
                 "workers write through parallel HDF5" if env.parallel_hdf5 else "rank 0 writes (no parallel HDF5)")
    prep = comm.bcast(prep, root=0)
    if len(prep.pending) == 0:
        return EXIT_DONE
    # 3. open once on every rank that writes (collective with mpio), evaluate, close
    stop = StopFlag()
    with stop.installed():
        if env.parallel_hdf5:
            f = surface.open_h5(prep.path, "r+", comm)
        elif env.is_coordinator:
            f = surface.open_h5(prep.path, "r+")
        else:
            f = None
        try:
            writer = surface.PointWriter(f, flush=not env.parallel_hdf5) if f is not None else None
            if env.is_coordinator:
                stopped = coordinate(comm, prep, spec.evaluation.unit_size, writer, stop)
            else:
                work(comm, spec, env, prep, writer, stop)
                stopped = False
        finally:
            if f is not None:
                f.close()
    stopped = comm.bcast(bool(stopped), root=0)
    if not env.is_coordinator:
        return EXIT_STOPPED if stopped else EXIT_DONE
    return _finish(stopped, prep.path)


def coordinate(comm, prep, unit_size: int, writer, stop: StopFlag) -> bool:
    """Rank 0: hand out units on request until none are left; True if stopped by a signal.

    Waiting is Iprobe + a short sleep: a blocking receive in Open MPI spins a whole core.
    """
    from mpi4py import MPI

    units = deque(split_units(prep.pending, unit_size))
    active = set(range(1, comm.size))
    progress = Progress(prep.total, prep.total - len(prep.pending))
    status = MPI.Status()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while active:
        if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
            time.sleep(POLL_SECONDS)
            continue
        worker = status.Get_source()
        finished = comm.recv(source=worker, tag=TAG_REQUEST)
        if finished is not None and finished.points:
            if finished.results is not None and writer is not None:
                writer.write(*finished)  # the worker could not write itself
            progress.update(len(finished.points))
        if finished is not None and finished.stopped and not stop:
            stop.signum = signal.SIGTERM  # a signalled worker means the job is being stopped
        if units and not stop:
            comm.send(units.popleft(), dest=worker, tag=TAG_UNIT)
        else:
            comm.send(None, dest=worker, tag=TAG_UNIT)
            active.discard(worker)
    progress.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    log.info("coordinator CPU use: %.2f s in %.1f s (%.1f%% of a core)", cpu, wall, 100.0 * cpu / max(wall, 1e-9))
    return bool(stop) or bool(units)


def work(comm, spec, env: MPIEnvironment, prep, writer, stop: StopFlag) -> None:
    """A worker: its own model on its own device; evaluate units until told to stop."""
    threads = set_threads(spec.evaluation.threads, env.workers_on_node)
    device = pick_device(spec.evaluation.device, env.local_rank)
    log.info("worker on %s (local rank %d) with %d CPU thread(s)", device, env.local_rank, threads)
    evaluator = load_worker(spec, prep.directions_file, device)
    splits = list(spec.data.splits)
    with surface.open_h5(prep.path, "r") if writer is None else contextlib.nullcontext(writer.f) as f:
        done = surface.done_masks(f)
    report = None
    while True:
        comm.send(report, dest=0, tag=TAG_REQUEST)
        unit = comm.recv(source=0, tag=TAG_UNIT)
        if unit is None:
            return
        finished = evaluate_unit(evaluator, prep.axes, unit, splits, done, stop)
        finished.stopped = bool(stop)
        if writer is not None and finished.points:
            writer.write(*finished)
            finished.results = None  # counts only: the values are in the file
        report = finished
