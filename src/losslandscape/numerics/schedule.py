"""The scheduler: which pending points go out together as a unit, and how large a unit is.

Pure (numpy only; no MPI): the driver builds a `Units` over the pending points, the MPI
coordinator (distributed.coordinate) hands out its units on request and reports back the
seconds each point took. One process or a SLURM array's static split take fixed units
(`resolve_unit_size`, then grid.split_units / grid.assign_tasks).

evaluation.unit_size = "auto" (issue #22; the figures: tools/coordsim.py, `make bench`). The
coordinator serves a request in about 25-50 us of CPU and answers within POLL_SECONDS of its
arrival, so a unit should last much longer than that wait and come rarely enough for one
core; and the last units should be small, so that workers finish together.
"""

from __future__ import annotations

import numpy as np

POLL_SECONDS = 0.005  # the coordinator's longest sleep between probes when no message is waiting
POLL_MIN_SECONDS = 0.0002  # its first sleep after a message

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
