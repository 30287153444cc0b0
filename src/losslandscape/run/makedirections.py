"""Directions and identity: the model at the centre of a surface, the directions a spec makes
(random, interpolation: the line to a second model or the plane through three, Hessian
eigenvectors, the PCA of a trajectory, a direction file; with directions.same_dir, y = x), and
the identity a resume must match (identity, with the SHA-256 of every file read), and
what else a new file records of its run (file_attrs: the directions' digest, the versions).

A new file records the size, mtime_ns and SHA-256 of each file hashed (ff.A_FILE_HASHES); a
resume takes the SHA-256 of a file whose size and mtime_ns are unchanged from that record
instead of reading it again (a checkpoint can be GBs; the same rule as make's and rsync's).

Everything here runs in one process on the CPU and writes nothing: work.py decides when
it runs (rank 0, before a new file is created) and stores what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslandscape._version import __version__
from losslandscape.errors import UserError
from losslandscape.inputs import data as datasets
from losslandscape.numerics import directions as dirs
from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile.original import Conversion
from losslandscape.surfacefile.read import read_direction_file
from losslandscape.surfacefile.write import NewFile
from losslandscape.inputs import userimport
from losslandscape.inputs.checkpoints import ModelRows, build_and_load, build_on_meta, checkpoint_files, file_sha256
from losslandscape.numerics.trajectory import checkpoint_paths, pca_directions, pca_names, project

log = logging.getLogger(__name__)

FRESH_INIT_SEED = 0
A_MOVED = "moved_tensors"  # the new file's attribute: JSON of directions.moved_summary (counts and filters)


def base_model(spec) -> torch.nn.Module:
    """The model at the centre of the surface, on the CPU. Without a checkpoint it is a
    fresh initialisation from a fixed seed, so every rank and every resume builds the same one."""
    channels = model_channels(spec)  # before the seed: reading data may draw from the global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_INIT_SEED)
        return build_and_load(spec.model, channels)


def model_channels(spec) -> int:
    """The input channels a zoo model is built for (from the data; its model.num_classes is
    checked against an image folder's classes); a user's factory decides its own (nothing is read)."""
    if ":" in spec.model.name:
        return 3
    datasets.check_classes(spec)
    return datasets.input_channels(spec.data)


def built_on_meta(spec) -> bool:
    """Whether the model is built with its parameters on the meta device and read from its
    checkpoint a tensor (or, on a worker, its rows) at a time: a model sharded over ranks
    (evaluation.ranks_per_model > 1) that has a model.checkpoint to read."""
    return spec.evaluation.ranks_per_model > 1 and bool(spec.model.checkpoint)


def centre_for_directions(spec) -> tuple[torch.nn.Module, Any]:
    """(the model at the centre, its whole weights read a tensor at a time, or None) for
    make_directions on rank 0: random directions of a model sharded over ranks need its
    weights one tensor at a time (drawn, normalised and digested tensor by tensor), so the
    model is built on the meta device and never held whole (and an interpolation's other
    models, its direction made a tensor at a time); otherwise base_model."""
    if built_on_meta(spec) and spec.directions.kind in ("random", "interpolate"):
        return build_on_meta(spec.model, model_channels(spec))
    return base_model(spec), None


def make_directions(spec, model: torch.nn.Module, whole=None):
    """(x, y or None, info) for the spec, against the model at its base point (CPU). `info`
    holds extra attributes and datasets of the new file ("/group/name", "/group@attr").
    `whole` (random and interpolation directions): the model's weights read a tensor at a time
    (inputs/checkpoints.ModelRows), for a model whose parameters are on the meta device."""
    d = spec.directions
    weights = dirs.moved_tensors(model, d)
    moved = dirs.moved_summary(weights, d)
    log.info("%s", moving_line(weights, d, moved))
    if whole is not None:
        weights = whole.only(list(weights))
    x, y, info = _directions(spec, model, weights)
    coef = info.pop("orthogonal_coef", None)  # kept only where the directions are drawn again
    if d.store == "seed":
        info = {**info, **seed_record(d, x, y, coef)}
    return x, y, {**info, A_MOVED: json.dumps(moved), ff.A_FILE_HASHES: hash_record(spec), **file_attrs(x, y)}


def seed_record(d, x, y, coef: float | None) -> dict[str, Any]:
    """The file's record of random directions stored as a seed (directions.store = "seed"), as
    extra attributes and datasets of the new file: the seed, the drawing scheme, the normalisation,
    the orthogonalisation's coefficient, and a SHA-256 per tensor and axis, each tensor drawn once
    more here (never a whole direction held)."""
    g = f"/{ff.DIRECTIONS}"
    names = list(x)
    sha = np.zeros((len(names), 1 if y is None else 2, 32), np.uint8)
    for i, k in enumerate(names):
        for a, direction in enumerate((x, y) if y is not None else (x,)):
            sha[i, a] = np.frombuffer(dirs.tensor_sha256(direction, k), np.uint8)
    record = {f"{g}@{ff.A_STORE}": "seed", f"{g}@seed": d.seed, f"{g}@scheme": dirs.SCHEME, f"{g}@norm": d.norm,
              f"{g}@ignore": d.ignore, f"{g}@same_dir": bool(d.same_dir), f"{g}/{ff.SEED_NAMES}": names,
              f"{g}/{ff.SEED_SHA}": sha}
    if coef is not None:
        record[f"{g}@orthogonal_coef"] = float(coef)
    return record


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
    if spec.data.input_keys:
        ident["data.input_keys"] = list(spec.data.input_keys)
    return ident


def versions() -> dict[str, str]:
    """The versions that made a file (its attribute `versions`): with the same losslandscape and
    torch, random directions come out the same (identity_pins_directions)."""
    import mpi4py  # noqa: PLC0415 (version only; importing mpi4py does not start MPI)

    return {"losslandscape": __version__, "torch": torch.__version__, "numpy": np.__version__,
            **ff.library_versions(), "mpi4py": mpi4py.__version__}


def file_attrs(x: dirs.Direction, y: dirs.Direction | None) -> dict[str, str]:
    """What a new file records of its run beside the spec and the identity: the directions'
    digest (a resume compares it), the versions that made them and the folders the model and
    data factories were found in."""
    return {ff.A_DIGEST: dirs.digest(x, y), ff.A_VERSIONS: json.dumps(versions(), sort_keys=True),
            ff.A_IMPORT_DIRS: json.dumps(userimport.search_dirs())}


def moving_line(weights: dict[str, torch.Tensor], d, moved: dict) -> str:
    """The log's line on what moves: the tensors of the moved set that change, and those
    directions.ignore = "biasbn" holds fixed (1-D: a zero direction; random and PCA directions)."""
    chosen = _filters(moved) or f"every {'parameter' if d.dir_type == 'weights' else 'floating-point state entry'}"
    held = [t for t in weights.values() if t.dim() <= 1] if d.ignore == "biasbn" and d.kind in ("random", "pca") else []
    if not held:
        return f"moving {moved['tensors']} tensors, {moved['parameters']:,} parameters ({chosen})"
    held_params = sum(t.numel() for t in held)
    return (f"moving {moved['tensors'] - len(held)} of {moved['tensors']} tensors, "
            f"{moved['parameters'] - held_params:,} of {moved['parameters']:,} parameters ({chosen}); "
            f'directions.ignore = "biasbn" holds the other {len(held)}, {held_params:,} parameters '
            "(biases and norms: a zero direction)")


def _filters(moved: dict) -> str:
    parts = [f"{k} {moved[k]}" for k in ("include", "exclude") if moved[k]]
    return ", ".join(parts + (["trainable_only"] if moved["trainable_only"] else []))


def _directions(spec, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """(x, y or None, info); with directions.same_dir, y is a copy of x (the original --same_dir)."""
    x, y, info = _made(spec, model, weights, bool(spec.grid.y) and not spec.directions.same_dir)
    if spec.directions.same_dir:
        y = {k: v.clone() for k, v in x.items()}
    return x, y, info


def _made(spec, model: torch.nn.Module, weights: dict[str, torch.Tensor], two: bool):
    d = spec.directions
    if d.kind == "random":
        return dirs.random_directions(weights, two, d.norm, d.ignore, d.seed, d.orthogonal)
    if d.kind == "interpolate":
        # x to checkpoint2; with a y axis, y to checkpoint3: the plane through three models
        x = _towards(spec, weights, spec.model.checkpoint2, "model.checkpoint2")
        return x, (_towards(spec, weights, spec.model.checkpoint3, "model.checkpoint3") if two else None), {}
    if d.kind == "hessian":
        return hessian_directions(spec, model, two, weights)
    if d.kind == "pca":
        return pca_plane(spec, model, weights)
    if d.kind == "file":
        # an original "states" file also has entries for the integer num_batches_tracked buffers
        names = list(model.state_dict()) if d.dir_type == "states" else None
        shapes = {k: tuple(t.shape) for k, t in dirs.target_tensors(model, d.dir_type).items()}
        x, y = (None if a is None else {k: torch.from_numpy(v) for k, v in a.items()}
                for a in read_direction_file(d.file, shapes, two, all_names=names, only=list(weights)))
        return x, y, {ff.A_DIRECTIONS_FROM: str(d.file)}
    raise ValueError(d.kind)


def _towards(spec, weights: dict[str, torch.Tensor], path: str, field: str) -> dirs.Direction:
    """The interpolation direction from the centre's moved tensors to the model at `path`;
    where the centre's are read from its checkpoint when asked for (a model built on the meta
    device), so are the other model's, and the direction is made a tensor at a time."""
    if isinstance(weights, ModelRows):
        _, end = build_on_meta(dataclasses.replace(spec.model, checkpoint=path), model_channels(spec), field)
        return Towards(weights, end.only(list(weights)))
    other = build_and_load(spec.model, model_channels(spec), checkpoint=path, field=field)
    end = dirs.target_tensors(other, spec.directions.dir_type)
    return dirs.interpolation_direction(weights, {k: end[k] for k in weights})


