"""Seconds spent in each step of a paper run, summed over every run that computed something.

Kept in `step-seconds.json` in the scale's work folder: the runner adds to it, the report reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "step-seconds.json"


def step_times(work: Path) -> dict[str, float]:
    """{step name: seconds} so far; empty before the first step."""
    path = work / FILE
    return json.loads(path.read_text()) if path.exists() else {}


def add_time(work: Path, name: str, seconds: float) -> None:
    """Add `seconds` to step `name`; the file is replaced whole, never left half-written."""
    times = step_times(work)
    times[name] = times.get(name, 0.0) + seconds
    tmp = work / f"{FILE}.tmp"
    tmp.write_text(json.dumps(times, indent=1))
    tmp.replace(work / FILE)
