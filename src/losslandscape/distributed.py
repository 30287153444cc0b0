"""Running a surface job: one process, or an MPI coordinator with workers.

This module moves work and results; the numerics live in evaluate.py. Exit
codes: 0 complete, 3 stopped by a signal with a resumable file.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from contextlib import contextmanager

import numpy as np
from tqdm import tqdm

from . import surface
from .environment import pick_device, set_threads
from .grid import split_units
from .job import load_worker, prepare

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


def run_serial(spec) -> int:
    """Compute every pending point of the spec's surface in this process."""
    prep = prepare(spec)
    splits = list(spec.data.splits)
    with surface.open_h5(prep.path, "r") as f:
        log.info("%s %s", "created" if prep.created else "resuming",
                 surface.summary_line(prep.path, f, splits, len(prep.pending)))
    if len(prep.pending) == 0:
        return EXIT_DONE
    threads = set_threads(spec.evaluation.threads)
    device = pick_device(spec.evaluation.device)
    log.info("evaluating on %s with %d CPU thread(s)", device, threads)
    evaluator = load_worker(spec, prep.path, device)
    coords = prep.axes.coordinates(prep.pending)
    coord_of = dict(zip(prep.pending.tolist(), map(tuple, coords)))
    stop = StopFlag()
    progress = Progress(prep.total, prep.total - len(prep.pending))
    with stop.installed(), surface.open_h5(prep.path, "r+") as f:
        done_mask = surface.done_masks(f)
        for unit in split_units(prep.pending, spec.evaluation.unit_size):
            results, seconds, finished = [], [], []
            for p in unit.tolist():
                if stop:
                    break
                t0 = time.perf_counter()
                todo = [s for s in splits if not done_mask[s][p]]
                results.append(evaluator.evaluate(*coord_of[p], todo))
                seconds.append(time.perf_counter() - t0)
                finished.append(p)
            if finished:
                surface.write_results(f, np.array(finished), results, seconds)
                progress.update(len(finished))
            if stop:
                break
    progress.close()
    if stop:
        log.warning("stopped early; %s is resumable: run the same command again", prep.path)
        return EXIT_STOPPED
    log.info("surface complete: %s", prep.path)
    return EXIT_DONE
