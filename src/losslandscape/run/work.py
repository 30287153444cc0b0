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
evaluating. The surface's plan and make are here, in the order they run (below the work);
the directions and the identity are makedirections.py's, the evaluator loading.py's, and what
touches the file surfacefile's (write.read_existing and check_resume for a plan, NewFile.write
to create, write.prepare, the shard's read_shard and announce_shard).

How often rank 0 opens the surface file: a new run opens it twice before the evaluation
(create, under a temporary name; prepare, read-only), a resume three times (the plan's two
reads, prepare's), plus once read-write when the run asks for a split or evaluates in a way the
file does not record yet; the evaluation then opens it once more. A converted original file
adds the plan's read of the original.

The plan takes the file's write lock (surfacefile/lock.py: one writer per file; a shard's task
takes its shard's), released when the job's Work object is dropped (the run is over) or at
exit. `make` reserves the room the new file needs before any rank writes (format.check_new_file):
no room, a quota or a read-only folder is one line naming the path, the cause and the room,
not a traceback and a half-made file.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from losslandscape.errors import UserError
from losslandscape.numerics.autorange import auto_range
from losslandscape.numerics.evaluate import PointEvaluator
from losslandscape.numerics.grid import AUTO_MARGIN, GridAxes, auto_axis, auto_points, is_auto, parse_axis
from losslandscape.run.loading import attach_directions, auto_search_evaluator, endpoint_report, start_evaluator
from losslandscape.run.makedirections import (centre_for_directions, directions_digest, identity_pins_directions,
                                              make_conversion, make_directions, run_identity)
from losslandscape.run.protocol import Finished  # noqa: F401 (a unit's report; torch-free, for stand-in workers)
from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile import lock
from losslandscape.surfacefile import write as surface
from losslandscape.surfacefile.format import done_masks
from losslandscape.surfacefile.original import Conversion, plan_conversion
from losslandscape.surfacefile.write import NewFile, PointWriter, Prepared

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
    ranks_per_model: int  # worker ranks that evaluate one model together (run/groups.py)

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
        """Give the evaluator what a point needs (the directions); `f`: the open file, if any.
        A model sharded over a group (ranks_per_model > 1) gets its rows of them only."""

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
        self.ranks_per_model = spec.evaluation.ranks_per_model
        self.grid: Grid | None = None
        self._shard: Prepared | None = None

    def plan(self) -> NewSurface | Conversion | None:
        if self.shard is not None:  # a damaged or foreign shard fails here, once, before anything loads
            self._shard = surface.read_shard(self.shard, self.splits, owner=self)
            return None
        p = plan(self.spec, owner=self)  # the file's write lock lasts as long as this object
        if isinstance(p, Resume):
            self.grid = p.grid
            return None
        return p

    def make(self, planned: NewSurface | Conversion, centre: torch.nn.Module | None = None) -> NewFile:
        new = make(planned, centre, auto_search_evaluator)
        self.grid = (new.spec.grid.x, new.spec.grid.y)
        return new

    def collective(self, made: NewFile) -> bool:
        return made.collective

    def create(self, made: NewFile, notes: Notes, comm=None) -> None:
        made.write(notes, comm)

    def load(self, worker_index: int = 0, workers_on_node: int = 1) -> PointEvaluator:
        return start_evaluator(self.spec, worker_index, workers_on_node, sharded=self.ranks_per_model > 1)

    def prepare(self, created: bool, notes: Notes) -> Prepared:
        if self._shard is not None:
            surface.announce_shard(self._shard, notes)
            return self._shard
        return surface.prepare(Path(self.spec.output.surface), self.splits, created, notes, self.grid)

    def attach(self, evaluator: PointEvaluator, prep: Prepared, f=None, first: bool = True) -> None:
        attach_directions(evaluator, f if f is not None and prep.directions_path is None else prep.directions_file,
                          self.spec.evaluation.hold_directions)
        if first:
            evaluator.check_resolution({k: _spacing(v) for k, v in (("x", prep.axes.x), ("y", prep.axes.y))
                                        if v is not None and len(v) > 1})
        if self.spec.directions.kind == "interpolate" and first:
            if evaluator.share is None:
                endpoint_report(self.spec, evaluator)
            else:  # it would evaluate on one rank of a group, and hold the other model whole
                log.info("the interpolation's end points are not checked against the checkpoints when the model is "
                         "sharded (evaluation.ranks_per_model)")

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


Grid = tuple[str, str]  # (grid.x, grid.y) as "lo:hi:n" ("" for no y axis)


@dataclass(frozen=True)
class NewSurface:
    """A surface file to make: the spec as given (its grid may still say "auto")."""
    spec: object
    path: Path
    ident: dict


@dataclass(frozen=True)
class Resume:
    """An existing surface file that fits the spec, and the spec's grid resolved against it."""
    path: Path
    grid: Grid


Plan = NewSurface | Conversion | Resume


def with_grid(spec, grid: Grid):
    """A copy of `spec` whose grid is `grid` (the caller's spec is left as given)."""
    out = copy.copy(spec)
    out.grid = copy.copy(spec.grid)
    out.grid.x, out.grid.y = grid
    return out


def plan(spec, owner: object = None) -> Plan:
    """What the run does with its surface file, read-only: make a new one, convert an original
    one, or resume one that fits the spec (anything else is refused: one line, and the file,
    only ever opened read-only, stays byte-for-byte untouched). Rank 0 opens it once."""
    path = Path(spec.output.surface)
    take_lock(path, owner=owner)
    if not path.exists():
        return NewSurface(spec, path, run_identity(spec))
    grid = {"x": spec.grid.x, "y": spec.grid.y}
    stored = surface.read_existing(path, want_grid=any(is_auto(v) for v in grid.values()))
    if stored.original:
        return plan_conversion(spec, path)
    ident = run_identity(spec, stored.hashes)  # unchanged files are not read again
    grid = _stored_grid(spec, stored)
    axes = GridAxes.from_spec(with_grid(spec, grid).grid)
    warn_off_grid(grid)
    if not stored.ours:
        raise UserError(f"output.surface: {path} is an HDF5 file but not a surface file "
                        "(no 'format' attribute and no xcoordinates)")
    surface.check_resume(path, ident, axes)
    versions = stored.versions
    if not identity_pins_directions(spec, versions) and directions_digest(spec) != stored.digest:
        raise UserError(f"directions: the surface file {path} holds other directions than this spec makes "
                        "(a different seed, checkpoint or library version); choose another output.surface")
    return Resume(path, grid)


def take_lock(path: Path, what: str = "computing the surface", owner: object = None) -> None:
    """This process becomes the one writer of the surface file (lock.py): refused, one line
    naming the other, while another job writes it or an array task writes one of its shards.
    Held until `owner` (the job's Work) is dropped, or the process ends."""
    lock.acquire(path, what, owner=owner)
    for shard in ff.shard_files(path):
        holder = lock.busy(shard)
        if holder is not None:
            lock.release(path)
            raise UserError(f"output.surface: {path} has an array task at work on its shard {shard.name}: "
                            f"{lock.describe(holder)}; wait for the array job and its merge, or scancel it")


def _stored_grid(spec, stored: surface.Existing) -> Grid:
    """The spec's grid with "auto" axes replaced by the file's own (a resume)."""
    grid = {"x": spec.grid.x, "y": spec.grid.y}
    auto = [(k, v) for k, v in grid.items() if is_auto(v)]
    if not auto:
        return grid["x"], grid["y"]
    for axis, text in auto:
        if axis not in stored.grid or is_auto(stored.grid[axis]):
            raise UserError(f"grid.{axis}: {text!r} cannot be resolved against {spec.output.surface}; give "
                            "its grid as lo:hi:n")
        grid[axis] = stored.grid[axis]
    return grid["x"], grid["y"]


def make(p: NewSurface | Conversion, centre=None, search_evaluator=None) -> surface.NewFile:
    """Rank 0, on the CPU: the directions of a new file and its grid ("auto" resolved, recorded
    in the file's spec), or the contents of a converted one. Nothing is written. `centre`: this
    process's model at its base point on the CPU, used for directions that depend on its
    weights alone (random, interpolate, file) instead of building another copy.
    `search_evaluator(spec)`: the CPU evaluator that an "auto" grid is searched with
    (loading.auto_search_evaluator; needed only for such a grid)."""
    if isinstance(p, Conversion):
        new = make_conversion(p)
        ff.check_new_file(new)
        return new
    spec = p.spec
    reuse = centre is not None and spec.directions.kind in ("random", "interpolate", "file")
    x, y, info = make_directions(spec, centre) if reuse else make_directions(spec, *centre_for_directions(spec))
    grid = resolve_new_grid(spec, info, (x, y), search_evaluator)
    warn_off_grid(grid)
    spec = with_grid(spec, grid)
    new = surface.NewFile(p.path, GridAxes.from_spec(spec.grid), spec, p.ident, x, y, info)
    ff.check_new_file(new)  # here, on rank 0 before any rank writes: a full disk is one line, not an abort
    return new


def resolve_new_grid(spec, info: dict, directions: tuple, search_evaluator=None) -> Grid:
    """The grid of a new file: "auto" axes from the paths of a trajectory (`info`, kind "pca"),
    or by how far along the new `directions` (x, y) the loss grows by grid.auto_factor (the
    other kinds; the search is added to `info`). Logged, and recorded in the file with the spec.

    grid.auto_factor and grid.auto_samples are not part of the run's identity, like the grid
    itself: what a resume must match is the resolved grid (check_grid), and a resume with
    "auto" takes the file's grid whatever factor it gives."""
    grid = {"x": spec.grid.x, "y": spec.grid.y}
    auto = [(k, v) for k, v in grid.items() if is_auto(v)]
    if auto and spec.directions.kind != "pca":
        if search_evaluator is None:
            raise ValueError("an auto grid needs search_evaluator")
        grid.update(search_auto_grid(search_evaluator(spec), spec, auto, directions, info))
    for axis, text in auto if spec.directions.kind == "pca" else ():
        values = np.concatenate([np.asarray(v) for k, v in info.items() if k.endswith(f"/{axis}")])
        grid[axis] = auto_axis(f"grid.{axis}", text, values)
        log.info("grid.%s = %s: %s (the paths' extent and 0, plus %d%% on each side)", axis, text,
                 grid[axis], round(100 * AUTO_MARGIN))
    return grid["x"], grid["y"]


def search_auto_grid(evaluator, spec, auto: list[tuple[str, str]], directions: tuple,
                     info: dict) -> dict[str, str]:
    """Random, Hessian and file directions: each auto axis is -reach..reach, where the loss of the
    first split has grown by grid.auto_factor on both sides (autorange.py), as `evaluator` (the
    process that makes the file: rank 0 under MPI, on the CPU) measures it; its numbers go into
    the file's attribute `auto_range` (JSON, by axis). Returns {axis: "lo:hi:n"}."""
    evaluator.set_directions(*directions)
    split = spec.data.splits[0]
    found, grid = {}, {}
    for axis, text in auto:
        r = found[axis] = auto_range(evaluator, split, axis, spec.grid.auto_factor)
        grid[axis] = f"{-r['reach']!r}:{r['reach']!r}:{auto_points(f'grid.{axis}', text)}"
        log.info("grid.%s = %s: %s (%s loss %.4g at the centre grows by auto_factor %g at %s = +%.3g / -%.3g; "
                 "%d evaluations of %d samples, %.1f s)", axis, text, grid[axis], split,
                 r["centre_loss"], r["factor"], axis, r["plus"], r["minus"], r["evaluations"], r["samples"],
                 r["seconds"])
        target = r["factor"] * r["centre_loss"]
        for sign, key in (("+", "loss_plus"), ("-", "loss_minus")):
            if r[key] < target:
                log.warning("grid.%s: the loss at %s = %s%g is %.4g, less than auto_factor times the centre's "
                            "(%.4g): it does not rise steadily along %s", axis, axis, sign, r["reach"], r[key],
                            target, axis)
    info[ff.A_AUTO_RANGE] = json.dumps(found, sort_keys=True)
    return grid


def warn_off_grid(grid: Grid) -> None:
    """An axis whose points miss 0 leaves the centre (the trained model) off the grid: say so."""
    for key, text in (("grid.x", grid[0]), ("grid.y", grid[1])):
        if text and not np.isclose(parse_axis(key, text), 0.0, rtol=0, atol=1e-12).any():
            log.warning("%s = %r has no point at 0: the model at the centre (model.checkpoint) is not on the "
                        "grid; use an odd number of points on a range symmetric about 0, e.g. \"-1:1:21\"",
                        key, text)


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
