"""Writing and checking the surface file's contents (HDF5): its structure, the points (one
writer, PointWriter, for a surface's values, the Hessian maps, a merge and a conversion), the
maps' and the centre spectrum's datasets, the shards and their merge.

The names and the layout are format.py's; what a run records of itself (its identity, the
directions' digest, the versions) is computed by the run (run/makedirections.py) and passed
in as plain values: this module needs neither torch nor the spec.

Every dataset is created once, contiguous and fully allocated, before any
value is written: after that writing a point changes no HDF5 metadata, so a
killed job leaves a readable file. The original loss-landscape code's files
(-1 marks a missing point, no done flags) are read and can be resumed.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from losslandscape.surfacefile import lock
from losslandscape.surfacefile import room as diskspace
from losslandscape.surfacefile import format as ff
from losslandscape.errors import UserError
from losslandscape.numerics.grid import GridAxes, coarse_to_fine
from losslandscape.surfacefile.read import read_progress
from losslandscape.surfacefile.format import (FORMAT, FORMAT_VERSION, SHARD_FORMAT, SPLITS, VALUES, check_shard, done_masks,  # noqa: F401
                         done_name, is_original, is_ours, open_h5, requested_splits, value_name)

log = logging.getLogger(__name__)

def dcpl_early() -> h5py.h5p.PropDCID:
    """Allocated and filled at creation: writing a point later changes no HDF5 metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


@dataclass
class NewFile:
    """Everything a new surface file holds, computed once (rank 0), then written by one process
    or by every rank together (`collective`). `values` and `done` ({name or split: flat array})
    carry the points of a converted original-code file; `announce` is logged once written."""
    path: Path
    axes: GridAxes
    spec: Any  # the spec with its grid resolved ("auto" replaced by the axes' "lo:hi:n")
    ident: dict
    x: dict
    y: dict | None
    info: dict
    values: dict[str, np.ndarray] = field(default_factory=dict)
    done: dict[str, np.ndarray] | None = None
    announce: str = ""

    @property
    def collective(self) -> bool:
        """A converted file is written by rank 0 alone, like the original it replaces."""
        return self.done is None

    def write(self, notes: dict[str, str] | None = None, comm=None) -> None:
        """Create the file under a temporary name, then rename it (format.creating); with a
        communicator every rank calls this. `notes` (how the run evaluates) go into the attributes.
        Only the spec's JSON and its splits are written: this module needs no spec."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        splits = json.dumps(sorted(set(self.spec.data.splits), key=SPLITS.index))
        attrs = {**self.info, ff.A_SPLITS: splits, **(notes or {})}
        named = model_labels(self.spec.model, self.spec.directions.kind)
        if named:
            attrs[ff.A_LABELS] = json.dumps(named)
        converting = self.path if self.done is not None else None
        with ff.creating(self.path, comm, converting=converting, durable=converting is not None) as f:
            create(f, self.axes, self.spec.to_json(), self.ident, self.x, self.y, attrs)
            if self.done is not None:  # a converted file's points: values kept exactly where done
                PointWriter(f, flush=False, whole=True).write_points(
                    {name: (np.flatnonzero(self.done[split]), v[self.done[split]])
                     for split in SPLITS for name, v in self.values.items()
                     if name.startswith(f"{split}_") and name in ff.value_names(ff.file_values(f))},
                    {done_name(split): np.flatnonzero(self.done[split]) for split in SPLITS})
        if self.announce:
            log.info("%s", self.announce)


PYTHON_ENDS = {"checkpoint": "model A", "checkpoint2": "model B", "checkpoint3": "model C"}  # ll.interpolate's


def model_labels(model, kind: str) -> dict[str, str]:
    """What pictures call the models (the attribute `labels`, {model field: text}) of a run of the
    Python interface: its spec names the model "python:<module>.<class>" and the checkpoints are
    the tool's copies (`<out>.model.pt`, `.model2.pt`), names the user never gave. `model`: the
    spec's model table. The model is called by its class name; an interpolation's models "model A",
    "model B" (and "model C"), as ll.interpolate's model_a, model_b, model_c; a lone model's copy ""
    (nothing: the title names the model). {} for any other run: its spec holds the user's names."""
    if not model.name.startswith(ff.PYTHON_NAME):
        return {}
    if kind == "interpolate":
        ends = {key: label for key, label in PYTHON_ENDS.items() if getattr(model, key, "")}
    else:
        ends = {"checkpoint": ""}
    return {"name": ff.shown(model.name.rpartition(".")[2]), **ends}


