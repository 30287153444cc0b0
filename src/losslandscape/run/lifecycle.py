"""The surface file's life: plan (read-only) -> make (rank 0: directions, the resolved grid) ->
create (the atomic write of a new or converted file) -> prepare (record the run, find the
points still to compute); and the same for a SLURM array task's shard.

How often rank 0 opens the surface file (counted by the tests' reviewers, not by the code):
a new run opens it twice before the evaluation (create, under a temporary name; prepare,
read-only), a resume twice too (plan and prepare, read-only), plus once read-write when the
run asks for a split or evaluates in a way the file does not record yet; the evaluation then
opens it once more. A converted original file adds the plan's read of the original.

The plan takes the file's write lock (writelock.py: one writer per file; a shard's task takes
its shard's), released when the job's Work object is dropped (the run is over) or at exit. `make` reserves the room the new file needs before
any rank writes (diskspace.check_room): no room, a quota or a read-only folder is one line
naming the path, the cause and the room, not a traceback and a half-made file.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile import write as surface
from losslandscape.surfacefile import lock as writelock
from losslandscape.numerics.autorange import auto_range
from losslandscape.errors import UserError
from losslandscape.numerics.grid import AUTO_MARGIN, GridAxes, auto_axis, auto_points, is_auto, parse_axis
from losslandscape.run.makedirections import (base_model, directions_digest, identity_pins_directions, make_conversion,
                                              make_directions, run_identity)
from losslandscape.surfacefile.original import Conversion, plan_conversion
from losslandscape.surfacefile.read import read_progress

log = logging.getLogger(__name__)

Grid = tuple[str, str]  # (grid.x, grid.y) as "lo:hi:n" ("" for no y axis)
NOTES_ROOM = 256 << 10  # bytes reserved before notes are added to a file (they take a few KiB)


@dataclass
class Prepared:
    """A file to fill and the points it still lacks."""
    path: Path
    axes: GridAxes
    pending: np.ndarray  # flat point indices, coarse-to-fine
    total: int  # points this file is responsible for (the grid, or a shard's share)
    created: bool
    directions_path: Path | None = None  # where the directions are (default: path itself)
    grid: Grid | None = None  # the resolved grid of the spec (None for a shard)
    values: tuple[str, ...] = ff.VALUES  # what the file holds per split: loss and acc, or loss alone

    @property
    def directions_file(self) -> Path:
        return self.directions_path or self.path


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
    with ff.open_h5(path, "r") as f:
        if ff.is_original(f):
            return plan_conversion(spec, path, f)
        ident = run_identity(spec, f.attrs.get(ff.A_FILE_HASHES))  # unchanged files are not read again
        grid = _stored_grid(spec, f)
        axes = GridAxes.from_spec(with_grid(spec, grid).grid)
        warn_off_grid(grid)
        if not ff.is_ours(f):
            raise UserError(f"output.surface: {path} is an HDF5 file but not a surface file "
                            "(no 'format' attribute and no xcoordinates)")
        surface.check_structure(f, path)
        surface.check_identity(f, path, ident, axes)
        stored, versions = f.attrs.get(ff.A_DIGEST), f.attrs.get(ff.A_VERSIONS)
    if not identity_pins_directions(spec, versions) and directions_digest(spec) != stored:
        raise UserError(f"directions: the surface file {path} holds other directions than this spec makes "
                        "(a different seed, checkpoint or library version); choose another output.surface")
    return Resume(path, grid)


def take_lock(path: Path, what: str = "computing the surface", owner: object = None) -> None:
    """This process becomes the one writer of the surface file (writelock.py): refused, one line
    naming the other, while another job writes it or an array task writes one of its shards.
    Held until `owner` (the job's Work) is dropped, or the process ends."""
    writelock.acquire(path, what, owner=owner)
    for shard in ff.shard_files(path):
        holder = writelock.busy(shard)
        if holder is not None:
            writelock.release(path)
            raise UserError(f"output.surface: {path} has an array task at work on its shard {shard.name}: "
                            f"{writelock.describe(holder)}; wait for the array job and its merge, or scancel it")


def _stored_grid(spec, f) -> Grid:
    """The spec's grid with "auto" axes replaced by the open file's own (a resume)."""
    grid = {"x": spec.grid.x, "y": spec.grid.y}
    auto = [(k, v) for k, v in grid.items() if is_auto(v)]
    if not auto:
        return grid["x"], grid["y"]
    stored = ff.read_spec(f)["grid"] if ff.is_ours(f) else {}
    for axis, text in auto:
        if axis not in stored or is_auto(stored[axis]):
            raise UserError(f"grid.{axis}: {text!r} cannot be resolved against {spec.output.surface}; give "
                            "its grid as lo:hi:n")
        grid[axis] = stored[axis]
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
    x, y, info = make_directions(spec, centre if reuse else base_model(spec))
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


def create(new: surface.NewFile, notes: dict[str, str] | None = None, comm=None) -> None:
    """Write a new or converted surface file (collective for a new one: with a communicator
    every rank calls this)."""
    new.write(notes, comm)


def check_values(path: Path, have: tuple[str, ...], notes: dict[str, str] | None) -> None:
    """Refuse (one line) a run whose loss defines other values than the file holds: accuracy
    where the file has none, or none where it has. Notes without ff.A_VALUES (a caller that
    evaluates nothing, such as `submit`) are not checked."""
    if not notes or ff.A_VALUES not in notes:
        return
    want = ff.parse_values(notes[ff.A_VALUES])
    if want != have:
        said = {ff.VALUES: "loss and accuracy", ("loss",): "loss only (no accuracy)"}
        raise UserError(f"evaluation.loss: the surface file {path} holds {said[have]}, this run's loss gives "
                        f"{said[want]}; resume with the file's loss or choose another output.surface")


def prepare(path: Path, splits: list[str], created: bool, notes: dict[str, str] | None,
            grid: Grid | None = None) -> Prepared:
    """Rank 0: record the splits asked for and how the run evaluates (status and merge report
    them), find the points still to compute and say so in one line. One read-only open, and one
    read-write open only when the file does not say so already. A run whose values (notes'
    ff.A_VALUES) differ from the file's is refused (check_values), the file untouched."""
    with ff.open_h5(path, "r") as f:
        values = ff.file_values(f)
        check_values(path, values, notes)
        todo = surface.pending_points(f, splits)
        axes = GridAxes(*ff.axes_arrays(f))
        attrs = surface.run_notes(f, splits, notes)
        line = surface.summary_line(path, f, splits, len(todo))
    if attrs:
        with ff.writing(path, room=NOTES_ROOM) as f:
            f.attrs.update(attrs)
    log.info("%s %s", "created" if created else "resuming", line)
    return Prepared(path, axes, todo, axes.size, created, grid=grid, values=values)


def read_shard(shard: Path, splits: list[str], owner: object = None) -> Prepared:
    """The points of a SLURM array task's shard file that are not done yet (one open). The
    task becomes the shard's one writer (writelock.py)."""
    s = read_progress(shard, shard=True)
    points, done, axes, main, values = (np.asarray(s.points, dtype=np.int64), s.done, GridAxes(s.x, s.y),
                                        s.surface, s.values)
    writelock.acquire(shard, "an array task", field="shard", owner=owner)
    missing = np.zeros(len(points), dtype=bool)
    for split in splits:
        missing |= ~done[split][points]
    return Prepared(shard, axes, points[missing], len(points), False, main, values=values)


def announce_shard(prep: Prepared, notes: dict[str, str] | None = None) -> None:
    """Say what the task computes; a task whose values (notes) differ from its shard's is refused."""
    check_values(prep.path, prep.values, notes)
    log.info("shard %s: %d of %d points done, %d to compute", prep.path, prep.total - len(prep.pending),
             prep.total, len(prep.pending))