class Towards(Mapping):
    """{name: end - start} in float32, each tensor read and made when asked for (`_towards`)."""

    def __init__(self, start: ModelRows, end: ModelRows):
        self.start, self.end = start, end

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.start.shapes

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.end[name].float() - self.start[name].float()

    def __iter__(self):
        return iter(self.start)

    def __len__(self) -> int:
        return len(self.start)


def hessian_directions(spec, model: torch.nn.Module, two: bool, weights: dict[str, torch.Tensor] | None = None):
    """Eigenvectors of the Hessian of the mean loss at the trained model (first split of
    data.splits, data.max_samples of it), on this process's CPU, with respect to the moved
    parameters `weights` (default: the spec's moved set), the others held fixed: the
    sub-Hessian of those parameters. Each unit eigenvector is scaled to the norm of the
    weights it moves, the length of a filter-normalised random direction, so that a grid of
    -1:1 reaches as far as a random-direction surface does."""
    from losslandscape.numerics.hessian import HessianOperator, hessian_eigen_directions  # scipy: only here

    if weights is None:
        weights = dirs.moved_tensors(model, spec.directions)
    source = datasets.load_source(spec.data, spec.data.splits[0], spec.evaluation.batch_size or 128)
    params = {name: p for name, p in model.named_parameters() if name in weights}  # dir_type is "weights"
    op = HessianOperator(model.eval(), params, source, None, spec.evaluation.loss, spec.evaluation.batch_size)
    pairs = hessian_eigen_directions(op, "extremes" if spec.directions.which == "maxmin" else "top2")
    norm = float(torch.sqrt(sum(weights[k].detach().double().pow(2).sum() for k in op.names)))
    scaled = [{k: v * norm for k, v in d.items()} for _, d in pairs]
    info = {ff.A_HESSIAN_EIGENVALUES: [lam for lam, _ in pairs], ff.A_HESSIAN_WHICH: spec.directions.which,
            ff.A_HESSIAN_SCALE: norm}
    log.info("Hessian directions (%s): eigenvalues %s, scaled to the weights' norm %.4g", spec.directions.which,
             ", ".join(f"{lam:.5g}" for lam, _ in pairs), norm)
    return scaled[0], (scaled[1] if two else None), info


