"""One surface job in three steps: plan -> create -> load.

`plan` checks an existing surface file against the spec (None) or works out a
new one (`NewFile`); `create` writes a new file (one process, or every MPI rank
together); `load_evaluator` + `attach_directions` give an evaluating process
the model at its base point on its device, the data, then the stored
directions. A surface file of the original loss-landscape code is converted
before planning (`original.adopt_if_original`). The model, data and device are
loaded before the file is created, so a run that cannot start leaves nothing
behind that binds the file to its spec.
"""

from __future__ import annotations

import json
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
from .evaluate import PointEvaluator, use_channels_last
from .grid import AUTO_MARGIN, GridAxes, auto_axis, auto_points, is_auto, parse_axis

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


def base_model(spec) -> torch.nn.Module:
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
    if d.kind == "hessian":
        return hessian_directions(spec, model, two)
    if d.kind == "pca":
        return pca_plane(spec, model)
    if d.kind == "file":
        # an original "states" file also has entries for the integer num_batches_tracked buffers
        names = list(model.state_dict()) if d.dir_type == "states" else None
        x, y = dirs.read_direction_file(d.file, weights, two, all_names=names)
        return x, y, {"directions_from": str(d.file)}
    raise ValueError(d.kind)


def hessian_directions(spec, model: torch.nn.Module, two: bool):
    """Eigenvectors of the Hessian of the mean loss at the trained model (first split of
    data.splits, data.max_samples of it), on this process's CPU. Each unit eigenvector is
    scaled to the norm of the weights it moves, the length of a filter-normalised random
    direction, so that a grid of -1:1 reaches as far as a random-direction surface does."""
    from .hessian import HessianOperator, hessian_eigen_directions

    inputs, targets = datasets.load_split(spec.data, spec.data.splits[0])
    op = HessianOperator(model.eval(), "all", inputs, targets, spec.evaluation.loss, spec.evaluation.batch_size)
    pairs = hessian_eigen_directions(op, "extremes" if spec.directions.which == "maxmin" else "top2")
    weights = dirs.target_tensors(model, "weights")
    norm = float(torch.sqrt(sum(weights[k].detach().double().pow(2).sum() for k in op.names)))
    scaled = [{k: v * norm for k, v in d.items()} for _, d in pairs]
    for d in scaled:  # parameters outside the operator (none with "all") do not move
        for k, w in weights.items():
            d.setdefault(k, torch.zeros(w.shape))
    info = {"hessian_eigenvalues": [lam for lam, _ in pairs], "hessian_which": spec.directions.which,
            "hessian_direction_scale": norm}
    log.info("Hessian directions (%s): eigenvalues %s, scaled to the weights' norm %.4g", spec.directions.which,
             ", ".join(f"{lam:.5g}" for lam, _ in pairs), norm)
    return scaled[0], (scaled[1] if two else None), info


def pca_plane(spec, model: torch.nn.Module):
    """The plane of the first two principal components of the run's checkpoints minus the final
    model (the centre), with every run's path on it (`directions.also` too), as datasets."""
    from .trajectory import checkpoint_paths, pca_directions, pca_names, project

    d = spec.directions
    trust = spec.model.trust_checkpoint
    targets = dirs.target_tensors(model, d.dir_type)
    final = {k: v.detach() for k, v in targets.items()}
    names = pca_names(final, d.dir_type, d.ignore)
    paths = checkpoint_paths(d.checkpoints, "directions.checkpoints")
    log.info("PCA of %d checkpoints (%s)", len(paths), d.checkpoints)
    res = pca_directions(final, paths, names, trust, targets=list(targets), field="directions.checkpoints")
    info: dict = {"explained_variance_ratio": np.asarray(res.explained_variance_ratio, dtype=np.float64)}
    runs = [("/trajectory", paths, res.x, res.y, res.error, d.checkpoints)]
    for k, pattern in enumerate(d.also):
        field = f"directions.also[{k}]"
        more = checkpoint_paths(pattern, field)
        x, y, err = project(final, more, names, res.d1, res.d2, trust, field=field)
        runs.append((f"/trajectory/also/{k}", more, x, y, err, pattern))
    for group, ps, x, y, err, pattern in runs:
        info[f"{group}/x"], info[f"{group}/y"], info[f"{group}/error"] = x, y, err
        info[f"{group}/checkpoints"] = [Path(p).name for p in ps]
        info[f"{group}@pattern"] = pattern
    log.info("PC1 and PC2 explain %.1f%% and %.1f%% of the variance; mean distance from the plane %.2g",
             100 * res.explained_variance_ratio[0], 100 * res.explained_variance_ratio[1], float(np.mean(res.error)))
    return res.d1, res.d2, info


