"""Surface files of the original loss-landscape code (Li et al.), converted into ours.

The original code's surface file has no `format` attribute; it holds
`xcoordinates`, `ycoordinates` (2-D), `{train,test}_{loss,acc}` as
(len(x), len(y)) arrays whose flat order is that of `np.meshgrid(x, y)` (the
same flat order as our (ny, nx)), -1 where a point was not computed, and a
string dataset `dir_file` naming the direction file it was made with.

Its values only mean something together with those directions, so a file is
adopted only when the spec reads its directions from that file
(`directions.kind = "file"`), and the conversion is all or nothing: the new
file is built completely beside the original, synced, and renamed onto it.
A kill at any moment leaves either the untouched original or the converted file.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from . import directions as dirs
from . import surface
from .checkpoints import file_sha256
from .errors import UserError
from .grid import GridAxes
from .fileformat import ORIGINAL_MISSING, SPLITS

log = logging.getLogger(__name__)

MISSING = ORIGINAL_MISSING


def adopt_if_original(spec) -> bool:
    """Convert `spec.output.surface` into our format if it is an original loss-landscape
    surface file (True); False, touching and checking nothing, for a missing file or one of ours.

    Refuses (UserError, one line, file byte-identical: it is only opened read-only) unless the
    spec reads its directions from the direction file the surface was made with, and its grid
    is the file's.
    """
    path = Path(spec.output.surface)
    if not path.exists():
        return False
    with surface.open_h5(path, "r") as f:
        if not surface.is_original(f):
            return False
        dir_file = _dir_file(f)
        _check_directions_source(spec, path, dir_file)
        axes = GridAxes.from_spec(spec.grid)
        surface.check_grid(f, path, axes)
        values = _read_values(f, path, axes)

    # imported here: job imports this module
    from .job import base_model, make_directions, run_identity

    x, y, info = make_directions(spec, base_model(spec))
    ident = run_identity(spec)
    done = {split: _done(values, split, axes.size) for split in SPLITS}
    extra = {"adopted_from": f"{path.name}, a surface file of the original loss-landscape code (Li et al.)",
             "original_dir_file": dir_file or "", **info}
    _write_converted(path, axes, spec, ident, x, y, extra, values, done)
    counts = " and ".join(f"{split} {int(done[split].sum())}" for split in SPLITS)
    log.info("adopted %s, a surface file of the original loss-landscape code made along %s: %s of %d points "
             "done, the rest to compute", path, spec.directions.file, counts, axes.size)
    return True


def _dir_file(f: h5py.File) -> str | None:
    """The `dir_file` string dataset of an original surface file, if it has one."""
    obj = f.get("dir_file")
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "OSU":
        return None
    value = obj[()]
    if isinstance(value, np.ndarray):  # a 1-element array rather than a scalar
        value = value.ravel()[0] if value.size else b""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


def _existing_dir_file(path: Path, dir_file: str) -> Path | None:
    """Where `dir_file` is: as given (relative to the working folder the original ran in), relative
    to the surface file's folder, or by its name beside the surface (the original code put the
    surface file beside its direction file, so the pair is usually moved together)."""
    stored = Path(dir_file)
    for candidate in (stored, path.parent / stored, path.parent / stored.name):
        if candidate.is_file():
            return candidate
    return None


def _check_directions_source(spec, path: Path, dir_file: str | None) -> None:
    """The spec must read its directions from the file the surface was made with."""
    d = spec.directions
    found = _existing_dir_file(path, dir_file) if dir_file else None
    if d.kind != "file" or not d.file:
        if dir_file:
            suggest = str(found) if found is not None else dir_file
            raise UserError(
                f"directions.kind: {path} is a surface file of the original loss-landscape code, made along the "
                f"directions in {dir_file!r} (its dir_file); set directions.kind = \"file\" and "
                f"directions.file = \"{suggest}\" to adopt it")
        raise UserError(
            f"directions.kind: {path} is a surface file of the original loss-landscape code and names no "
            "direction file (it has no dir_file); set directions.kind = \"file\" and directions.file to the "
            "direction file it was made with to adopt it")
    given = Path(d.file)
    if not given.is_file():
        raise UserError(f"directions.file: no such file {d.file!r}")
    if os.path.samefile(given, path):
        # the conversion replaces the file, and with it the directions it is pinned to
        raise UserError(f"directions.file: {d.file} is the surface file itself; copy it (e.g. to dirs.h5) and set "
                        "directions.file to the copy to adopt it")
    if found is None:
        if dir_file:
            log.warning("%s names the direction file %r, which is not there; trusting directions.file = %s",
                        path, dir_file, d.file)
        return
    if os.path.samefile(found, given):
        return
    if file_sha256(found, "dir_file") != file_sha256(given, "directions.file"):
        raise UserError(
            f"directions.file: {d.file} is not the direction file {path} was made with: its dir_file "
            f"{dir_file!r} is {found}, whose SHA-256 differs; set directions.file = \"{found}\" to adopt it")


def _read_values(f: h5py.File, path: Path, axes: GridAxes) -> dict[str, np.ndarray]:
    """{name: flat float64 values} of the value datasets the file has (flat order = ours)."""
    values = {}
    for split in SPLITS:
        for value in surface.VALUES:
            name = surface.value_name(split, value)
            if name not in f:
                continue
            v = np.asarray(f[name], dtype=np.float64).ravel()
            if v.size != axes.size:
                raise UserError(f"output.surface: {path}: {name} has {v.size} values, the grid {axes.size}")
            values[name] = v
    return values


def _done(values: dict[str, np.ndarray], split: str, size: int) -> np.ndarray:
    """Flat bool: points whose loss and accuracy are both in the file (not -1). A split without
    both datasets was never computed. NaN is a computed value (a diverged point), so it is done."""
    loss, acc = values.get(surface.value_name(split, "loss")), values.get(surface.value_name(split, "acc"))
    if loss is None or acc is None:
        return np.zeros(size, dtype=bool)
    return (loss != MISSING) & (acc != MISSING)


def _write_converted(path: Path, axes: GridAxes, spec, ident: dict, x, y, extra: dict,
                     values: dict[str, np.ndarray], done: dict[str, np.ndarray]) -> None:
    """Build the converted file completely under a temporary name beside `path`, sync it, then
    rename it onto `path` (atomic): `path` is the original until the rename, the result after.
    A temporary file left by a killed conversion is overwritten."""
    tmp = path.with_name(f".{path.name}.converting")
    try:
        try:
            f = h5py.File(tmp, "w", locking=False)
        except OSError as exc:
            raise UserError(f"output.surface: cannot write {tmp} to convert {path} "
                            f"({str(exc).splitlines()[0]})") from None
        with f:
            surface.create(f, axes, spec, ident, x, y, dirs.digest(x, y), extra)
            for split in SPLITS:
                for value in surface.VALUES:
                    name = surface.value_name(split, value)
                    if name in values:
                        # values kept exactly where done; NaN (our "not computed") elsewhere
                        f[name][...] = np.where(done[split], values[name], np.nan).reshape(axes.shape)
                f[f"{split}_done"][...] = done[split].astype(np.uint8).reshape(axes.shape)
        shutil.copymode(path, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the original is untouched; leave no half-made file behind
        raise
    _fsync(path.parent)  # the rename itself survives a power loss


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