def pca_plane(spec, model: torch.nn.Module, targets: dict[str, torch.Tensor] | None = None):
    """The plane of the first two principal components of the run's checkpoints minus the final
    model (the centre), over the moved tensors `targets` (default: the spec's moved set), with
    every run's path on it (`directions.also` too), as datasets."""
    d = spec.directions
    trust = spec.model.trust_checkpoint
    if targets is None:
        targets = dirs.moved_tensors(model, d)
    final = {k: v.detach() for k, v in targets.items()}
    names = pca_names(final, d.dir_type, d.ignore)
    paths = checkpoint_paths(d.checkpoints, "directions.checkpoints")
    log.info("PCA of %d checkpoints (%s)", len(paths), d.checkpoints)
    res = pca_directions(final, paths, names, trust, targets=list(targets), field="directions.checkpoints")
    info: dict = {ff.A_EXPLAINED: np.asarray(res.explained_variance_ratio, dtype=np.float64)}
    info.update(ff.path_entries(None, res.x, res.y, res.error, [Path(p).name for p in paths], d.checkpoints))
    for k, pattern in enumerate(d.also):
        field = f"directions.also[{k}]"
        more = checkpoint_paths(pattern, field)
        x, y, err = project(final, more, names, res.d1, res.d2, trust, field=field)
        info.update(ff.path_entries(k, x, y, err, [Path(p).name for p in more], pattern))
    log.info("PC1 and PC2 explain %.1f%% and %.1f%% of the variance; mean distance from the plane %.2g",
             100 * res.explained_variance_ratio[0], 100 * res.explained_variance_ratio[1], float(np.mean(res.error)))
    return res.d1, res.d2, info


