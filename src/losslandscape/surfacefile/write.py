"""Writing and checking the surface file's contents (HDF5): its structure, the run's identity,
the points, the shards' values; reading its directions and the spec it was made with.

The names and the layout are fileformat.py's; when a file is opened, created or renamed is
lifecycle.py's.

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
import torch

from losslandscape.surfacefile import room as diskspace
from losslandscape.surfacefile import format as ff
from losslandscape import spec as specs
from losslandscape.inputs import userimport
from losslandscape._version import __version__
from losslandscape.numerics.directions import digest
from losslandscape.errors import UserError
from losslandscape.numerics.grid import GridAxes, coarse_to_fine
from losslandscape.surfacefile.format import (FORMAT, FORMAT_VERSION, SHARD_FORMAT, SPLITS, VALUES, check_shard, done_masks,  # noqa: F401
                         done_name, is_original, is_ours, open_h5, requested_splits, value_name)

log = logging.getLogger(__name__)

def identity(spec, checkpoint_sha: str, checkpoint2_sha: str, directions_file_sha: str = "") -> dict[str, Any]:
    """What must be equal for two runs to fill the same surface (JSON-able, by spec key).

    No grid fields: check_grid compares the file's axes themselves, and grid.auto_factor and
    grid.auto_samples only choose the axes of a new file (a resume with "auto" takes the file's)."""
    d, m = spec.directions, spec.model
    ident: dict[str, Any] = {
        "model.name": m.name,
        "model.num_classes": m.num_classes,
        "model.checkpoint (sha256)": checkpoint_sha,
        "directions.kind": d.kind,
        "directions.dir_type": d.dir_type,
        "data.name": spec.data.name,
        "data.max_samples": spec.data.max_samples,
        "data.seed": spec.data.seed,
        "evaluation.loss": spec.evaluation.loss,
        "evaluation.precision": spec.evaluation.precision,
    }
    if d.kind == "random":
        ident.update({"directions.norm": d.norm, "directions.ignore": d.ignore, "directions.seed": d.seed,
                      "directions.orthogonal": d.orthogonal})
    if d.kind == "interpolate":
        ident["model.checkpoint2 (sha256)"] = checkpoint2_sha
    if d.kind == "file":
        ident["directions.file (sha256)"] = directions_file_sha
    if d.kind == "hessian":
        ident["directions.which"] = d.which
    if d.kind == "pca":
        ident["directions.checkpoints (sha256)"] = directions_file_sha
    if spec.data.name in ("cifar10", "imagefolder"):
        ident["data.root"] = str(Path(spec.data.root).resolve())
    # the data's transform and part only when not at their defaults: older files resume unchanged
    if spec.data.name == "imagefolder":
        ident["data.image_size"] = spec.data.image_size
    # (an image folder's "original" is its "standard": the original code has no ImageNet loader)
    if spec.data.transform != "standard" and not (spec.data.name == "imagefolder" and spec.data.transform == "original"):
        ident["data.transform"] = spec.data.transform
    if spec.data.parts > 1:
        ident["data.parts"], ident["data.part"] = spec.data.parts, spec.data.part
    # the moved set, only when narrowed: files made before these fields (all tensors moved) resume unchanged
    if d.include:
        ident["directions.include"] = list(d.include)
    if d.exclude:
        ident["directions.exclude"] = list(d.exclude)
    if d.trainable_only:
        ident["directions.trainable_only"] = True
    return ident


def versions() -> dict[str, str]:
    import mpi4py  # noqa: PLC0415 (version only; importing mpi4py does not start MPI)

    return {"losslandscape": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "hdf5": ".".join(map(str, h5py.version.hdf5_version_tuple)),
            "mpi4py": mpi4py.__version__}


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
        """Create the file under a temporary name, then rename it (fileformat.creating); with a
        communicator every rank calls this. `notes` (how the run evaluates) go into the attributes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        splits = json.dumps(sorted(set(self.spec.data.splits), key=SPLITS.index))
        attrs = {**self.info, ff.A_SPLITS: splits, **(notes or {})}
        converting = self.path if self.done is not None else None
        with ff.creating(self.path, comm, converting=converting, durable=converting is not None) as f:
            create(f, self.axes, self.spec, self.ident, self.x, self.y, digest(self.x, self.y), attrs)
            if self.done is not None:
                _write_points(f, self.axes.shape, self.values, self.done)
        if self.announce:
            log.info("%s", self.announce)


def _write_points(f: h5py.File, shape: tuple, values: dict[str, np.ndarray], done: dict[str, np.ndarray]) -> None:
    """Values kept exactly where done; NaN (our "not computed") elsewhere."""
    for split in SPLITS:
        for value in ff.file_values(f):
            name = value_name(split, value)
            if name in values:
                f[name][...] = np.where(done[split], values[name], np.nan).reshape(shape)
        f[done_name(split)][...] = done[split].astype(np.uint8).reshape(shape)


def create(f: h5py.File, axes: GridAxes, spec, ident: dict[str, Any],
           x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None, digest: str,
           extra_attrs: dict[str, Any] | None = None) -> None:
    """Write the whole structure of a new surface file. Structure only: under MPI every rank
    calls this with the same arguments (HDF5 metadata operations are collective).
    `extra_attrs` may name the values the run's loss defines (ff.A_VALUES, JSON): without
    "acc" there, the file gets no accuracy datasets."""
    f.create_dataset(ff.X, data=axes.x)
    if axes.y is not None:
        f.create_dataset(ff.Y, data=axes.y)
    create_values(f, axes.shape, ff.parse_values((extra_attrs or {}).get(ff.A_VALUES)))
    _write_directions(f, x, y)
    f.attrs[ff.A_FORMAT] = FORMAT
    f.attrs[ff.A_VERSION] = FORMAT_VERSION
    f.attrs[ff.A_SPEC] = spec.to_json()
    f.attrs[ff.A_IDENTITY] = json.dumps(ident, sort_keys=True)
    f.attrs[ff.A_DIGEST] = digest
    f.attrs[ff.A_VERSIONS] = json.dumps(versions(), sort_keys=True)
    f.attrs[ff.A_IMPORT_DIRS] = json.dumps(userimport.search_dirs())  # where its model and data factories were
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


def _write_directions(f: h5py.File, x, y) -> None:
    group = f.require_group(ff.DIRECTIONS)
    for axis, d in (("x", x), ("y", y)):
        if d is None:
            continue
        g = group.create_group(axis)
        for name, t in d.items():
            g.create_dataset(name, data=t.detach().to(torch.float32).cpu().numpy())


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
    if ff.DIRECTIONS not in f or "x" not in f[ff.DIRECTIONS]:
        raise UserError(f"output.surface: {path} is damaged: it holds no directions")


def read_directions(f: h5py.File, names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    g = f[ff.DIRECTIONS]
    read = lambda grp: {k: torch.from_numpy(np.asarray(grp[k], dtype=np.float32)) for k in names}
    return read(g["x"]), (read(g["y"]) if "y" in g else None)


def pending_points(f: h5py.File, splits: list[str]) -> np.ndarray:
    """Flat indices with any of `splits` not done, in coarse-to-fine order."""
    done = done_masks(f)
    shape = f[done_name(splits[0])].shape
    missing = np.zeros(int(np.prod(shape)), dtype=bool)
    for split in splits:
        missing |= ~done[split]
    order = coarse_to_fine(shape)
    return order[missing[order]]


class PointWriter:
    """Writes finished points into an open surface file: values first, then the done flags,
    so that a flag is never 1 before its values are stored.

    The datasets are opened once, here: under the mpio driver every rank constructs a
    PointWriter together (opening is collective), after which each rank's writes are
    independent. There the file is not flushed per unit (H5Fflush is collective): an
    independent write to an allocated contiguous dataset goes straight to MPI-IO and
    changes no HDF5 metadata, so a killed rank cannot leave the file unreadable.
    """

    def __init__(self, f: h5py.File, flush: bool = True):
        self.f, self.flush = f, flush
        self.acc = "acc" in ff.file_values(f)
        self.ds = {name: f[name] for name in
                   ff.value_names(ff.file_values(f)) + [done_name(s) for s in SPLITS] + [ff.POINT_SECONDS]}
        self.shape = self.ds[done_name(SPLITS[0])].shape

    def write(self, unit) -> None:
        """`unit` (job.Finished): its results are {split: (loss, accuracy)} per point, the
        accuracy NaN where the loss defines none (then the file has no accuracy to write).
        A write the file system refuses ends the process with one line (diskspace.write_failed)."""
        try:
            self._write(unit)
        except Exception as exc:
            if diskspace.failed_write(exc):
                diskspace.write_failed(self.f.filename, exc)
            raise

    def _write(self, unit) -> None:
        index = [np.unravel_index(int(p), self.shape) for p in unit.points]
        for idx, res, sec in zip(index, unit.results, unit.seconds):
            for split, (loss, acc) in res.items():
                self.ds[value_name(split, "loss")][idx] = loss
                if self.acc:
                    self.ds[value_name(split, "acc")][idx] = acc
            self.ds[ff.POINT_SECONDS][idx] = sec
        if self.flush:
            self.f.flush()
        for idx, res in zip(index, unit.results):
            for split in res:
                self.ds[done_name(split)][idx] = 1
        if self.flush:
            self.f.flush()


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


def file_spec(f: h5py.File, also_from: Path | None = None):
    """The spec a surface or shard file holds, with its model and data factories findable: the
    folders they were found in (and `also_from`) are remembered for the user's imports."""
    for folder in [*ff.import_dirs(f), *([also_from] if also_from is not None else [])]:
        userimport.remember(folder)
    return specs.from_dict(ff.read_spec(f))


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
        diskspace.check_room(path, int(np.prod(shape)) * (8 * len(VALUES) * len(SPLITS) + len(SPLITS) + 8)
                      + 8 * len(points) + 131072, "shard", what="the shard file")
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
    """Copy shard values into the surface, values first and done flags last. Returns points copied."""
    shape = surf[done_name(SPLITS[0])].shape
    copied = set()
    for split, points in new.items():
        if len(points) == 0:
            continue
        idx = np.unravel_index(points, shape)
        for value in ff.file_values(surf):
            name = value_name(split, value)
            target = np.asarray(surf[name])
            target[idx] = np.asarray(shard[name])[idx]
            surf[name][...] = target
        seconds = np.asarray(surf[ff.POINT_SECONDS])
        seconds[idx] = np.asarray(shard[ff.POINT_SECONDS])[idx]
        surf[ff.POINT_SECONDS][...] = seconds
        copied.update(points.tolist())
    surf.flush()
    for split, points in new.items():
        if len(points):
            flags = np.asarray(surf[done_name(split)])
            flags[np.unravel_index(points, shape)] = 1
            surf[done_name(split)][...] = flags
    surf.flush()
    return len(copied)
