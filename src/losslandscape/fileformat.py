"""The surface file's format, in one torch-free place: names, layout, attributes, and the
original loss-landscape code's conventions. Used by the writer (surface.py), the reader
(render/surfacefile.py, the Python interface's open_surface), merge and status.

Layout: `xcoordinates` (nx,), `ycoordinates` (ny,) for 2-D; `{train,test}_{loss,acc}`
float64 (ny, nx) or (nx,), NaN where not computed, +inf kept for diverged losses;
`{train,test}_done` uint8, 1 only after that point's values are written; `point_seconds`
float64, the wall time of each point; `directions/x/<name>`, `directions/y/<name>`
float32; attributes `format`, `format_version`, `spec` (JSON), `identity` (JSON),
`directions_sha256`, `versions`, `created`, `splits`, `batchnorm_folding`.

The original code's files have no `format` attribute and no done flags: -1 marks a
point not computed, their arrays are allocated (nx, ny) but filled in the flat order of
meshgrid(x, y), which is our (ny, nx) order, and a string dataset `dir_file` names the
direction file (groups `xdirection`/`ydirection`, datasets "0", "1", ...).

SLURM array tasks write shard files (`<surface>.shards/task_<k>.h5`, `format =
"losslandscape-shard"`) with the same value datasets plus `points`, their share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

FORMAT = "losslandscape-surface"
FORMAT_VERSION = 1
SHARD_FORMAT = "losslandscape-shard"
SPLITS = ("train", "test")
VALUES = ("loss", "acc")
VALUE_NAMES = tuple(f"{split}_{value}" for split in SPLITS for value in VALUES)
ORIGINAL_MISSING = -1.0  # the original code's mark for a point not computed
SUBMISSION = "submission.json"  # what `submit` sent to SLURM, beside the shards


def value_name(split: str, value: str) -> str:
    return f"{split}_{value}"


def open_h5(path: str | Path, mode: str, comm=None) :
    """h5py.File with file locking off (readers of a file being written must not block),
    through the mpio driver when a communicator is given (collective: every rank calls it)."""
    import h5py

    kwargs: dict[str, Any] = {"locking": False}
    if comm is not None:
        kwargs.update(driver="mpio", comm=comm)
    if Path(path).is_dir():
        raise UserError(f"output.surface: {str(path)!r} is a folder; expected a surface file (HDF5)")
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise UserError(f"output.surface: no such file {str(path)!r}") from None
    except OSError as exc:
        raise UserError(f"output.surface: {path} is not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def is_ours(f: "h5py.File") -> bool:
    return f.attrs.get("format") == FORMAT


def is_original(f: "h5py.File") -> bool:
    """A surface file of Li et al.'s loss-landscape code: no format attribute, -1 for missing."""
    return not is_ours(f) and "xcoordinates" in f and "format" not in f.attrs


def done_masks(f: "h5py.File") -> dict[str, np.ndarray]:
    """{split: flat bool array}: points whose values are in the file."""
    return {split: np.asarray(f[f"{split}_done"]).ravel() == 1 for split in SPLITS}


def requested_splits(f: "h5py.File") -> list[str]:
    """Every split any run or submission of this surface has asked for, in SPLITS order."""
    if "splits" in f.attrs:
        asked = set(json.loads(f.attrs["splits"]))
    else:
        asked = set(json.loads(f.attrs["spec"])["data"]["splits"])
    return [s for s in SPLITS if s in asked]


def check_shard(f: "h5py.File", path: Path) -> None:
    if f.attrs.get("format") != SHARD_FORMAT or "points" not in f:
        raise UserError(f"shard: {path} is not a shard file of losslandscape")


def shard_dir(surface_path: Path) -> Path:
    return Path(surface_path).with_name(Path(surface_path).name + ".shards")


def shard_files(surface_path: Path) -> list[Path]:
    d = shard_dir(surface_path)
    return sorted(d.glob("task_*.h5"), key=lambda p: int(p.stem.split("_")[1])) if d.is_dir() else []


def read_submission(surface_path: Path) -> dict:
    """The record of the last `submit` of this surface ({} when there is none)."""
    try:
        return json.loads((shard_dir(surface_path) / SUBMISSION).read_text())
    except (OSError, ValueError):
        return {}
