"""The surface file (HDF5): create, check, resume, write points, read directions.

Layout (the README's "The surface file"): `xcoordinates` (nx,), `ycoordinates` (ny,) for 2-D;
`{train,test}_{loss,acc}` float64 (ny, nx) or (nx,), NaN where not computed;
`{train,test}_done` uint8, 1 only after that point's values are written;
`point_seconds` float64, wall time of each point's last evaluation;
`directions/x/<name>`, `directions/y/<name>` float32; attributes with the
resolved spec, the identity of the run (hashes) and library versions.

Every dataset is created once, contiguous and fully allocated, before any
value is written: after that writing a point changes no HDF5 metadata, so a
killed job leaves a readable file. The original loss-landscape code's files
(-1 marks a missing point, no done flags) are read and can be resumed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__, userimport
from .errors import UserError
from .grid import GridAxes, coarse_to_fine
from .fileformat import (FORMAT, FORMAT_VERSION, SHARD_FORMAT, SPLITS, VALUES, check_shard, done_masks,  # noqa: F401
                         is_original, is_ours, open_h5, requested_splits, value_name)

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
    if spec.data.name == "cifar10":
        ident["data.root"] = str(Path(spec.data.root).resolve())
    return ident


def versions() -> dict[str, str]:
    import mpi4py  # noqa: PLC0415 (version only; importing mpi4py does not start MPI)

    return {"losslandscape": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "hdf5": ".".join(map(str, h5py.version.hdf5_version_tuple)),
            "mpi4py": mpi4py.__version__}


def dcpl_early(fill: float | int) -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


def create(f: h5py.File, axes: GridAxes, spec, ident: dict[str, Any],
           x: dict[str, torch.Tensor], y: dict[str, torch.Tensor] | None, digest: str,
           extra_attrs: dict[str, Any] | None = None) -> None:
    """Write the whole structure of a new surface file. Structure only: under MPI every rank
    calls this with the same arguments (HDF5 metadata operations are collective)."""
    f.create_dataset("xcoordinates", data=axes.x)
    if axes.y is not None:
        f.create_dataset("ycoordinates", data=axes.y)
    for split in SPLITS:
        for value in VALUES:
            f.create_dataset(value_name(split, value), shape=axes.shape, dtype="f8",
                             fillvalue=np.nan, dcpl=dcpl_early(np.nan))
        f.create_dataset(f"{split}_done", shape=axes.shape, dtype="u1", fillvalue=0, dcpl=dcpl_early(0))
    f.create_dataset("point_seconds", shape=axes.shape, dtype="f8", fillvalue=np.nan, dcpl=dcpl_early(np.nan))
    _write_directions(f, x, y)
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["spec"] = spec.to_json()
    f.attrs["identity"] = json.dumps(ident, sort_keys=True)
    f.attrs["directions_sha256"] = digest
    f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
    f.attrs["import_dirs"] = json.dumps(userimport.search_dirs())  # where its model and data factories were
    f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
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


def _write_directions(f: h5py.File, x, y) -> None:
    group = f.require_group("directions")
    for axis, d in (("x", x), ("y", y)):
        if d is None:
            continue
        g = group.create_group(axis)
        for name, t in d.items():
            g.create_dataset(name, data=t.detach().to(torch.float32).cpu().numpy())


def check_identity(f: h5py.File, path: str | Path, ident: dict[str, Any], axes: GridAxes) -> None:
    """Refuse (one line, file untouched) to fill a file made by a different run."""
    check_grid(f, path, axes)
    stored = json.loads(f.attrs["identity"])
    for key in sorted(set(stored) | set(ident)):
        if stored.get(key) != ident.get(key):
            raise UserError(
                f"{key}: the surface file {path} was made with {stored.get(key)!r}, this spec gives "
                f"{ident.get(key)!r}; resume with the file's spec or choose another output.surface")


def check_grid(f: h5py.File, path: str | Path, axes: GridAxes) -> None:
    fx = np.asarray(f["xcoordinates"])
    fy = np.asarray(f["ycoordinates"]) if "ycoordinates" in f else None
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
    shape = f["xcoordinates"].shape if "ycoordinates" not in f else (len(f["ycoordinates"]), len(f["xcoordinates"]))
    for split in SPLITS:
        for name in (value_name(split, "loss"), value_name(split, "acc"), f"{split}_done"):
            if name not in f or f[name].shape != shape:
                raise UserError(f"output.surface: {path} is damaged: dataset {name!r} is missing or not {shape}")
    if "directions" not in f or "x" not in f["directions"]:
        raise UserError(f"output.surface: {path} is damaged: it holds no directions")


def read_directions(f: h5py.File, names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    g = f["directions"]
    read = lambda grp: {k: torch.from_numpy(np.asarray(grp[k], dtype=np.float32)) for k in names}
    return read(g["x"]), (read(g["y"]) if "y" in g else None)


def pending_points(f: h5py.File, splits: list[str]) -> np.ndarray:
    """Flat indices with any of `splits` not done, in coarse-to-fine order."""
    done = done_masks(f)
    shape = f[f"{splits[0]}_done"].shape
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
        self.ds = {name: f[name] for name in
                   [value_name(s, v) for s in SPLITS for v in VALUES] + [f"{s}_done" for s in SPLITS]
                   + ["point_seconds"]}
        self.shape = self.ds["train_done"].shape

    def write(self, points, results: list[dict[str, tuple[float, float]]], seconds: list[float]) -> None:
        index = [np.unravel_index(int(p), self.shape) for p in points]
        for idx, res, sec in zip(index, results, seconds):
            for split, (loss, acc) in res.items():
                self.ds[value_name(split, "loss")][idx] = loss
                self.ds[value_name(split, "acc")][idx] = acc
            self.ds["point_seconds"][idx] = sec
        if self.flush:
            self.f.flush()
        for idx, res in zip(index, results):
            for split in res:
                self.ds[f"{split}_done"][idx] = 1
        if self.flush:
            self.f.flush()


def record_run(path: Path, splits: list[str], notes: dict[str, str] | None = None) -> None:
    """Remember the splits asked for (status and merge report them) and notes on how the run
    evaluates. One process, before any other opens the file for this run."""
    with open_h5(path, "r") as f:
        if not is_ours(f):
            return
        want = sorted(set(requested_splits(f)) | set(splits), key=SPLITS.index)
        changed = json.dumps(want) != f.attrs.get("splits") or any(
            f.attrs.get(k) != v for k, v in (notes or {}).items())
    if changed:
        with open_h5(path, "r+") as f:
            f.attrs["splits"] = json.dumps(want)
            for k, v in (notes or {}).items():
                f.attrs[k] = v


def summary_line(path: str | Path, f: h5py.File, splits: list[str], pending: int) -> str:
    total = int(np.prod(f["train_done"].shape))
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
        shape = src["train_done"].shape
        tmp = path.with_name(f".{path.name}.creating")
        with open_h5(tmp, "w") as f:
            for name in ("xcoordinates", "ycoordinates"):
                if name in src:
                    f.create_dataset(name, data=np.asarray(src[name]))
            for split in SPLITS:
                for value in VALUES:
                    f.create_dataset(value_name(split, value), shape=shape, dtype="f8",
                                     fillvalue=np.nan, dcpl=dcpl_early(np.nan))
                f.create_dataset(f"{split}_done", shape=shape, dtype="u1", fillvalue=0, dcpl=dcpl_early(0))
            f.create_dataset("point_seconds", shape=shape, dtype="f8", fillvalue=np.nan, dcpl=dcpl_early(np.nan))
            f.create_dataset("points", data=np.asarray(points, dtype=np.int64))
            f.attrs["format"] = SHARD_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["surface"] = str(Path(surface_path).resolve())
            for key in ("identity", "directions_sha256"):
                f.attrs[key] = src.attrs[key]
            f.attrs["spec"] = spec_json
            f.attrs["import_dirs"] = json.dumps(import_dirs)
            f.attrs["task"] = task
            f.attrs["tasks"] = tasks
    os.replace(tmp, path)


def shard_belongs(shard: h5py.File, surf: h5py.File) -> bool:
    """Same identity and the same directions: the shard's values are points of this surface."""
    return (shard.attrs.get("identity") == surf.attrs.get("identity")
            and shard.attrs.get("directions_sha256") == surf.attrs.get("directions_sha256")
            and shard["train_done"].shape == surf["train_done"].shape)