def create(f: h5py.File, axes: GridAxes, spec_json: str, ident: dict[str, Any], x: dict, y: dict | None,
           extra_attrs: dict[str, Any] | None = None) -> None:
    """Write the whole structure of a new surface file. Structure only: under MPI every rank
    calls this with the same arguments (HDF5 metadata operations are collective).
    `x`, `y`: {name: tensor} (anything with .detach().float().cpu().numpy(), stored as float32).
    `extra_attrs` hold the run's own attributes (the directions' digest, the versions, where its
    factories were: run/makedirections.file_attrs) and may name the values the run's loss
    defines (ff.A_VALUES, JSON): without "acc" there, the file gets no accuracy datasets."""
    f.create_dataset(ff.X, data=axes.x)
    if axes.y is not None:
        f.create_dataset(ff.Y, data=axes.y)
    create_values(f, axes.shape, ff.parse_values((extra_attrs or {}).get(ff.A_VALUES)))
    if not seeded(extra_attrs):  # else the extra attributes hold the seed record (run/makedirections.seed_record)
        _write_directions(f, x, y)
    f.attrs[ff.A_FORMAT] = FORMAT
    f.attrs[ff.A_VERSION] = FORMAT_VERSION
    f.attrs[ff.A_SPEC] = spec_json
    f.attrs[ff.A_IDENTITY] = json.dumps(ident, sort_keys=True)
    f.attrs[ff.A_CREATED] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for k, v in (extra_attrs or {}).items():
        if k.startswith("/") and "@" in k:  # "/group@name": an attribute of a group
            group, _, name = k.partition("@")
            f.require_group(group[1:]).attrs[name] = v
        elif k.startswith("/"):  # "/group/name": a dataset (a trajectory's path)
            strings = isinstance(v, list) and v and isinstance(v[0], str)
            # fixed-length UTF-8 bytes: parallel HDF5 cannot write variable-length strings
            data = np.asarray([t.encode() for t in v]) if strings else np.asarray(v)
            f.create_dataset(k[1:], data=data)
        else:
            f.attrs[k] = v


def create_values(f: h5py.File, shape: tuple[int, ...], values: tuple[str, ...] = VALUES) -> None:
    """The value, done and timing datasets of a surface or shard, allocated and empty: `values`
    per split (no `_acc` datasets for a loss that defines no accuracy), recorded as the
    attribute ff.A_VALUES where accuracy is left out (a file without it has both)."""
    if values != VALUES:
        f.attrs[ff.A_VALUES] = json.dumps(list(values))
    for split in SPLITS:
        for value in values:
            f.create_dataset(value_name(split, value), shape=shape, dtype="f8", fillvalue=np.nan, dcpl=dcpl_early())
        f.create_dataset(done_name(split), shape=shape, dtype="u1", fillvalue=0, dcpl=dcpl_early())
    f.create_dataset(ff.POINT_SECONDS, shape=shape, dtype="f8", fillvalue=np.nan, dcpl=dcpl_early())


def seeded(info: dict | None) -> bool:
    """Whether a new file's attributes record its directions as a seed (directions.store = "seed")."""
    return (info or {}).get(f"/{ff.DIRECTIONS}@{ff.A_STORE}") == "seed"


