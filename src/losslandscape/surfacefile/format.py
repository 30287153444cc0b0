"""The surface file's format, in one torch-free place: every dataset, group and attribute
name, the one opener, the one atomic create, the reading of the `spec` attribute, and the
original loss-landscape code's format. The package around it: write.py (structure, the one
point writer, shards and merge), read.py (the general reader: render, the Python interface,
status, the Hessian maps, array tasks), original.py (converting the original code's files),
lock.py (one writer per file), room.py (disk room and failed writes). No module outside this
package opens an HDF5 file or names a dataset (tests/test_surfacefile_boundary.py checks it
and names the few run/ steps not moved behind it yet).

Layout: `xcoordinates` (nx,), `ycoordinates` (ny,) for 2-D; `{train,test}_{loss,acc}`
float64 (ny, nx) or (nx,), NaN where not computed, +inf kept for diverged losses;
`{train,test}_done` uint8, 1 only after that point's values are written; `point_seconds`
float64, the wall time of each point; `directions/x/<name>`, `directions/y/<name>`
float32; `max_eig`, `min_eig`, `eig_done` (the Hessian maps) and the group
`hessian_centre`; the group `trajectory` (a PCA surface's paths); attributes `format`,
`format_version`, `spec` (JSON), `identity` (JSON), `directions_sha256`, `versions`,
`import_dirs`, `created`, `splits`, `values`, `batchnorm_folding`, `hessian_*`.

The attribute `values` (JSON) names the values the run's loss defines: ["loss", "acc"], or
["loss"] for a loss where accuracy means nothing (a regression, a language model's own loss, a
user's loss that counts nothing correct); such a file has no `{train,test}_acc` datasets. A
file without the attribute (every file before it, the original code's) has both.

The original code's files have no `format` attribute and no done flags: -1 marks a
point not computed, their arrays are allocated (nx, ny) but filled in the flat order of
meshgrid(x, y), which is our (ny, nx) order, and a string dataset `dir_file` names the
direction file (groups `xdirection`/`ydirection`, datasets "0", "1", ...).

SLURM array tasks write shard files (`<surface>.shards/task_<k>.h5`, `format =
"losslandscape-shard"`) with the same value datasets plus `points`, their share.

Disk room and failed writes: room.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from losslandscape.surfacefile.room import check_room, failed_write, h5file, write_failed
from losslandscape.errors import UserError, readable_file

log = logging.getLogger(__name__)

FORMAT = "losslandscape-surface"
FORMAT_VERSION = 1
SHARD_FORMAT = "losslandscape-shard"
SPLITS = ("train", "test")
VALUES = ("loss", "acc")
VALUE_NAMES = tuple(f"{split}_{value}" for split in SPLITS for value in VALUES)
ORIGINAL_MISSING = -1.0  # the original code's mark for a point not computed
SUBMISSION = "submission.json"  # what `submit` sent to SLURM, beside the shards

X, Y = "xcoordinates", "ycoordinates"
POINT_SECONDS = "point_seconds"
DIRECTIONS = "directions"  # group: directions/x/<name>, directions/y/<name>
POINTS = "points"  # a shard's share (flat indices)
EIG_MAPS = ("max_eig", "min_eig")
EIG_DONE = "eig_done"
HESSIAN_CENTRE = "hessian_centre"  # group: the spectrum at the centre, with its numbers as attributes
CENTRE_TOP, CENTRE_GRID, CENTRE_DENSITY = "top_eigenvalues", "density_grid", "density"  # its datasets
TRAJECTORY = "trajectory"  # group: a PCA surface's paths (trajectory/also/<k> for more runs)
DIR_FILE = "dir_file"  # the original code's name of its direction file

# attributes
A_FORMAT, A_VERSION, A_SPEC, A_IDENTITY = "format", "format_version", "spec", "identity"
A_DIGEST, A_VERSIONS, A_IMPORT_DIRS, A_CREATED, A_SPLITS = (
    "directions_sha256", "versions", "import_dirs", "created", "splits")
A_SURFACE, A_TASK, A_TASKS = "surface", "task", "tasks"  # a shard's
A_VALUES = "values"  # JSON: the values the run's loss defines, ["loss", "acc"] or ["loss"]
A_AUTO_RANGE = "auto_range"
A_EXPLAINED = "explained_variance_ratio"  # a PCA surface's: PC1's and PC2's shares of the variance
A_DIRECTIONS_FROM = "directions_from"  # kind "file": the direction file read
A_FILE_HASHES = "file_sha256"  # JSON {resolved path: {size, mtime_ns, sha256}} of the files hashed for the identity
A_HESSIAN_EIGENVALUES, A_HESSIAN_WHICH, A_HESSIAN_SCALE = (  # kind "hessian": the directions' eigenvalues
    "hessian_eigenvalues", "hessian_which", "hessian_direction_scale")
A_ADOPTED_FROM, A_ORIGINAL_DIR_FILE = "adopted_from", "original_dir_file"  # a converted original file
PATH_DATASETS = ("x", "y", "error", "checkpoints")  # of a trajectory group; its attribute "pattern"
PATH_PATTERN, ALSO = "pattern", "also"
HESSIAN_ATTRS = ("hessian_split", "hessian_samples", "hessian_params", "hessian_tol")

# bytes a grid point takes in the file: float64 values per split (accuracy counted: the larger
# case), a uint8 done flag per split and the float64 point_seconds; the maps' two float64
# eigenvalues and a uint8 flag
POINT_NBYTES = 8 * len(VALUES) * len(SPLITS) + len(SPLITS) + 8
MAPS_POINT_NBYTES = 8 * len(EIG_MAPS) + 1
CENTRE_ROOM = 256 << 10  # bytes reserved before the maps or the centre's spectrum are added to a file


def value_name(split: str, value: str) -> str:
    return f"{split}_{value}"


def done_name(split: str) -> str:
    return f"{split}_done"


def parse_values(text: Any) -> tuple[str, ...]:
    """The `values` attribute (JSON text, or None where a file or a run's notes lack it) as a
    tuple in VALUES order: ("loss", "acc") without it. UserError where it names no loss or
    something else than loss and acc."""
    if text is None:
        return VALUES
    try:
        given = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (TypeError, ValueError):
        given = None
    if not isinstance(given, list) or "loss" not in given or any(v not in VALUES for v in given):
        raise UserError(f"attribute {A_VALUES}: {text!r} is not valid; expected {json.dumps(list(VALUES))} "
                        'or ["loss"]')
    return tuple(v for v in VALUES if v in given)


def file_values(f: "h5py.File") -> tuple[str, ...]:
    """The values a surface or shard file holds per split: ("loss", "acc"), or ("loss",) for a
    run whose loss defines no accuracy (its attribute `values`)."""
    return parse_values(f.attrs.get(A_VALUES))


def value_names(values: tuple[str, ...] = VALUES) -> list[str]:
    """The value datasets of a file holding `values`: train_loss, train_acc, test_loss, ..."""
    return [value_name(split, value) for split in SPLITS for value in values]


def library_versions() -> dict[str, str]:
    """The versions of h5py and of the HDF5 library it uses (part of a file's `versions`)."""
    import h5py

    return {"h5py": h5py.__version__, "hdf5": ".".join(map(str, h5py.version.hdf5_version_tuple))}


def parallel_hdf5() -> bool:
    """Whether this h5py was built against parallel HDF5 (files can be opened through MPI-IO)."""
    import h5py

    return bool(h5py.get_config().mpi)


def open_h5(path: str | Path, mode: str, comm=None, field: str = "output.surface"):
    """h5py.File with file locking off (readers of a file being written must not block),
    through the mpio driver when a communicator is given (collective: every rank calls it).
    A missing, foreign or damaged file is one UserError naming `field` (the option that gave
    the path: output.surface, shard, or the verb's SURFACE argument)."""
    kwargs: dict[str, Any] = {"locking": False}
    if comm is not None:
        kwargs.update(driver="mpio", comm=comm)
    elif mode != "r":
        kwargs.update(driver=_unbuffered_driver())
    if mode in ("r", "r+"):
        readable_file(path, field, "a surface file (HDF5)")
    elif Path(path).is_dir():
        raise UserError(f"{field}: {str(path)!r} is a folder; expected a surface file (HDF5)")
    try:
        return h5file(path, mode, **kwargs)  # left open after a write that failed (room.py)
    except OSError as exc:
        raise UserError(f"{field}: {path} is not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def _unbuffered_driver() -> str:
    """The POSIX driver without HDF5's sieve buffer, for every file opened to write by one process:
    a write the file system refuses then fails at once, in the call that writes, instead of when a
    dataset is closed, where h5py can only print it and HDF5 is left unable to close the file
    (measured: a merge on a full disk "succeeded", then segfaulted). MPI-IO has no sieve buffer."""
    import h5py

    if UNBUFFERED not in h5py.registered_drivers():
        def set_fapl(plist):
            plist.set_fapl_sec2()
            plist.set_sieve_buf_size(0)
        h5py.register_driver(UNBUFFERED, set_fapl)
    return UNBUFFERED


UNBUFFERED = "losslandscape-sec2-unbuffered"


@contextmanager
def creating(path: str | Path, comm=None, converting: Path | None = None, durable: bool = False) -> Iterator:
    """An open, empty HDF5 file under a temporary name beside `path`, renamed onto `path` when
    the block ends without an error: a crash never leaves a half-made file under the real name.
    With a communicator every rank enters (collective) and nobody leaves before the rename.
    `converting`: the file being replaced (its permissions are kept; a failure to write names
    it); `durable`: fsync the file and the folder, so the rename survives a power loss.
    A write that fails (no room, read-only) ends the process with one line (`write_failed`),
    the temporary file removed."""
    path = Path(path)
    tmp = temporary_name(path, converting is not None)
    lead = comm is None or comm.rank == 0
    try:
        with _closed(_new_file(tmp, comm, converting), path, remove=[tmp] if lead else []) as f:
            yield f
        if lead:
            if converting is not None:
                shutil.copymode(converting, tmp)
            if durable:
                _fsync(tmp)
            os.replace(tmp, path)
            if durable:
                _fsync(path.parent)
    except BaseException:
        if comm is None:
            tmp.unlink(missing_ok=True)  # whatever was there before is untouched; no half-made file
        raise
    if comm is not None:
        comm.barrier()  # nobody opens the file before it has its real name


def temporary_name(path: Path, converting: bool = False) -> Path:
    """Where `creating` builds `path` before renaming it."""
    return path.with_name(f".{path.name}.{'converting' if converting else 'creating'}")


@contextmanager
def writing(path: str | Path, field: str = "output.surface", room: int = 0, comm=None) -> Iterator:
    """`path` opened read-write for a block that adds to it (attributes, datasets) or writes
    points, flushed at its end. `room`: the bytes what the block adds may take, reserved first
    (check_room), so a full disk refuses before HDF5 writes metadata it cannot finish. A write
    that fails anyway ends the process with one line (`write_failed`), the file left unclosed."""
    if room:
        check_room(path, room, field, what="the new part of")
    with _closed(open_h5(path, "r+", comm, field), path, field) as f:
        yield f


@contextmanager
def _closed(f, path: str | Path, field: str = "output.surface", remove: list[Path] = ()) -> Iterator:
    """The open file `f` for a block, flushed and closed at its end. A write the file system
    refuses, in the block or at the close, ends the process with one line (`write_failed`,
    removing `remove`); another error closes the file and propagates."""
    try:
        yield f
        f.flush()
    except BaseException as exc:
        if failed_write(exc):
            write_failed(path, exc, field, remove)
        f.close()
        raise
    try:
        f.close()
    except Exception as exc:
        if failed_write(exc):
            write_failed(path, exc, field, remove)
        raise


def new_file_nbytes(new) -> int:
    """About how many bytes a new or converted surface file (surface.NewFile) takes: its datasets
    (accuracy counted: the larger case), plus HDF5's headers and the attributes (measured: under
    1 KiB a dataset; a resnet20 file of 2.11 MiB is estimated 2.4 MiB)."""
    points = new.axes.size * POINT_NBYTES
    tensors = [t for d in (new.x, new.y or {}) for t in d.values()]
    directions = sum(t.numel() * 4 for t in tensors)  # stored as float32
    axes = 8 * (len(new.axes.x) + (len(new.axes.y) if new.axes.y is not None else 0))
    extra = sum(np.asarray(v).nbytes for k, v in new.info.items() if str(k).startswith("/"))
    text = sum(len(str(v)) for v in new.info.values()) + len(new.spec.to_json())
    return points + directions + axes + extra + text + 2048 * (len(tensors) + 16) + 65536


def check_new_file(new) -> None:
    """Refuse (one line: the path, the cause, the room needed) a new or converted surface file
    (surface.NewFile) that cannot be written: no room, a quota, a read-only or forbidden folder."""
    check_room(new.path, new_file_nbytes(new), what="the new file" if new.done is None else "the converted file")


def _new_file(tmp: Path, comm, converting: Path | None):
    if converting is None:
        return open_h5(tmp, "w", comm)
    try:
        return h5file(tmp, "w", locking=False, driver=_unbuffered_driver())
    except OSError as exc:
        raise UserError(f"output.surface: cannot write {tmp} to convert {converting} "
                        f"({str(exc).splitlines()[0]})") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def path_entries(k: int | None, x, y, error, checkpoints: list[str], pattern: str) -> dict[str, Any]:
    """A training path on a PCA plane as surface.create's extra entries ("/group/name" datasets,
    "/group@name" attributes): the run's own (k None) in `trajectory`, more in `trajectory/also/<k>`."""
    group = f"/{TRAJECTORY}" if k is None else f"/{TRAJECTORY}/{ALSO}/{k}"
    out = {f"{group}/{name}": v for name, v in zip(PATH_DATASETS, (x, y, error, checkpoints))}
    out[f"{group}@{PATH_PATTERN}"] = pattern
    return out


def read_spec(f: "h5py.File") -> dict:
    """The `spec` attribute (JSON) of a surface or shard file, as a table."""
    return json.loads(f.attrs[A_SPEC])


def spec_table(value: Any) -> dict | None:
    """A `spec` attribute already read (JSON text, or a table), as a table; None where it is
    missing or not JSON (a reader that draws what it can)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def import_dirs(f: "h5py.File") -> list[str]:
    """The folders the file's model and data factories were found in."""
    return json.loads(f.attrs.get(A_IMPORT_DIRS, "[]"))


def axes_arrays(f: "h5py.File") -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y or None) coordinates of a surface or shard file."""
    return np.asarray(f[X]), (np.asarray(f[Y]) if Y in f else None)


@dataclass
class Original:
    """What a surface file of the original code holds beside its axes: the value datasets it
    has ({name: float64 as stored, (nx, ny) or (nx,), -1 where not computed}) and the direction
    file it names."""
    values: dict[str, np.ndarray]
    dir_file: str | None


def read_original(f: "h5py.File") -> Original:
    """The original code's surface file, as stored: the one reader of that format (conversion
    and rendering)."""
    import h5py

    values = {name: np.array(f[name][()], dtype=np.float64) for name in VALUE_NAMES
              if isinstance(f.get(name), h5py.Dataset)}
    return Original(values, original_dir_file(f))


def original_dir_file(f: "h5py.File") -> str | None:
    """The `dir_file` string dataset of an original surface file, if it has one."""
    import h5py

    obj = f.get(DIR_FILE)
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "OSU":
        return None
    value = obj[()]
    if isinstance(value, np.ndarray):  # a 1-element array rather than a scalar
        value = value.ravel()[0] if value.size else b""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


def is_ours(f: "h5py.File") -> bool:
    return f.attrs.get(A_FORMAT) == FORMAT


def is_original(f: "h5py.File") -> bool:
    """A surface file of Li et al.'s loss-landscape code: no format attribute, -1 for missing."""
    return not is_ours(f) and X in f and A_FORMAT not in f.attrs


def done_masks(f: "h5py.File") -> dict[str, np.ndarray]:
    """{split: flat bool array}: points whose values are in the file."""
    return {split: np.asarray(f[done_name(split)]).ravel() == 1 for split in SPLITS}


def maps_done(f: "h5py.File") -> np.ndarray:
    """Flat bool: points whose Hessian maps are in the file (eig_done)."""
    return np.asarray(f[EIG_DONE]).ravel() == 1


def requested_splits(f: "h5py.File") -> list[str]:
    """Every split any run or submission of this surface has asked for, in SPLITS order."""
    if A_SPLITS in f.attrs:
        asked = set(json.loads(f.attrs[A_SPLITS]))
    else:
        asked = set(read_spec(f)["data"]["splits"])
    return [s for s in SPLITS if s in asked]


def check_shard(f: "h5py.File", path: Path) -> None:
    if f.attrs.get(A_FORMAT) != SHARD_FORMAT or POINTS not in f:
        raise UserError(f"shard: {path} is not a shard file of losslandscape")


def shard_dir(surface_path: Path) -> Path:
    return Path(surface_path).with_name(Path(surface_path).name + ".shards")


SHARD_NAME = re.compile(r"task_(0|[1-9][0-9]*)\.h5")
_WARNED: set[Path] = set()  # the names warned about already


def shard_files(surface_path: Path) -> list[Path]:
    """The shard files beside a surface, by task: `task_<k>.h5` (k written as `submit` writes
    it). Any other name there (a backup `task_0.bak.h5`, `task_abc.h5`) is no shard: it is
    left alone, with a warning (once a process), and never read."""
    d = shard_dir(surface_path)
    if not d.is_dir():
        return []
    shards = {}
    for path in d.glob("task_*.h5"):
        k = SHARD_NAME.fullmatch(path.name)
        if k is None or not path.is_file():
            if path.absolute() not in _WARNED:
                _WARNED.add(path.absolute())
                shown = str(path) if str(path).isprintable() else repr(str(path))
                log.warning("%s: not a shard file (a shard is a file task_<k>.h5, k = 0, 1, ...): ignored", shown)
            continue
        shards[int(k.group(1))] = path
    return [shards[k] for k in sorted(shards)]


# what `submit` records (run/slurm.py); a field of another type is refused with one line
SUBMISSION_FIELDS = {"array_job": "job", "merge_job": "job", "tasks": int, "ranks_per_task": int,
                     "gpus_per_task": int, "points": int, "points_per_task": [int], "splits": [str],
                     "submitted": str}


def read_submission(surface_path: Path) -> dict:
    """The record of the last `submit` of this surface ({} when there is none); one line naming
    the file and the field when it is not the JSON object `submit` writes."""
    path = shard_dir(surface_path) / SUBMISSION
    try:
        record = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise UserError(f"{path}: not the JSON that `submit` writes; delete it if no job of that submission "
                        "still runs") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a JSON {type(record).__name__}; expected the object that `submit` writes")
    for key, kind in SUBMISSION_FIELDS.items():
        if key in record and record[key] is not None and not _of_kind(record[key], kind):
            expected = ("a SLURM job id (digits)" if kind == "job" else "a whole number >= 0" if kind is int
                        else "a string" if kind is str else f"a list of {'whole numbers' if kind == [int] else 'strings'}")
            raise UserError(f"{path}: {key}: {str(record[key])[:80]!r} is not valid; expected {expected}")
    return record


def _of_kind(value: Any, kind: Any) -> bool:
    if kind == "job":
        return isinstance(value, str) and value.isascii() and value.isdigit()
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if isinstance(kind, list):
        return isinstance(value, list) and all(_of_kind(v, kind[0]) for v in value)
    return isinstance(value, kind)