def _files_digest(patterns: list[str], field: str) -> str:
    """SHA-256 over the files each glob matches (names and contents), in trajectory order."""
    import hashlib

    from .trajectory import checkpoint_paths

    h = hashlib.sha256()
    for k, pattern in enumerate(patterns):
        for path in checkpoint_paths(pattern, field if k == 0 else f"directions.also[{k - 1}]"):
            h.update(path.name.encode())
            h.update(file_sha256(path, field).encode())
    return h.hexdigest()


def run_identity(spec) -> dict:
    """What a resume must match (surface.identity), with the SHA-256 of every file the run reads."""
    m, d = spec.model, spec.directions
    sha1 = (file_sha256(m.checkpoint, "model.checkpoint") if m.checkpoint
            else f"fresh initialisation, seed {FRESH_INIT_SEED}")
    sha2 = file_sha256(m.checkpoint2, "model.checkpoint2") if (d.kind == "interpolate" and m.checkpoint2) else ""
    sha_dirs = file_sha256(d.file, "directions.file") if d.kind == "file" else ""
    if d.kind == "pca":
        sha_dirs = _files_digest([d.checkpoints, *d.also], "directions.checkpoints")
    return surface.identity(spec, sha1, sha2, sha_dirs)


def plan(spec) -> NewFile | None:
    """Check an existing surface file against the spec (None), or say what a new one holds.

    A refused file is only ever opened read-only, so it is left byte-for-byte untouched.
    """
    path = Path(spec.output.surface)
    ident = run_identity(spec)
    if not path.exists():
        x, y, info = make_directions(spec, base_model(spec))
        resolve_auto_grid(spec, info, (x, y))
        warn_off_grid(spec)
        return NewFile(path, GridAxes.from_spec(spec.grid), spec, ident, x, y, info)
    resolve_auto_grid(spec, None)
    axes = GridAxes.from_spec(spec.grid)
    warn_off_grid(spec)
    with surface.open_h5(path, "r") as f:
        if surface.is_original(f):
            raise UserError(f"output.surface: {path} is a surface file of the original loss-landscape code "
                            "that was not converted")  # adopt_if_original runs first; this is a guard
        if not surface.is_ours(f):
            raise UserError(f"output.surface: {path} is an HDF5 file but not a surface file "
                            "(no 'format' attribute and no xcoordinates)")
        surface.check_structure(f, path)
        surface.check_identity(f, path, ident, axes)
    _check_directions(spec, path)
    return None


def resolve_auto_grid(spec, info: dict | None, directions: tuple | None = None) -> None:
    """Turn "auto" axes into "lo:hi:n", in place: for a new file from the paths of a trajectory
    (`info`, kind "pca") or by how far along the new `directions` (x, y) the loss grows by
    grid.auto_factor (the other kinds; the search is added to `info`), or, resuming, the file's
    own grid. Printed, and recorded in the file with the spec.

    grid.auto_factor and grid.auto_samples are not part of the run's identity, like the grid
    itself: what a resume must match is the resolved grid (check_grid), and a resume with
    "auto" takes the file's grid whatever factor it gives."""
    auto = [(k, getattr(spec.grid, k)) for k in ("x", "y") if is_auto(getattr(spec.grid, k))]
    if not auto:
        return
    if info is None:
        with surface.open_h5(spec.output.surface, "r") as f:
            stored = json.loads(f.attrs["spec"])["grid"] if surface.is_ours(f) else {}
        for axis, text in auto:
            if axis not in stored or is_auto(stored[axis]):
                raise UserError(f"grid.{axis}: {text!r} cannot be resolved against {spec.output.surface}; give "
                                "its grid as lo:hi:n")
            setattr(spec.grid, axis, stored[axis])
        return
    if spec.directions.kind != "pca":
        search_auto_grid(spec, auto, directions, info)
        return
    for axis, text in auto:
        values = np.concatenate([np.asarray(v) for k, v in info.items() if k.endswith(f"/{axis}")])
        setattr(spec.grid, axis, auto_axis(f"grid.{axis}", text, values))
        log.info("grid.%s = %s: %s (the paths' extent and 0, plus %d%% on each side)", axis, text,
                 getattr(spec.grid, axis), round(100 * AUTO_MARGIN))