def _write_directions(f: h5py.File, x, y) -> None:
    group = f.require_group(ff.DIRECTIONS)
    for axis, d in (("x", x), ("y", y)):
        if d is None:
            continue
        g = group.create_group(axis)
        for name, t in d.items():
            g.create_dataset(name, data=t.detach().float().cpu().numpy())


def check_identity(f: h5py.File, path: str | Path, ident: dict[str, Any], axes: GridAxes) -> None:
    """Refuse (one line, file untouched) to fill a file made by a different run."""
    check_grid(f, path, axes)
    stored = json.loads(f.attrs[ff.A_IDENTITY])
    for key in sorted(set(stored) | set(ident)):
        if stored.get(key) != ident.get(key):
            raise UserError(
                f"{key}: the surface file {path} was made with {stored.get(key)!r}, this spec gives "
                f"{ident.get(key)!r}; resume with the file's spec or choose another output.surface")


def check_grid(f: h5py.File, path: str | Path, axes: GridAxes) -> None:
    fx, fy = ff.axes_arrays(f)
    for key, have, want in (("grid.x", fx, axes.x), ("grid.y", fy, axes.y)):
        if not _same_axis(have, want):
            raise UserError(f"{key}: the surface file {path} has {_axis_text(have)}, this spec gives "
                            f"{_axis_text(want)}; resume with the file's grid or choose another output.surface")


def _same_axis(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and np.allclose(a, b, rtol=0, atol=1e-12)


def _axis_text(axis: np.ndarray | None) -> str:
    if axis is None:
        return "no such axis"
    return f"{axis[0]:g}:{axis[-1]:g}:{len(axis)}" if len(axis) else "an empty axis"


def check_structure(f: h5py.File, path: str | Path) -> None:
    """A file that claims our format must have every dataset (a corrupt one does not)."""
    shape = f[ff.X].shape if ff.Y not in f else (len(f[ff.Y]), len(f[ff.X]))
    values = ff.file_values(f)
    for split in SPLITS:
        for name in [value_name(split, v) for v in values] + [done_name(split)]:
            if name not in f or f[name].shape != shape:
                raise UserError(f"output.surface: {path} is damaged: dataset {name!r} is missing or not {shape}")
    if ff.DIRECTIONS not in f or ("x" not in f[ff.DIRECTIONS] and ff.A_STORE not in f[ff.DIRECTIONS].attrs):
        raise UserError(f"output.surface: {path} is damaged: it holds no directions")


def pending_points(f: h5py.File, splits: list[str]) -> np.ndarray:
    """Flat indices with any of `splits` not done, in coarse-to-fine order."""
    done = done_masks(f)
    shape = f[done_name(splits[0])].shape
    missing = np.zeros(int(np.prod(shape)), dtype=bool)
    for split in splits:
        missing |= ~done[split]
    order = coarse_to_fine(shape)
    return order[missing[order]]


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
    grid: tuple[str, str] | None = None  # the resolved grid of the spec (None for a shard)
    values: tuple[str, ...] = ff.VALUES  # what the file holds per split: loss and acc, or loss alone

    @property
    def directions_file(self) -> Path:
        return self.directions_path or self.path


@dataclass(frozen=True)
class Existing:
    """What a run planning on an existing file reads of it first (one read-only open)."""
    original: bool  # the original code's file (surfacefile/original.py converts it)
    ours: bool
    hashes: str | None  # the checkpoints' hashes the file was made with (ff.A_FILE_HASHES)
    grid: dict[str, str]  # the stored spec's grid (only when asked for, and the file is ours)
    digest: str | None  # the directions' digest
    versions: str | None  # the library versions it was made with


def read_existing(path: Path, want_grid: bool) -> Existing:
    """The facts of an existing file a run's plan needs (run/work.plan); `want_grid`: the spec
    has an "auto" axis, to be resolved against the file's spec."""
    with ff.open_h5(path, "r") as f:
        original, ours = ff.is_original(f), ff.is_ours(f)
        grid = ff.read_spec(f)["grid"] if want_grid and ours and not original else {}
        return Existing(original, ours, f.attrs.get(ff.A_FILE_HASHES), grid, f.attrs.get(ff.A_DIGEST),
                        f.attrs.get(ff.A_VERSIONS))


def check_resume(path: Path, ident: dict[str, Any], axes: GridAxes) -> None:
    """Refuse (one line, the file opened read-only) a file that claims our format but is
    damaged, or was made by a different run."""
    with ff.open_h5(path, "r") as f:
        check_structure(f, path)
        check_identity(f, path, ident, axes)


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
            grid: tuple[str, str] | None = None) -> Prepared:
    """Rank 0: record the splits asked for and how the run evaluates (status and merge report
    them), find the points still to compute and say so in one line. One read-only open, and one
    read-write open only when the file does not say so already. A run whose values (notes'
    ff.A_VALUES) differ from the file's is refused (check_values), the file untouched."""
    with ff.open_h5(path, "r") as f:
        values = ff.file_values(f)
        check_values(path, values, notes)
        todo = pending_points(f, splits)
        axes = GridAxes(*ff.axes_arrays(f))
        attrs = run_notes(f, splits, notes)
        line = summary_line(path, f, splits, len(todo))
    if attrs:
        with ff.writing(path, room=NOTES_ROOM) as f:
            f.attrs.update(attrs)
    log.info("%s %s", "created" if created else "resuming", line)
    return Prepared(path, axes, todo, axes.size, created, grid=grid, values=values)


