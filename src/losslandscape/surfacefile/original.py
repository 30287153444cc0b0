"""Surface files of the original loss-landscape code (Li et al.), converted into ours.

The original code's surface file (read by fileformat.read_original) has no `format`
attribute; it holds `xcoordinates`, `ycoordinates` (2-D), `{train,test}_{loss,acc}` as
(len(x), len(y)) arrays whose flat order is that of `np.meshgrid(x, y)` (the same flat
order as our (ny, nx)), -1 where a point was not computed, and a string dataset
`dir_file` naming the direction file it was made with.

Its values only mean something together with those directions, so a file is adopted only
when the spec reads its directions from that file (`directions.kind = "file"`). Planning
(`plan_conversion`) checks that and reads the file, read-only; the run makes the new file's
contents (run/makedirections.make_conversion: the directions and the identity), which are
written all or nothing (write.NewFile.write: built beside the original, synced, renamed onto
it) by the path every run takes (run/work.py: plan, make, create, under the file's lock). A kill at any moment leaves either the untouched
original or the converted file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.numerics.grid import GridAxes
from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile import write as surface
from losslandscape.surfacefile.format import ORIGINAL_MISSING, SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversion:
    """An original surface file the spec may adopt: its grid and its flat values."""
    spec: object
    path: Path
    axes: GridAxes
    values: dict[str, np.ndarray]  # {name: flat float64}, -1 where not computed
    dir_file: str | None
    done: dict[str, np.ndarray]  # {split: flat bool}: the points the original computed


def plan_conversion(spec, path: Path) -> Conversion:
    """Check that the spec may adopt the original file at `path` and read it (read-only)."""
    with ff.open_h5(path, "r") as f:
        original = ff.read_original(f)
        _check_directions_source(spec, path, original.dir_file)
        axes = GridAxes.from_spec(spec.grid)
        surface.check_grid(f, path, axes)
    values = {}
    for name, v in original.values.items():
        if v.size != axes.size:
            raise UserError(f"output.surface: {path}: {name} has {v.size} values, the grid {axes.size}")
        values[name] = v.ravel()
    done = {split: _done(values, split, axes.size) for split in SPLITS}
    return Conversion(spec, path, axes, values, original.dir_file, done)


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
    from losslandscape.inputs.checkpoints import file_sha256  # noqa: PLC0415 (it imports torch)

    if file_sha256(found, "dir_file") != file_sha256(given, "directions.file"):
        raise UserError(
            f"directions.file: {d.file} is not the direction file {path} was made with: its dir_file "
            f"{dir_file!r} is {found}, whose SHA-256 differs; set directions.file = \"{found}\" to adopt it")


def _done(values: dict[str, np.ndarray], split: str, size: int) -> np.ndarray:
    """Flat bool: points whose loss and accuracy are both in the file (not -1). A split without
    both datasets was never computed. NaN is a computed value (a diverged point), so it is done."""
    loss, acc = values.get(ff.value_name(split, "loss")), values.get(ff.value_name(split, "acc"))
    if loss is None or acc is None:
        return np.zeros(size, dtype=bool)
    return (loss != ORIGINAL_MISSING) & (acc != ORIGINAL_MISSING)
