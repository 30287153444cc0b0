"""What one surface job needs: its surface file (created or checked), and, per
process, the model at its base point with the stored directions and the data.

`prepare` runs once per job (serial, or on the MPI coordinator); `load_worker`
runs once per evaluating process. Both are plain functions of the spec.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as datasets
from . import directions as dirs
from . import surface
from .checkpoints import build_and_load, file_sha256
from .errors import UserError
from .evaluate import PointEvaluator, configure_precision, use_channels_last
from .grid import GridAxes

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A file to fill and the points it still lacks."""
    path: Path
    axes: GridAxes
    pending: "object"  # np.ndarray of flat point indices, coarse-to-fine
    total: int  # points this file is responsible for (the grid, or a shard's share)
    created: bool
    directions_path: Path | None = None  # where the directions are (default: path itself)

    @property
    def directions_file(self) -> Path:
        return self.directions_path or self.path


@dataclass
class NewFile:
    """Everything `surface.create` writes: computed once, then written by one or all ranks."""
    path: Path
    axes: GridAxes
    spec: object
    ident: dict
    x: dict
    y: dict | None
    info: dict

    def write(self, comm=None) -> None:
        """Create the file under a temporary name, then rename it: a crash never leaves a
        half-made surface file. With a communicator every rank must call this (collective)."""
        tmp = self.path.with_name(f".{self.path.name}.creating")
        with surface.open_h5(tmp, "w", comm) as f:
            surface.create(f, self.axes, self.spec, self.ident, self.x, self.y,
                           dirs.digest(self.x, self.y), self.info)
        if comm is None or comm.rank == 0:
            os.replace(tmp, self.path)
        if comm is not None:
            comm.barrier()  # nobody opens the file before it has its real name


FRESH_INIT_SEED = 0


def _base_model(spec) -> torch.nn.Module:
    """The model at the centre of the surface, on the CPU. Without a checkpoint it is a
    fresh initialisation from a fixed seed, so every rank and every resume builds the same one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_INIT_SEED)
        return build_and_load(spec.model, datasets.input_channels(spec.data))


def make_directions(spec, model: torch.nn.Module):
    """(x, y or None, info) for the spec, against the model at its base point (CPU)."""
    d = spec.directions
    weights = dirs.target_tensors(model, d.dir_type)
    two = bool(spec.grid.y)
    if d.kind == "random":
        return dirs.random_directions(weights, two, d.norm, d.ignore, d.seed, d.orthogonal)
    if d.kind == "interpolate":
        other = build_and_load(spec.model, datasets.input_channels(spec.data), checkpoint=spec.model.checkpoint2,
                               field="model.checkpoint2")
        return dirs.interpolation_direction(weights, dirs.target_tensors(other, d.dir_type)), None, {}
    if d.kind == "file":
        x, y = dirs.read_direction_file(d.file, weights, two)
        return x, y, {"directions_from": str(d.file)}
    raise ValueError(d.kind)


def _identity(spec) -> dict:
    m = spec.model
    sha1 = file_sha256(m.checkpoint) if m.checkpoint else f"fresh initialisation, seed {FRESH_INIT_SEED}"
    sha2 = file_sha256(m.checkpoint2) if (spec.directions.kind == "interpolate" and m.checkpoint2) else ""
    return surface.identity(spec, sha1, sha2)


def check_or_plan(spec) -> NewFile | None:
    """Check an existing surface file against the spec (None), or say what a new one holds.

    A refused file is only ever opened read-only, so it is left byte-for-byte untouched.
    An original loss-landscape file is converted to ours in place, keeping its values.
    """
    path = Path(spec.output.surface)
    axes = GridAxes.from_spec(spec.grid)
    ident = _identity(spec)
    if not path.exists():
        x, y, info = make_directions(spec, _base_model(spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        return NewFile(path, axes, spec, ident, x, y, info)
    with surface.open_h5(path, "r") as f:
        if surface.is_ours(f):
            surface.check_structure(f, path)
            surface.check_identity(f, path, ident, axes)
            original = False
        elif surface.is_original(f):
            surface.check_grid(f, path, axes)
            original = True
        else:
            raise UserError(f"output.surface: {path} is an HDF5 file but not a surface file "
                            "(no 'format' attribute and no xcoordinates)")
    if original:
        x, y, info = make_directions(spec, _base_model(spec))
        log.info("adopting %s, a surface file of the original loss-landscape code", path)
        with surface.open_h5(path, "r+") as f:
            surface.adopt_original(f, path, axes, spec, ident, x, y, dirs.digest(x, y))
    else:
        _check_directions(spec, path)
    return None


def pending(spec) -> Prepared:
    path = Path(spec.output.surface)
    axes = GridAxes.from_spec(spec.grid)
    with surface.open_h5(path, "r") as f:
        todo = surface.pending_points(f, spec.data.splits)
    return Prepared(path, axes, todo, axes.size, False)


def shard_prepared(shard: Path, splits: list[str]) -> Prepared:
    """The points of a SLURM array task's shard file that are not done yet."""
    with surface.open_h5(shard, "r") as f:
        surface.check_shard(f, shard)
        points = np.asarray(f["points"], dtype=np.int64)
        done = surface.done_masks(f)
        axes = GridAxes(np.asarray(f["xcoordinates"]),
                        np.asarray(f["ycoordinates"]) if "ycoordinates" in f else None)
        main = Path(f.attrs["surface"])
    missing = np.zeros(len(points), dtype=bool)
    for split in splits:
        missing |= ~done[split][points]
    return Prepared(shard, axes, points[missing], len(points), False, main)


def prepare(spec) -> Prepared:
    """Create the surface file with its directions, or check an existing one (one process)."""
    new = check_or_plan(spec)
    if new is not None:
        new.write()
    prep = pending(spec)
    prep.created = new is not None
    return prep


def _check_directions(spec, path: Path) -> None:
    """The stored directions must be the ones this spec makes (same seed, weights, norms)."""
    if spec.directions.kind == "file":
        return  # identity already pins the source; re-reading it proves nothing more
    model = _base_model(spec)
    x, y, _ = make_directions(spec, model)
    with surface.open_h5(path, "r") as f:
        stored = f.attrs.get("directions_sha256")
    if stored != dirs.digest(x, y):
        raise UserError(f"directions: the surface file {path} holds other directions than this spec makes "
                        "(a different seed, checkpoint or library version); choose another output.surface")


def load_worker(spec, path: Path, device: torch.device) -> PointEvaluator:
    """The model at its base point on `device`, moved along the directions stored in `path`."""
    configure_precision(spec.evaluation.precision)
    splits = {split: datasets.load_split(spec.data, split) for split in spec.data.splits}
    model = _base_model(spec)
    if use_channels_last(device, next(iter(splits.values()))[0]):
        # before the live tensors are collected: .to(memory_format) replaces the weights' storage
        model = model.to(memory_format=torch.channels_last)
        splits = {k: (x.contiguous(memory_format=torch.channels_last), y) for k, (x, y) in splits.items()}
    model = model.to(device)
    tensors = dirs.target_tensors(model, spec.directions.dir_type)
    with surface.open_h5(path, "r") as f:
        x, y = surface.read_directions(f, list(tensors))
    return PointEvaluator(model, tensors, x, y, splits, device, spec.evaluation.loss,
                          spec.evaluation.batch_size, spec.evaluation.precision, spec.evaluation.fold_batchnorm)
