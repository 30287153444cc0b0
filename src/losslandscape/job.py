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

import h5py
import torch

from . import data as datasets
from . import directions as dirs
from . import surface
from .checkpoints import build_and_load, file_sha256, load_state_dict
from .errors import UserError
from .evaluate import PointEvaluator, configure_precision, use_channels_last
from .grid import GridAxes

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    path: Path
    axes: GridAxes
    pending: "object"  # np.ndarray of flat point indices, coarse-to-fine
    total: int
    created: bool


def _base_model(spec) -> torch.nn.Module:
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
    sha1 = file_sha256(m.checkpoint) if m.checkpoint else "fresh-initialisation"
    sha2 = file_sha256(m.checkpoint2) if (spec.directions.kind == "interpolate" and m.checkpoint2) else ""
    return surface.identity(spec, sha1, sha2)


def prepare(spec, create_only: bool = False) -> Prepared:
    """Create the surface file with its directions, or check an existing one against the spec.

    A refused file is only ever opened read-only, so it is left byte-for-byte untouched.
    """
    path = Path(spec.output.surface)
    axes = GridAxes.from_spec(spec.grid)
    ident = _identity(spec)
    created = False
    if path.exists():
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
            model = _base_model(spec)
            x, y, info = make_directions(spec, model)
            log.info("adopting %s, a surface file of the original loss-landscape code", path)
            with surface.open_h5(path, "r+") as f:
                surface.adopt_original(f, path, axes, spec, ident, x, y, dirs.digest(x, y))
        else:
            _check_directions(spec, path)
    else:
        model = _base_model(spec)
        x, y, info = make_directions(spec, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        # build under a temporary name: a crash here never leaves a half-made surface file
        tmp = surface.tmp_sibling(path)
        with surface.open_h5(tmp, "w") as f:
            surface.create(f, axes, spec, ident, x, y, dirs.digest(x, y),
                           {k: v for k, v in info.items()})
        os.replace(tmp, path)
        created = True
    with surface.open_h5(path, "r") as f:
        pending = surface.pending_points(f, spec.data.splits) if not create_only else None
        total = axes.size
    return Prepared(path, axes, pending, total, created)


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
    """The model at its base point on `device`, moved along the file's own directions."""
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
                          spec.evaluation.batch_size, spec.evaluation.precision)