def read_shard(shard: Path, splits: list[str], owner: object = None) -> Prepared:
    """The points of a SLURM array task's shard file that are not done yet (one open). The
    task becomes the shard's one writer (lock.py)."""
    s = read_progress(shard, shard=True)
    points, done, axes, main, values = (np.asarray(s.points, dtype=np.int64), s.done, GridAxes(s.x, s.y),
                                        s.surface, s.values)
    lock.acquire(shard, "an array task", field="shard", owner=owner)
    missing = np.zeros(len(points), dtype=bool)
    for split in splits:
        missing |= ~done[split][points]
    return Prepared(shard, axes, points[missing], len(points), False, main, values=values)


def announce_shard(prep: Prepared, notes: dict[str, str] | None = None) -> None:
    """Say what the task computes; a task whose values (notes) differ from its shard's is refused."""
    check_values(prep.path, prep.values, notes)
    log.info("shard %s: %d of %d points done, %d to compute", prep.path, prep.total - len(prep.pending),
             prep.total, len(prep.pending))


def open_points(path: Path, comm=None, write: bool = True) -> h5py.File:
    """The open file a job's points are written into (read-write; `write=False`: read-only, for a
    worker that sends its points to rank 0), through MPI-IO with a communicator (collective).
    The job only hands it back to this package (done_masks, PointWriter, the directions' reader)
    and closes it."""
    return ff.open_h5(path, "r+" if write else "r", comm)