def search_auto_grid(spec, auto: list[tuple[str, str]], directions: tuple, info: dict) -> None:
    """Random, Hessian and file directions: each auto axis is -reach..reach, where the loss of the
    first split has grown by grid.auto_factor on both sides (autorange.py). The search runs here,
    in the planning process (rank 0 under MPI), on the CPU; its numbers go into the file's
    attribute `auto_range` (JSON, by axis)."""
    from .autorange import auto_range

    evaluator = auto_search_evaluator(spec)
    evaluator.set_directions(*directions)
    split = spec.data.splits[0]
    found = {}
    for axis, text in auto:
        r = found[axis] = auto_range(evaluator, split, axis, spec.grid.auto_factor)
        n = auto_points(f"grid.{axis}", text)
        setattr(spec.grid, axis, f"{-r['reach']!r}:{r['reach']!r}:{n}")
        log.info("grid.%s = %s: %s (%s loss %.4g at the centre grows by auto_factor %g at %s = +%.3g / -%.3g; "
                 "%d evaluations of %d samples, %.1f s)", axis, text, getattr(spec.grid, axis), split,
                 r["centre_loss"], r["factor"], axis, r["plus"], r["minus"], r["evaluations"], r["samples"],
                 r["seconds"])
        target = r["factor"] * r["centre_loss"]
        for sign, key in (("+", "loss_plus"), ("-", "loss_minus")):
            if r[key] < target:
                log.warning("grid.%s: the loss at %s = %s%g is %.4g, less than auto_factor times the centre's "
                            "(%.4g): it does not rise steadily along %s", axis, axis, sign, r["reach"], r[key],
                            target, axis)
    info["auto_range"] = json.dumps(found, sort_keys=True)


def auto_search_evaluator(spec) -> PointEvaluator:
    """A fresh model at the centre on this process's CPU with grid.auto_samples evenly spaced
    samples (index k * N // n) of the first split of data.splits (0: all of them)."""
    split = spec.data.splits[0]
    inputs, targets = datasets.load_split(spec.data, split)
    n = spec.grid.auto_samples
    if n and n < len(targets):
        keep = torch.arange(n, dtype=torch.long) * len(targets) // n
        inputs, targets = inputs[keep], targets[keep]
    device = torch.device("cpu")
    model = base_model(spec)
    if use_channels_last(device, inputs):
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    tensors = dirs.target_tensors(model, spec.directions.dir_type)
    # the spec's precision, not fp32: configure_precision sets process-wide flags that this process's
    # own evaluator (built before the plan) runs under
    return PointEvaluator(model, tensors, {split: (inputs, targets)}, device, spec.evaluation.loss,
                          spec.evaluation.batch_size, spec.evaluation.precision, spec.evaluation.fold_batchnorm)


def warn_off_grid(spec) -> None:
    """An axis whose points miss 0 leaves the centre (the trained model) off the grid: say so."""
    for key, text in (("grid.x", spec.grid.x), ("grid.y", spec.grid.y)):
        if text and not np.isclose(parse_axis(key, text), 0.0, rtol=0, atol=1e-12).any():
            log.warning("%s = %r has no point at 0: the model at the centre (model.checkpoint) is not on the "
                        "grid; use an odd number of points on a range symmetric about 0, e.g. \"-1:1:21\"",
                        key, text)


