"""The MPI transport: it moves units and results between ranks, and lets every rank learn
whether any rank failed. What is computed, and in which order, is the driver's (driver.py);
how large a unit is, the scheduler's (numerics/schedule.py); the messages, protocol.py's.

    agree       run a step on every rank, then learn everywhere whether some rank failed
    coordinate  rank 0: hand out units on request until none are left, writing what workers send
    serve       a worker: ask for units and evaluate them until told to stop

No hang, ever: every step that can fail runs inside `agree`, which gathers each rank's error
to rank 0 and lets every rank learn the outcome, so all ranks leave together with one line
printed by rank 0. During the evaluation a failing worker reports its error to the
coordinator, which stops handing out work, waits DRAIN_SECONDS for the others to finish
their unit, and otherwise ends the job with MPI_Abort. A step that is itself collective
(creating or opening the file under parallel HDF5) aborts the job at once (`or_abort`).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

import numpy as np

from losslandscape.errors import JobFailed, UserError, one_line, print_error
from losslandscape.numerics.schedule import POLL_MIN_SECONDS, POLL_SECONDS, Units
from losslandscape.run.protocol import TAG_ERROR, TAG_REQUEST, TAG_UNIT, Finished

log = logging.getLogger(__name__)

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
    arrive(comm)
    errors = comm.gather(error, root=0)
    line = comm.bcast(_first(errors) if comm.rank == 0 else None, root=0)
    if line is not None:
        raise JobFailed(line, comm.rank == 0)
    return result


def arrive(comm) -> None:
    """Wait, sleeping, until every rank has arrived here. A blocking collective in Open MPI
    spins a whole core while it waits: the workers loading their models would take CPU from
    the coordinator making the directions (and it from them), on a node whose cores the
    ranks share. Polled like `coordinate`'s receive, from POLL_MIN_SECONDS up to POLL_SECONDS."""
    request, nap = comm.Ibarrier(), POLL_MIN_SECONDS
    while not request.Test():
        time.sleep(nap)
        nap = min(2 * nap, POLL_SECONDS)


def or_abort(comm, step, *args):
    """A collective step: if it fails on this rank, the others may be waiting inside it, so the
    only way out that cannot hang is MPI_Abort (after the one line)."""
    try:
        return step(*args)
    except Exception as exc:
        abort(comm, describe(exc, comm.rank))


def abort(comm, line: str) -> None:
    """End the whole job now, after one line: the way out where other ranks may be waiting."""
    print_error(line)
    comm.Abort(1)


def coordinate(comm, units: Units, write: Callable[[Finished], None] | None, stop, progress,
               teams: list[list[int]] | None = None) -> tuple[bool, str | None]:
    """Rank 0: hand out `units` on request until none are left; `write` the values a worker
    sends (where it cannot write itself), count its points on `progress` and tell `units` how
    long they took. Returns (stopped: by a signal, here or on a worker; the error line if some
    rank failed). After an error no more work is handed out; workers still busy after
    DRAIN_SECONDS are ended with MPI_Abort. `stop` is the driver's StopFlag.

    `teams`: the worker ranks that evaluate one model together (evaluation.ranks_per_model;
    default: each worker alone). A team gets a unit when all its ranks have asked, every rank
    the same unit; the first rank's report carries the points.

    Waiting is Iprobe + a short sleep: a blocking receive in Open MPI spins a whole core. The
    sleep starts at POLL_MIN_SECONDS after a message and doubles up to POLL_SECONDS while none
    comes: a busy coordinator answers at once, an idle one costs nothing.
    """
    from mpi4py import MPI

    teams = teams or [[r] for r in range(1, comm.size)]
    team_of = {r: i for i, team in enumerate(teams) for r in team}
    asking: list[set[int]] = [set() for _ in teams]
    active = set(range(1, comm.size))
    status = MPI.Status()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    error, deadline, nap = None, None, POLL_MIN_SECONDS

    def release(rank: int) -> None:
        comm.send(None, dest=rank, tag=TAG_UNIT)
        active.discard(rank)
        asking[team_of[rank]].discard(rank)

    while active:
        if error is not None and time.monotonic() > deadline:
            progress.close()
            abort(comm, f"{error} (ranks {', '.join(map(str, sorted(active)))} did not finish their unit "
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
            release(worker)  # released: it closes the file with the others
        else:
            try:
                if message is not None and message.points:
                    if message.results is not None and write is not None:
                        write(message)  # the worker could not write itself
                    progress.update(len(message.points))
                    units.observe(message.seconds)
                if message is not None and message.stopped and not stop:
                    stop.signum = signal.SIGTERM  # a signalled worker means the job is being stopped
            except Exception as exc:  # the coordinator's own failure ends the job like a worker's
                if error is None:
                    error, deadline = describe(exc, 0), time.monotonic() + DRAIN_SECONDS
            asking[team_of[worker]].add(worker)
        if units and not stop and error is None:
            for team, waiting in zip(teams, asking):
                if len(waiting) == len(team) and units:
                    unit = units.popleft()
                    for rank in team:
                        comm.send(unit, dest=rank, tag=TAG_UNIT)
                    waiting.clear()
        else:  # nothing more to hand out: every rank that asks, or waits for its team, leaves
            for waiting in asking:
                for rank in list(waiting):
                    release(rank)
    progress.close()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    log.info("coordinator CPU use: %.2f s in %.1f s (%.1f%% of a core)", cpu, wall, 100.0 * cpu / max(wall, 1e-9))
    return bool(stop) or bool(units), error


def serve(comm, evaluate: Callable[[np.ndarray], Finished], start: Callable[[], None] = lambda: None) -> str | None:
    """A worker: `start()`, then ask rank 0 for units and `evaluate` each (its report goes back
    with the next request) until told to stop. On an error, report it to the coordinator and
    wait to be released (then the file is closed with everyone), or abort the job. Returns
    the error line, or None."""
    try:
        start()
        report = None
        while True:
            comm.send(report, dest=0, tag=TAG_REQUEST)
            unit = comm.recv(source=0, tag=TAG_UNIT)
            if unit is None:
                return None
            report = evaluate(unit)
    except Exception as exc:
        line = describe(exc, comm.rank)
        comm.send(line, dest=0, tag=TAG_ERROR)
        deadline = time.monotonic() + RELEASE_SECONDS
        while not comm.Iprobe(source=0, tag=TAG_UNIT):
            if time.monotonic() > deadline:
                abort(comm, line)
            time.sleep(POLL_SECONDS)
        comm.recv(source=0, tag=TAG_UNIT)
        return line