_HASHED: dict[tuple, str] = {}


def _stat_key(path: str | Path) -> tuple[str, int, int]:
    if Path(path).is_dir():  # a Hugging Face model folder: its weight files' total size and latest mtime
        try:
            stats = [os.stat(f) for f in checkpoint_files(path)]
        except UserError as exc:
            raise OSError(str(exc)) from None
        return str(Path(path).resolve()), sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats)
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def sha256_once(path: str | Path, field: str) -> str:
    """file_sha256, computed once per process for a file that has not changed since (a
    conversion and a resume in one run read the same checkpoints), or taken from a surface
    file's record of it (remember_hashes)."""
    try:
        key = _stat_key(path)
    except OSError:
        return file_sha256(path, field)  # its one-line error
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path, field)
    return _HASHED[key]


def remember_hashes(record: str | None) -> None:
    """Take the SHA-256 of each file in a surface file's ff.A_FILE_HASHES record whose size and
    mtime_ns are still the recorded ones, so that a resume does not read its checkpoints (GBs)
    again to compare them; a file since changed, touched or moved is hashed anew."""
    for path, known in (json.loads(record) if record else {}).items():
        try:
            key = _stat_key(path)
        except OSError:
            continue  # gone: the spec names other files, or hashing it gives its one-line error
        if key[1:] == (known["size"], known["mtime_ns"]):
            _HASHED.setdefault(key, known["sha256"])


