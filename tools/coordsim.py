"""The MPI coordinator at scale, simulated: the real `distributed.coordinate` on rank 0 and N
stand-in workers that speak its protocol (protocol.py) without a model, under a real
`mpirun -n N+1`. Run as

    mpirun --oversubscribe -n 257 python -m tools.coordsim --record rec --out r.json \\
        --run 1:0:40 --run auto:0:40 --run 1:0.05:8 --run auto:0.05:8

A stand-in worker imports only mpi4py, numpy and protocol.py (no torch), asks for units, holds
each for `--point-seconds` per point (a sleep: the model's cost without its CPU), and writes a
record of every unit it received to `--record/run_<k>/worker_<rank>.json`. Rank 0 then checks
the records against the pending points (none lost, none handed out twice) and writes the
figures: requests served per second, the coordinator's CPU time per request and share of a
core, how long a worker waited between asking and receiving (median, 99th percentile, max),
and the workers' busy share (points x seconds per point / (workers x wall)).

A waiting worker polls every `--poll` seconds instead of blocking: a blocking receive in Open
MPI spins a whole core, and 256 spinning workers on a few cores would starve the coordinator
being measured. The waits are therefore measured to about that resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from losslandscape.run.protocol import TAG_REQUEST, TAG_UNIT, Finished


def _wait(request, poll: float) -> None:
    """Complete a non-blocking MPI request, sleeping between tests instead of spinning."""
    while not request.Test():
        time.sleep(poll)


def stand_in(comm, point_seconds: float, poll: float, record: Path) -> None:
    """A worker without a model: ask, wait, hold the unit, report, until told to stop."""
    received, waits, report = [], [], None
    while True:
        t0 = time.perf_counter()
        comm.send(report, dest=0, tag=TAG_REQUEST)
        while not comm.Iprobe(source=0, tag=TAG_UNIT):
            time.sleep(poll)
        unit = comm.recv(source=0, tag=TAG_UNIT)
        waits.append(time.perf_counter() - t0)
        if unit is None:
            break
        points = [int(p) for p in unit]
        received.append(points)
        if point_seconds:
            time.sleep(point_seconds * len(points))
        report = Finished(points, None, [point_seconds] * len(points))
    (record / f"worker_{comm.rank}.json").write_text(json.dumps({"units": received, "waits": waits}))


def lead(comm, points: int, unit_size, point_seconds: float, poll: float, record: Path, started: float) -> dict:
    """Rank 0: the real coordinator over `points` pending points, then the checks and figures."""
    from losslandscape.numerics.schedule import Units
    from losslandscape.run.distributed import coordinate
    from losslandscape.run.driver import Progress, StopFlag

    pending = np.arange(points, dtype=np.int64)
    workers = comm.size - 1
    _wait(comm.Ibarrier(), 0.001)  # every stand-in is up: what follows is the coordinator, not the start-up
    ready = time.perf_counter()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stopped, error = coordinate(comm, Units(pending, unit_size, workers), None, StopFlag(),
                                Progress(points, 0, "simulated"))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    _wait(comm.Ibarrier(), 0.001)  # every record is written
    units, waits = [], []
    for rank in range(1, comm.size):
        rec = json.loads((record / f"worker_{rank}.json").read_text())
        units.extend(rec["units"])
        waits.extend(rec["waits"])
    handed = np.concatenate([np.asarray(u, dtype=np.int64) for u in units]) if units else np.zeros(0, np.int64)
    counts = np.bincount(handed, minlength=points) if len(handed) else np.zeros(points, np.int64)
    requests = len(units) + workers  # a unit each, and the final None each worker gets
    w = np.asarray(waits) * 1e3
    return {
        "workers": workers, "points": points, "unit_size": unit_size,
        "units": len(units), "requests": requests, "point_seconds": point_seconds, "poll_s": poll,
        "largest_unit": max((len(u) for u in units), default=0), "smallest_unit": min((len(u) for u in units), default=0),
        "lost": int((counts == 0).sum()), "duplicated": int((counts > 1).sum()),
        "stopped": bool(stopped), "error": error,
        "startup_s": round(ready - started, 2), "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 1), "cpu_s": round(cpu, 3),
        "cpu_share": round(cpu / wall, 3), "cpu_us_per_request": round(1e6 * cpu / requests, 1),
        "wait_median_ms": round(float(np.median(w)), 2), "wait_p99_ms": round(float(np.percentile(w, 99)), 2),
        "wait_max_ms": round(float(w.max()), 2),
        # the workers' time spent on points, of workers x wall: what unit_size is for
        "worker_busy_share": round(points * point_seconds / (workers * wall), 3),
        "load_average": round(os.getloadavg()[0], 1),
    }


def parse_run(text: str) -> tuple[int | str, float, int]:
    """"UNIT:SECONDS:PER_WORKER" (e.g. "auto:0.05:20"): the unit size, a point's seconds, and
    the pending points per worker."""
    unit, seconds, per_worker = text.split(":")
    return (unit if unit == "auto" else int(unit)), float(seconds), int(per_worker)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    p = argparse.ArgumentParser(prog="python -m tools.coordsim", description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", type=parse_run, metavar="UNIT:SECONDS:PER_WORKER",
                   help="one measurement: unit size (an integer or auto), seconds a worker holds each point, "
                   "pending points per worker (repeatable; default 1:0:40, the coordinator flat out)")
    p.add_argument("--poll", type=float, default=None,
                   help="a waiting worker's poll interval (s); default: workers / 10,000, at least 2 ms (about "
                   "10,000 wake-ups a second in all, whatever the number of workers)")
    p.add_argument("--record", type=Path, required=True, help="folder for the workers' records of their units")
    p.add_argument("--out", type=Path, default=None, help="the figures as JSON (rank 0)")
    args = p.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.size < 2:
        print("coordsim: run under mpirun -n N+1 (a coordinator and N workers)", file=sys.stderr)
        return 1
    runs = args.run or [parse_run("1:0:40")]
    workers = comm.size - 1
    poll = args.poll if args.poll is not None else max(0.002, workers / 10_000)
    results, ok = [], True
    for k, (unit_size, seconds, per_worker) in enumerate(runs):
        record = args.record / f"run_{k}"
        if comm.rank == 0:
            record.mkdir(parents=True, exist_ok=True)
            result = lead(comm, per_worker * workers, unit_size, seconds, poll, record, started)
            ok = ok and result["lost"] == result["duplicated"] == 0 and result["error"] is None
            results.append(result)
            print(json.dumps(result), flush=True)
        else:
            _wait(comm.Ibarrier(), poll)  # the coordinator is ready
            stand_in(comm, seconds, poll, record)
            _wait(comm.Ibarrier(), poll)  # every record is written
        started = time.perf_counter()
    if comm.rank == 0 and args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