class PointWriter:
    """The one writer of points into an open surface file: values first, then the done flags,
    so that a flag is never 1 before its values are stored. It writes a job's finished units
    (`write`: a surface's losses and accuracies, or with `maps` the Hessian maps' eigenvalues),
    a merge's shard points and a converted file's points (`write_points`, `whole`).

    The datasets are opened once, here: under the mpio driver every rank constructs a
    PointWriter together (opening is collective), after which each rank's writes are
    independent. There the file is not flushed per unit (H5Fflush is collective): an
    independent write to an allocated contiguous dataset goes straight to MPI-IO and
    changes no HDF5 metadata, so a killed rank cannot leave the file unreadable.
    `whole`: each dataset is read, changed and written back at once (one process alone: a merge
    or a conversion copies many points); otherwise point by point (parallel writers).
    """

    def __init__(self, f: h5py.File, flush: bool = True, maps: bool = False, whole: bool = False):
        self.f, self.flush, self.maps, self.whole = f, flush, maps, whole
        self.field = "hessian" if maps else "output.surface"
        if maps:
            names = [*ff.EIG_MAPS, ff.EIG_DONE]
        else:
            names = ff.value_names(ff.file_values(f)) + [done_name(s) for s in SPLITS] + [ff.POINT_SECONDS]
        self.acc = not maps and "acc" in ff.file_values(f)
        self.ds = {name: f[name] for name in names}
        self.shape = self.ds[names[-2] if maps else done_name(SPLITS[0])].shape

    def write(self, unit) -> None:
        """`unit` (run.protocol.Finished): a surface's results are {split: (loss, accuracy)} per
        point, the accuracy NaN where the loss defines none (then the file has no accuracy to
        write); the maps' are {"eig": (largest, smallest)}. A write the file system refuses ends
        the process with one line (room.write_failed)."""
        try:
            self.write_points(*(self._maps(unit) if self.maps else self._surface(unit)))
        except Exception as exc:
            if diskspace.failed_write(exc):
                diskspace.write_failed(self.f.filename, exc, self.field)
            raise

    def write_points(self, values: dict[str, tuple[np.ndarray, np.ndarray]], done: dict[str, np.ndarray]) -> None:
        """`values` {dataset: (flat points, their values)} first, then `done` {flag dataset: flat
        points} set to 1. A failed write propagates (the caller's format.writing or creating
        block ends it with one line)."""
        for name, (points, data) in values.items():
            self._put(name, points, data)
        if self.flush:
            self.f.flush()
        for name, points in done.items():
            self._put(name, points, np.ones(len(points), np.uint8))
        if self.flush:
            self.f.flush()

    def _put(self, name: str, points, data) -> None:
        if len(points) == 0:
            return
        ds = self.ds[name]
        if self.whole:
            whole = np.asarray(ds)
            whole.reshape(-1)[np.asarray(points, dtype=np.int64)] = data
            ds[...] = whole
            return
        for p, v in zip(points, data):
            ds[np.unravel_index(int(p), self.shape)] = v

    def _surface(self, unit) -> tuple[dict, dict]:
        values: dict[str, tuple[list, list]] = {}
        done: dict[str, list] = {}

        def add(name: str, p: int, v) -> None:
            values.setdefault(name, ([], []))[0].append(p)
            values[name][1].append(v)

        for p, res, sec in zip(unit.points, unit.results, unit.seconds):
            for split, (loss, acc) in res.items():
                add(value_name(split, "loss"), p, loss)
                if self.acc:
                    add(value_name(split, "acc"), p, acc)
                done.setdefault(done_name(split), []).append(p)
            add(ff.POINT_SECONDS, p, sec)
        return values, done

    def _maps(self, unit) -> tuple[dict, dict]:
        values = {name: (list(unit.points), [res["eig"][i] for res in unit.results])
                  for i, name in enumerate(ff.EIG_MAPS)}
        return values, {ff.EIG_DONE: list(unit.points)}


def add_maps(path: str | Path, attrs: dict[str, Any], points: int, comm=None) -> None:
    """Add the Hessian maps' datasets (`max_eig`, `min_eig`, `eig_done`, replacing any there) and
    their settings `attrs` to a surface file of `points` points: collective under MPI, after rank
    0 has reserved their room, so a full disk is one line, the surface file untouched."""
    if comm is None or comm.rank == 0:
        diskspace.check_room(path, maps_nbytes(points), field="hessian", what="the eigenvalue maps of")
    with ff.writing(path, "hessian", comm=comm) as f:
        shape = f[done_name(SPLITS[0])].shape
        for name in (*ff.EIG_MAPS, ff.EIG_DONE):
            if name in f:
                del f[name]
        for name in ff.EIG_MAPS:
            f.create_dataset(name, shape=shape, dtype="f8", fillvalue=np.nan, dcpl=dcpl_early())
        f.create_dataset(ff.EIG_DONE, shape=shape, dtype="u1", fillvalue=0, dcpl=dcpl_early())
        for k, v in attrs.items():
            f.attrs[k] = v