def shard_new_points(shard: h5py.File, surf: h5py.File) -> tuple[dict[str, np.ndarray], int]:
    """({split: flat indices} done in the shard but not yet in the surface, points skipped).

    A point is taken only with its values: a done flag whose accuracy is missing (NaN; a
    computed accuracy is always a number, even where the loss diverged) is skipped, so the
    surface never marks a point done that has no values."""
    sd, fd = done_masks(shard), done_masks(surf)
    new, skipped = {}, 0
    for split in SPLITS:
        candidates = np.flatnonzero(sd[split] & ~fd[split])
        if len(candidates):
            acc = np.asarray(shard[value_name(split, "acc")]).ravel()[candidates]
            skipped += int((~np.isfinite(acc)).sum())
            candidates = candidates[np.isfinite(acc)]
        new[split] = candidates
    return new, skipped


def copy_points(shard: h5py.File, surf: h5py.File, new: dict[str, np.ndarray]) -> int:
    """Copy shard values into the surface, values first and done flags last. Returns points copied."""
    shape = surf["train_done"].shape
    copied = set()
    for split, points in new.items():
        if len(points) == 0:
            continue
        idx = np.unravel_index(points, shape)
        for value in VALUES:
            name = value_name(split, value)
            target = np.asarray(surf[name])
            target[idx] = np.asarray(shard[name])[idx]
            surf[name][...] = target
        seconds = np.asarray(surf["point_seconds"])
        seconds[idx] = np.asarray(shard["point_seconds"])[idx]
        surf["point_seconds"][...] = seconds
        copied.update(points.tolist())
    surf.flush()
    for split, points in new.items():
        if len(points):
            flags = np.asarray(surf[f"{split}_done"])
            flags[np.unravel_index(points, shape)] = 1
            surf[f"{split}_done"][...] = flags
    surf.flush()
    return len(copied)