def create(new: NewFile, comm=None) -> None:
    """Write a new surface file (collective: with a communicator every rank calls this)."""
    new.path.parent.mkdir(parents=True, exist_ok=True)
    new.write(comm)


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


def prepare(spec, notes: dict | None = None) -> Prepared:
    """One process: convert an original file, plan, create; the points still to compute.

    `notes` (e.g. how the evaluation ran) are recorded in the file's attributes."""
    from .original import adopt_if_original

    adopt_if_original(spec)
    new = plan(spec)
    if new is not None:
        create(new)
    surface.record_run(Path(spec.output.surface), spec.data.splits, notes)
    prep = pending(spec)
    prep.created = new is not None
    return prep


def _check_directions(spec, path: Path) -> None:
    """The stored directions must be the ones this spec makes (same seed, weights, norms)."""
    if spec.directions.kind in ("file", "hessian", "pca"):
        return  # identity pins the source file by its SHA-256; Hessian directions by model, data and choice
    model = base_model(spec)
    x, y, _ = make_directions(spec, model)
    with surface.open_h5(path, "r") as f:
        stored = f.attrs.get("directions_sha256")
    if stored != dirs.digest(x, y):
        raise UserError(f"directions: the surface file {path} holds other directions than this spec makes "
                        "(a different seed, checkpoint or library version); choose another output.surface")


def load_evaluator(spec, device: torch.device, checkpoint: str | None = None,
                   field: str = "model.checkpoint", fold: bool | None = None) -> PointEvaluator:
    """The model at its base point on `device` (or at another `checkpoint`), with the data set
    there too (no directions yet)."""
    splits = {split: datasets.load_split(spec.data, split) for split in spec.data.splits}
    model = base_model(spec) if checkpoint is None else build_and_load(
        spec.model, datasets.input_channels(spec.data), checkpoint=checkpoint, field=field)
    if use_channels_last(device, next(iter(splits.values()))[0]):
        # before the live tensors are collected: .to(memory_format) replaces the weights' storage
        model = model.to(memory_format=torch.channels_last)
        splits = {k: (x.contiguous(memory_format=torch.channels_last), y) for k, (x, y) in splits.items()}
    model = model.to(device)
    tensors = dirs.target_tensors(model, spec.directions.dir_type)
    return PointEvaluator(model, tensors, splits, device, spec.evaluation.loss, spec.evaluation.batch_size,
                          spec.evaluation.precision, spec.evaluation.fold_batchnorm if fold is None else fold)


def attach_directions(evaluator: PointEvaluator, path: Path) -> None:
    """Give the evaluator the directions stored in the surface file `path`."""
    with surface.open_h5(path, "r") as f:
        evaluator.set_directions(*surface.read_directions(f, evaluator.names))


def endpoint_report(spec, evaluator: PointEvaluator) -> None:
    """For an interpolation: log the values at x = 0 and x = 1 next to each checkpoint's own
    values, and warn when x = 1 is not the second model (BatchNorm statistics left behind)."""
    other = load_evaluator(spec, evaluator.device, checkpoint=spec.model.checkpoint2, field="model.checkpoint2")
    worst = 0.0
    for split in spec.data.splits:
        ends = [evaluator.evaluate(a, 0.0, [split])[split] for a in (0.0, 1.0)]
        own = [evaluator.evaluate(0.0, 0.0, [split])[split], other.measure(split)]
        for a, (loss, acc), (own_loss, own_acc), key in zip((0, 1), ends, own,
                                                            ("model.checkpoint", "model.checkpoint2")):
            log.info("interpolation %s x = %d: loss %.6g, accuracy %.2f%%; %s itself: loss %.6g, accuracy %.2f%%",
                     split, a, loss, acc, key, own_loss, own_acc)
            worst = max(worst, abs(loss - own_loss) / max(abs(own_loss), 1e-12))
    if worst > 1e-3:
        log.warning("x = 1 is not the second model (loss off by %.0f%%): with directions.dir_type = %r the "
                    "BatchNorm running statistics stay those of model.checkpoint; use dir_type = \"states\"",
                    100 * worst, spec.directions.dir_type)