def maps_nbytes(points: int) -> int:
    """About the bytes the maps of a grid of `points` points add to the surface file: their
    datasets (format.MAPS_POINT_NBYTES a point), headers and attributes."""
    return points * ff.MAPS_POINT_NBYTES + ff.CENTRE_ROOM


def run_notes(f: h5py.File, splits: list[str], notes: dict[str, str] | None = None) -> dict[str, str]:
    """The attributes a run must add: the splits asked for (status and merge report them) and
    notes on how it evaluates; {} when the file already says so."""
    want = json.dumps(sorted(set(requested_splits(f)) | set(splits), key=SPLITS.index))
    new = {ff.A_SPLITS: want, **(notes or {})}
    return new if any(f.attrs.get(k) != v for k, v in new.items()) else {}


def summary_line(path: str | Path, f: h5py.File, splits: list[str], pending: int) -> str:
    total = int(np.prod(f[done_name(SPLITS[0])].shape))
    done = done_masks(f)
    complete = int(np.logical_and.reduce([done[s] for s in splits]).sum())
    return (f"{path}: {complete} of {total} points done ({', '.join(splits)}), {pending} to compute")


# --- shards: one file per SLURM array task --------------------------------------------------

def create_shard(path: Path, surface_path: Path, points: np.ndarray, task: int, tasks: int,
                 spec_json: str, import_dirs: list[str]) -> None:
    """A shard file for array task `task`: the surface's grid and identity, its share of
    points (`points`, flat indices), empty values, and the spec the task runs: the one given
    to `submit`, command-line overrides included (`spec_json`), with the folders its model
    and data factories are found in. No directions: tasks read them from the surface
    file, which nobody writes while tasks run (merge runs after)."""
    with open_h5(surface_path, "r") as src:
        shape = src[done_name(SPLITS[0])].shape
        diskspace.check_room(path, int(np.prod(shape)) * ff.POINT_NBYTES + 8 * len(points) + 131072, "shard",
                             what="the shard file")
        with ff.creating(path) as f:
            for name in (ff.X, ff.Y):
                if name in src:
                    f.create_dataset(name, data=np.asarray(src[name]))
            create_values(f, shape, ff.file_values(src))
            f.create_dataset(ff.POINTS, data=np.asarray(points, dtype=np.int64))
            f.attrs[ff.A_FORMAT] = SHARD_FORMAT
            f.attrs[ff.A_VERSION] = FORMAT_VERSION
            f.attrs[ff.A_SURFACE] = str(Path(surface_path).resolve())
            for key in (ff.A_IDENTITY, ff.A_DIGEST):
                f.attrs[key] = src.attrs[key]
            f.attrs[ff.A_SPEC] = spec_json
            f.attrs[ff.A_IMPORT_DIRS] = json.dumps(import_dirs)
            f.attrs[ff.A_TASK] = task
            f.attrs[ff.A_TASKS] = tasks


def shard_belongs(shard: h5py.File, surf: h5py.File) -> bool:
    """Same identity, the same directions and the same values (with or without accuracy): the
    shard's values are points of this surface."""
    first = done_name(SPLITS[0])
    return (shard.attrs.get(ff.A_IDENTITY) == surf.attrs.get(ff.A_IDENTITY)
            and shard.attrs.get(ff.A_DIGEST) == surf.attrs.get(ff.A_DIGEST)
            and ff.file_values(shard) == ff.file_values(surf)
            and shard[first].shape == surf[first].shape)