def hash_record(spec) -> str:
    """ff.A_FILE_HASHES of a new surface file: size, mtime_ns and SHA-256 of each file that
    run_identity hashes for this spec (taken from this process's hashes; not read again)."""
    record = {}
    for path, field in _hashed_files(spec):
        with contextlib.suppress(OSError):
            key = _stat_key(path)
            record[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": sha256_once(path, field)}
    return json.dumps(record, sort_keys=True)


def _hashed_files(spec) -> list[tuple[str | Path, str]]:
    """(path, spec field) of every file whose SHA-256 is part of the spec's identity."""
    m, d = spec.model, spec.directions
    files = [(m.checkpoint, "model.checkpoint")] if m.checkpoint else []
    if d.kind == "interpolate":
        files += [(p, f) for p, f in ((m.checkpoint2, "model.checkpoint2"), (m.checkpoint3, "model.checkpoint3")) if p]
    if d.kind == "file":
        files.append((d.file, "directions.file"))
    if d.kind == "pca":
        for k, pattern in enumerate([d.checkpoints, *d.also]):
            field = "directions.checkpoints" if k == 0 else f"directions.also[{k - 1}]"
            files += [(p, "directions.checkpoints") for p in checkpoint_paths(pattern, field)]
    return files


def _files_digest(patterns: list[str], field: str) -> str:
    """SHA-256 over the files each glob matches (names and contents), in trajectory order."""
    h = hashlib.sha256()
    for k, pattern in enumerate(patterns):
        for path in checkpoint_paths(pattern, field if k == 0 else f"directions.also[{k - 1}]"):
            h.update(path.name.encode())
            h.update(sha256_once(path, field).encode())
    return h.hexdigest()


def run_identity(spec, known: str | None = None) -> dict:
    """What a resume must match (identity), with the SHA-256 of every file the run reads.
    `known`: the ff.A_FILE_HASHES record of the surface file being resumed (remember_hashes)."""
    remember_hashes(known)
    m, d = spec.model, spec.directions
    sha1 = (sha256_once(m.checkpoint, "model.checkpoint") if m.checkpoint
            else f"fresh initialisation, seed {FRESH_INIT_SEED}")
    sha2 = sha256_once(m.checkpoint2, "model.checkpoint2") if (d.kind == "interpolate" and m.checkpoint2) else ""
    sha_dirs = sha256_once(d.file, "directions.file") if d.kind == "file" else ""
    if d.kind == "pca":
        sha_dirs = _files_digest([d.checkpoints, *d.also], "directions.checkpoints")
    ident = identity(spec, sha1, sha2, sha_dirs)
    # only when set: files made before these fields resume unchanged
    if d.kind == "interpolate" and m.checkpoint3:
        ident["model.checkpoint3 (sha256)"] = sha256_once(m.checkpoint3, "model.checkpoint3")
    if d.same_dir:
        ident["directions.same_dir"] = True
    if d.store != "file":
        ident["directions.store"] = d.store
    return ident


def identity_pins_directions(spec, stored_versions: str | None) -> bool:
    """Whether an identity that matches also fixes the directions, so that a resume need not
    rebuild them to compare digests: a direction file, checkpoints or a choice of Hessian
    eigenvectors are pinned by their hashes; random and interpolation directions are pinned
    when the centre is a checkpoint of a zoo model (a user's factory may change under the same
    name) and torch and losslandscape are the versions that made the file (the random stream)."""
    if spec.directions.kind in ("file", "hessian", "pca"):
        return True
    if not spec.model.checkpoint or ":" in spec.model.name or not stored_versions:
        return False
    have, now = json.loads(stored_versions), versions()
    return all(have.get(k) == now[k] for k in ("losslandscape", "torch"))


def directions_digest(spec) -> str:
    """The digest of the directions this spec makes (rebuilt on the CPU)."""
    return make_directions(spec, base_model(spec))[2][ff.A_DIGEST]


def make_conversion(c: Conversion) -> NewFile:
    """The contents of an original file converted (surfacefile/original.py planned it): the
    directions of the spec's direction file, the run's identity and the original's computed
    points (the rest NaN, to compute)."""
    spec = c.spec
    x, y, info = make_directions(spec, base_model(spec))
    ident = run_identity(spec)
    extra = {ff.A_ADOPTED_FROM: f"{c.path.name}, a surface file of the original loss-landscape code (Li et al.)",
             ff.A_ORIGINAL_DIR_FILE: c.dir_file or "", **info}
    counts = " and ".join(f"{split} {int(c.done[split].sum())}" for split in ff.SPLITS)
    line = (f"adopted {c.path}, a surface file of the original loss-landscape code made along "
            f"{spec.directions.file}: {counts} of {c.axes.size} points done, the rest to compute")
    return NewFile(c.path, c.axes, spec, ident, x, y, extra, c.values, c.done, line)
