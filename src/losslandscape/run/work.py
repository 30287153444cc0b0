"""A per-point job's steps, typed: the `Work` protocol that the driver (driver.py) walks,
and the surface's own work (`SurfaceWork`: loss and accuracy at each point of a surface file,
or of one SLURM shard; trajectories are surfaces whose directions are a PCA). The Hessian
maps (hessianmaps.HessianWork) are the other kind of work.

The steps, in the order the driver calls them:

    plan (rank 0, read-only: new file, conversion, resume, or refused)
    -> load (each evaluating process: device, model, data; before anything is written, so a
       run that cannot start leaves no file bound to its spec)
    -> make + create (rank 0 computes what a new file holds: directions, the resolved grid;
       then one process, or every rank together, writes it atomically)
    -> prepare (rank 0: record the run, find the pending points)
    -> attach (each evaluating process reads the stored directions)
    -> done, then point (or unit_values, for streamed data) and the writer, unit by unit.

`prepare` (the `directions` verb, `submit`) walks the same steps without loading or
evaluating. The steps themselves live where their concern does: makedirections.py
(directions and identity), lifecycle.py (the file's life), loading.py (the evaluator).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from losslandscape.run import lifecycle
from losslandscape.numerics.evaluate import PointEvaluator
from losslandscape.surfacefile.format import done_masks
from losslandscape.run.lifecycle import Prepared  # noqa: F401 (part of this module's interface)
from losslandscape.run.loading import attach_directions, auto_search_evaluator, endpoint_report, start_evaluator
from losslandscape.surfacefile.original import Conversion
from losslandscape.run.protocol import Finished  # noqa: F401 (a unit's report; torch-free, for stand-in workers)
from losslandscape.surfacefile.write import NewFile, PointWriter

log = logging.getLogger(__name__)

PlanT = TypeVar("PlanT")
MadeT = TypeVar("MadeT")
Done = dict[str, np.ndarray]  # {name: flat bool}: what each point already has
Notes = dict[str, str]  # attributes on how this run evaluates (recorded in the file)


class Writer(Protocol):
    def write(self, unit: Finished) -> None:
        """Values first, then the done flags: a flag is never 1 before its values are stored."""


class Work(Protocol[PlanT, MadeT]):
    """The steps of a per-point job. Rank 0 (or the one process) calls plan, make, create,
    prepare; every evaluating process calls load, attach, done, point (or unit_values) and
    writes."""

    label: str  # the progress bar's
    unit_size: int  # points handed out at a time

    def plan(self) -> PlanT | None:
        """Read-only checks; what is to be created (None: nothing)."""

    def make(self, plan: PlanT, centre: torch.nn.Module | None = None) -> MadeT:
        """What `create` writes, computed once (rank 0); writes nothing. `centre`: the one
        process's own model at its base point, on the CPU (None under MPI or on a GPU), for
        whatever depends on its weights alone, so that a large model is not built twice."""

    def collective(self, made: MadeT) -> bool:
        """Whether every rank creates it together (parallel HDF5), or one process alone."""

    def create(self, made: MadeT, notes: Notes, comm=None) -> None: ...

    def load(self, worker_index: int = 0, workers_on_node: int = 1) -> PointEvaluator: ...

    def prepare(self, created: bool, notes: Notes) -> Prepared: ...

    def attach(self, evaluator: PointEvaluator, prep: Prepared, f=None, first: bool = True) -> None:
        """Give the evaluator what a point needs (the directions); `f`: the open file, if any."""

    def done(self, f) -> Done: ...

    def point(self, evaluator: PointEvaluator, p: int, a: float, b: float, done: Done) -> dict[str, Any]:
        """The values of point `p` at (a, b): what it still lacks by `done`."""

    def unit_values(self, evaluator: PointEvaluator, points: list[int], coords: list[tuple[float, float]],
                    done: Done, stop: Callable[[], bool]) -> list[dict[str, Any]] | None:
        """The values of a unit's points when the evaluator's data is streamed (read once for the
        unit); None when `stop()` turned true before the unit was complete (the unit is lost)."""

    def writer(self, f, flush: bool = True) -> Writer: ...

    def finished(self, path: Path) -> None: ...


class SurfaceWork:
    """Loss and accuracy at each pending point of the spec's surface file, or of one shard."""

    label = "surface"

    def __init__(self, spec, shard: Path | None = None):
        self.spec, self.shard = spec, shard
        self.splits = list(spec.data.splits)
        self.unit_size = spec.evaluation.unit_size
        self.grid: lifecycle.Grid | None = None
        self._shard: Prepared | None = None

    def plan(self) -> lifecycle.NewSurface | Conversion | None:
        if self.shard is not None:  # a damaged or foreign shard fails here, once, before anything loads
            self._shard = lifecycle.read_shard(self.shard, self.splits, owner=self)
            return None
        p = lifecycle.plan(self.spec, owner=self)  # the file's write lock lasts as long as this object
        if isinstance(p, lifecycle.Resume):
            self.grid = p.grid
            return None
        return p

    def make(self, plan: lifecycle.NewSurface | Conversion, centre: torch.nn.Module | None = None) -> NewFile:
        new = lifecycle.make(plan, centre, auto_search_evaluator)
        self.grid = (new.spec.grid.x, new.spec.grid.y)
        return new

    def collective(self, made: NewFile) -> bool:
        return made.collective

    def create(self, made: NewFile, notes: Notes, comm=None) -> None:
        lifecycle.create(made, notes, comm)

    def load(self, worker_index: int = 0, workers_on_node: int = 1) -> PointEvaluator:
        return start_evaluator(self.spec, worker_index, workers_on_node)

    def prepare(self, created: bool, notes: Notes) -> Prepared:
        if self._shard is not None:
            lifecycle.announce_shard(self._shard, notes)
            return self._shard
        return lifecycle.prepare(Path(self.spec.output.surface), self.splits, created, notes, self.grid)

    def attach(self, evaluator: PointEvaluator, prep: Prepared, f=None, first: bool = True) -> None:
        attach_directions(evaluator, f if f is not None and prep.directions_path is None else prep.directions_file)
        if first:
            evaluator.check_resolution({k: _spacing(v) for k, v in (("x", prep.axes.x), ("y", prep.axes.y))
                                        if v is not None and len(v) > 1})
        if self.spec.directions.kind == "interpolate" and first:
            endpoint_report(self.spec, evaluator)

    def done(self, f) -> Done:
        return done_masks(f)

    def point(self, evaluator: PointEvaluator, p: int, a: float, b: float, done: Done) -> dict[str, Any]:
        """The values of one point: loss and accuracy of the splits it still lacks."""
        return evaluator.evaluate(a, b, [s for s in self.splits if not done[s][p]])

    def unit_values(self, evaluator: PointEvaluator, points: list[int], coords: list[tuple[float, float]],
                    done: Done, stop: Callable[[], bool]) -> list[dict[str, Any]] | None:
        """The values of a unit's points at once (streamed data: one read of it for the unit)."""
        return evaluator.evaluate_unit(coords, [[s for s in self.splits if not done[s][p]] for p in points], stop)

    def writer(self, f, flush: bool = True) -> Writer:
        return PointWriter(f, flush)

    def finished(self, path: Path) -> None:
        log.info("surface complete: %s", path)


def _spacing(coords) -> tuple[float, int]:
    """(the smallest distance between neighbouring points of an axis, its number of points)."""
    return float(np.min(np.abs(np.diff(np.asarray(coords, dtype=np.float64))))), len(coords)


def prepare(spec, notes: Notes | None = None) -> Prepared:
    """One process, nothing evaluated: plan -> make -> create -> prepare. The surface file
    exists with its directions afterwards; returns the points still to compute.

    `notes` (e.g. how the evaluation ran) are recorded in the file's attributes."""
    work, notes = SurfaceWork(spec), notes or {}
    plan = work.plan()
    if plan is not None:
        work.create(work.make(plan), notes)
        gc.collect()  # the model and directions `make` built (a large model's are GBs) go now
    return work.prepare(plan is not None, notes)
