"""The messages between the MPI coordinator (rank 0) and its workers, without torch: what
distributed.py speaks, and what a stand-in worker (tools/coordsim.py) speaks to measure it.

A worker sends a request (tag TAG_REQUEST) carrying its last unit's report (a `Finished`, or
None on its first request) and receives a unit (tag TAG_UNIT): a 1-D int64 array of flat point
indices, or None when there is no more work for it. A worker that failed sends its one-line
error (TAG_ERROR) instead and waits for a None unit before it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TAG_REQUEST, TAG_UNIT, TAG_ERROR = 11, 12, 13


@dataclass
class Finished:
    """The points of a unit evaluated so far, their values (None once the worker has written
    them itself) and the seconds each took."""
    points: list[int]
    results: list[dict[str, Any]] | None
    seconds: list[float]
    stopped: bool = False  # the worker was signalled and will take no more work