def shard_new_points(shard: h5py.File, surf: h5py.File) -> tuple[dict[str, np.ndarray], int]:
    """({split: flat indices} done in the shard but not yet in the surface, points skipped).

    A point is taken only with its values: a done flag whose accuracy is missing (NaN; a
    computed accuracy is always a number, even where the loss diverged) is skipped, so the
    surface never marks a point done that has no values. A shard without accuracy has no
    such check (its loss may be NaN, a diverged point)."""
    sd, fd = done_masks(shard), done_masks(surf)
    new, skipped = {}, 0
    scored = "acc" in ff.file_values(shard)
    for split in SPLITS:
        candidates = np.flatnonzero(sd[split] & ~fd[split])
        if len(candidates) and scored:
            acc = np.asarray(shard[value_name(split, "acc")]).ravel()[candidates]
            skipped += int((~np.isfinite(acc)).sum())
            candidates = candidates[np.isfinite(acc)]
        new[split] = candidates
    return new, skipped


def copy_points(shard: h5py.File, surf: h5py.File, new: dict[str, np.ndarray]) -> int:
    """Copy shard values into the surface (PointWriter: values first, done flags last). Returns
    the points copied."""
    values, names = {}, ff.file_values(surf)
    for split, points in new.items():
        for value in names:
            name = value_name(split, value)
            values[name] = (points, np.asarray(shard[name]).ravel()[points])
    copied = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in new.values()] or [[]])).astype(np.int64)
    values[ff.POINT_SECONDS] = (copied, np.asarray(shard[ff.POINT_SECONDS]).ravel()[copied])
    PointWriter(surf, whole=True).write_points(values, {done_name(split): p for split, p in new.items()})
    return len(copied)


def write_centre_spectrum(path: str | Path, top: list[float], grid: np.ndarray, density: np.ndarray,
                          attrs: dict[str, Any]) -> None:
    """(Re)write the `hessian_centre` group of a surface file: the top eigenvalues, the spectral
    density on its grid, and `attrs` (None values left out), after reserving its room."""
    with ff.writing(path, "hessian", room=ff.CENTRE_ROOM + 16 * len(grid)) as f:
        if ff.HESSIAN_CENTRE in f:
            del f[ff.HESSIAN_CENTRE]
        g = f.create_group(ff.HESSIAN_CENTRE)
        g.create_dataset(ff.CENTRE_TOP, data=np.asarray(top, dtype=np.float64))
        g.create_dataset(ff.CENTRE_GRID, data=grid)
        g.create_dataset(ff.CENTRE_DENSITY, data=density)
        for k, v in attrs.items():
            if v is not None:
                g.attrs[k] = v


def merge_shards(surface_path: Path, shards: list[Path]) -> int:
    """Copy the finished points of `shards` that the surface file lacks into it (the merge):
    every shard is checked first (one open of the surface, read-only), then the file is opened
    read-write only when there is something to copy. Returns the points copied."""
    with open_h5(surface_path, "r") as surf:
        ff.check_file(surf, surface_path, "merge", "surface", complete=True)
        todo = []
        for path in shards:
            with open_h5(path, "r", field="shard") as shard:
                ff.check_file(shard, path, "shard", "shard", complete=True)
                if not shard_belongs(shard, surf):
                    raise UserError(f"merge: shard {path} belongs to another surface (its identity, "
                                    f"directions or values (with or without accuracy) differ from "
                                    f"{surface_path}'s); move it away")
                new, skipped = shard_new_points(shard, surf)
                if skipped:
                    log.warning("shard %s: %d point(s) flagged done without values are left to compute",
                                path.name, skipped)
                if any(len(v) for v in new.values()):
                    todo.append((path, new))
    copied = 0
    if todo:
        with ff.writing(surface_path, "merge") as surf:  # a full disk: one line, the points merged before kept
            for path, new in todo:
                with open_h5(path, "r", field="shard") as shard:
                    n = copy_points(shard, surf, new)
                log.info("merged %d points from %s", n, path.name)
                copied += n
    return copied
