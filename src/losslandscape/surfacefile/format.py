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
`import_dirs`, `created`, `splits`, `values`, `batchnorm_folding`, `hessian_*`, `labels` (JSON:
what pictures call the models of a run of the Python interface, whose spec names the tool's copies).

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

A received file is untrusted (docs/file-format.md, "Received files"): every reader checks it once,
through `check_file`, before it reads a value: the datasets' kinds and declared shapes against the
grid and the caps below, the attributes' sizes and JSON, so that a crafted file is one line naming
the file and the dataset or attribute, never a traceback or an allocation it declared.
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

from losslandscape.numerics.grid import MAX_POINTS
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
# directions.store = "seed": the group's attribute `store` is "seed", its other attributes say how
# they are drawn (SeedRecord), `names` the tensors and `sha256` (tensors, axes, 32) their digests
A_STORE, SEED_NAMES, SEED_SHA = "store", "names", "sha256"
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
# JSON {model field: text}: what pictures call the models where the spec's names are the tool's own (write.model_labels)
A_LABELS = "labels"
PYTHON_NAME = "python:"  # the Python interface's model names, "python:<module>.<class>" (frontends/api.py)
PATH_DATASETS = ("x", "y", "error", "checkpoints")  # of a trajectory group; its attribute "pattern"
PATH_PATTERN, ALSO = "pattern", "also"
HESSIAN_ATTRS = ("hessian_split", "hessian_samples", "hessian_params", "hessian_tol")

# bytes a grid point takes in the file: float64 values per split (accuracy counted: the larger
# case), a uint8 done flag per split and the float64 point_seconds; the maps' two float64
# eigenvalues and a uint8 flag
POINT_NBYTES = 8 * len(VALUES) * len(SPLITS) + len(SPLITS) + 8
MAPS_POINT_NBYTES = 8 * len(EIG_MAPS) + 1
CENTRE_ROOM = 256 << 10  # bytes reserved before the maps or the centre's spectrum are added to a file

# What a reader accepts of a received file (docs/file-format.md, "Received files"): a file declaring
# more is refused before anything is allocated. A grid of MAX_GRID_POINTS takes 80 MB a float64 array;
# it is the largest grid a spec may ask for, so the tool never writes a file it then refuses to read.
MAX_GRID_POINTS = MAX_POINTS  # points of a grid: nx for a curve, nx * ny for a surface
MAX_ATTRIBUTE_BYTES = 1 << 20  # an attribute (spec, identity, splits, a note): 1 MiB
MAX_SERIES = 1_000_000  # values of the training paths (all runs together) and of the centre's spectrum
MAX_SHOWN = 200  # characters of a file's text shown in a title, a page or an error line
NUMBERS, FLAGS, INTEGERS, TEXT = "iuf", "biuf", "iu", "SOU"  # numpy dtype kinds a dataset may have


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
    # sizes from the weights of directions drawn when read (numerics.directions.SeededDirection), and
    # where those are read from a checkpoint when asked for (inputs/checkpoints.ModelRows), from its header
    sizes = [n for d in (new.x, new.y or {}) for n in _sizes(getattr(d, "weights", d))]
    directions = sum(n * 4 for n in sizes)  # stored as float32
    if (new.info or {}).get(f"/{DIRECTIONS}@{A_STORE}") == "seed":  # a name and 32 bytes an axis a tensor
        directions = sum(len(k) + 64 for k in new.x)
    axes = 8 * (len(new.axes.x) + (len(new.axes.y) if new.axes.y is not None else 0))
    extra = sum(np.asarray(v).nbytes for k, v in new.info.items() if str(k).startswith("/"))
    text = sum(len(str(v)) for v in new.info.values()) + len(new.spec.to_json())
    return points + directions + axes + extra + text + 2048 * (len(sizes) + 16) + 65536


def _sizes(tensors) -> list[int]:
    """The number of values of each tensor of a {name: tensor} mapping, without reading any
    where it says their shapes (`shapes`)."""
    shapes = getattr(tensors, "shapes", None)
    if shapes is not None:
        return [int(np.prod(s, dtype=np.int64)) for s in shapes.values()]
    return [t.numel() for t in tensors.values()]


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
                named = str(path) if str(path).isprintable() else repr(str(path))
                log.warning("%s: not a shard file (a shard is a file task_<k>.h5, k = 0, 1, ...): ignored", named)
            continue
        shards[int(k.group(1))] = path
    return [shards[k] for k in sorted(shards)]


# what `submit` records (run/slurm.py); a field of another type is refused with one line
SUBMISSION_FIELDS = {"array_job": "job", "merge_job": "job", "tasks": int, "ranks_per_task": int,
                     "ranks_per_model": int, "gpus_per_task": int, "points": int, "points_per_task": [int], "splits": [str],
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


# --- a received file, checked once before it is read ------------------------------------------

def shown(text: Any, limit: int = MAX_SHOWN) -> str:
    """`text` as a title, a page or an error line shows it: at most `limit` characters, a longer
    text cut in the middle with "..." (so that a path keeps its file name)."""
    text = str(text)
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


@dataclass(frozen=True)
class Layout:
    """What `check_file` found a file to be: kind "surface", "shard" or "original" (the original
    code's), the grid's shape ((nx,) or (ny, nx)), the values it holds per split (("loss", "acc") or
    ("loss",)) and its attributes as read (each checked: readable, within MAX_ATTRIBUTE_BYTES)."""
    kind: str
    shape: tuple[int, ...]
    values: tuple[str, ...]
    attrs: dict[str, Any]

    @property
    def original(self) -> bool:
        return self.kind == "original"

    @property
    def points(self) -> int:
        return int(np.prod(self.shape))


# JSON attributes and the type each must parse to (a file of ours, or a shard)
JSON_ATTRIBUTES = {A_SPEC: dict, A_IDENTITY: dict, A_SPLITS: list, A_IMPORT_DIRS: list, A_FILE_HASHES: dict,
                   A_LABELS: dict}
TEXT_ATTRIBUTES = (A_DIGEST, A_SURFACE)  # compared or shown as text


def check_file(f: "h5py.File", path: str | Path, who: str = "", want: str = "any", complete: bool = False,
               hint: str = "", directions: bool = False) -> Layout:
    """Check an open file before anything is read from it, and say what it is (Layout).

    `want`: "any" (ours or the original code's: render, summary, open_surface), "surface" (ours:
    status, merge, hessian) or "shard". `complete`: every dataset a run writes must be there (the
    done flags, point_seconds, the values, a shard's points), as status and merge read them; else
    only what is there is checked. Every dataset that a reader reads must be a dataset of numbers
    (text for a path's checkpoint names) whose declared shape fits the grid, and the grid at most
    MAX_GRID_POINTS; every attribute readable and at most MAX_ATTRIBUTE_BYTES, the JSON ones of the
    type expected. Anything else is one UserError naming `who` (the verb), the file and the dataset
    or attribute; `hint` is added to the line that refuses a file of another kind. `directions`:
    the directions are read too (the Hessian maps): each a float dataset stored whole in the file
    (a direction is as large as the model, so the file's size is its only bound)."""
    import h5py

    where = f"{who}: {path}" if who else str(path)
    attrs = read_attributes(f, where)
    fmt = attrs.get(A_FORMAT)
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    ours, shard = (isinstance(fmt, str) and fmt == name for name in (FORMAT, SHARD_FORMAT))
    if want == "shard":
        if not shard or not isinstance(f.get(POINTS, getlink=True), h5py.HardLink):
            raise UserError(f"{who or 'shard'}: {path} is not a shard file of losslandscape")
        kind = "shard"
    elif want == "surface":
        if not ours:
            raise UserError(f"{where} is not a losslandscape surface file{hint}")
        kind = "surface"
    else:
        if fmt is not None and not ours:
            raise UserError(f"{where}: attribute format is {shown(repr(fmt))}, expected {FORMAT!r}")
        kind = "surface" if ours else "original"
    if not isinstance(f.get(X, getlink=True), h5py.HardLink):
        raise UserError(f"{where} has no xcoordinates dataset, expected a loss-landscape surface file")
    values = VALUES if kind == "original" else _json_attributes(attrs, where, kind, complete)
    for name in TEXT_ATTRIBUTES:
        if kind != "original" and name in attrs and not isinstance(attrs[name], (str, bytes)):
            raise UserError(f"{where}: attribute {name} is {shown(repr(attrs[name]))}; expected text")
    shape = _grid(f, where)
    if kind == "original":
        nx = shape[-1]
        also = [(nx, shape[0])] if len(shape) == 2 else []
        for name in VALUE_NAMES:
            _numbers(f, name, where, [shape, *also])
        _dir_file(f, where)
        return Layout(kind, shape, values, attrs)
    held = value_names(values)
    for name in VALUE_NAMES:
        _numbers(f, name, where, [shape], required=complete and name in held)
    for split in SPLITS:
        _numbers(f, done_name(split), where, [shape], required=complete, kinds=FLAGS)
    _numbers(f, POINT_SECONDS, where, [shape], required=complete)
    for name in EIG_MAPS:
        _numbers(f, name, where, [shape])
    _numbers(f, EIG_DONE, where, [shape], kinds=FLAGS)
    if kind == "shard":
        _shard_points(f, where, int(np.prod(shape)))
        if not isinstance(attrs.get(A_SURFACE), str):
            raise UserError(f"{where}: attribute {A_SURFACE} is {shown(repr(attrs.get(A_SURFACE)))}; expected "
                            "the path of its surface file")
    _centre(f, where)
    _paths(f, where)
    if directions:
        _directions(f, where)
    return Layout(kind, shape, values, attrs)


def read_attributes(obj, where: str) -> dict[str, Any]:
    """The attributes of a file or group, each checked before and after it is read: at most
    MAX_ATTRIBUTE_BYTES, of a type HDF5 converts (text, numbers)."""
    out: dict[str, Any] = {}
    for name in obj.attrs:
        label = f"{where}: attribute {shown(name)}"
        try:
            declared = obj.attrs.get_id(name).get_storage_size()
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{label} cannot be read ({_first_line(exc)})") from None
        if declared > MAX_ATTRIBUTE_BYTES:
            raise UserError(f"{label} takes {declared:,} bytes; expected at most {MAX_ATTRIBUTE_BYTES:,}")
        try:
            value = obj.attrs[name]
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{label} cannot be read ({_first_line(exc)}); expected text or numbers") from None
        if _text_size(value) > MAX_ATTRIBUTE_BYTES:
            raise UserError(f"{label} holds {_text_size(value):,} characters; expected at most "
                            f"{MAX_ATTRIBUTE_BYTES:,}")
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biufSOU":
            raise UserError(f"{label} has dtype {shown(value.dtype)}; expected text or numbers")
        if isinstance(value, np.void):
            raise UserError(f"{label} has dtype {shown(value.dtype)}; expected text or numbers")
        out[str(name)] = value
    return out


def _text_size(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in value.ravel().tolist())
    return 0


def _first_line(exc: BaseException) -> str:
    return shown((str(exc).splitlines() or [type(exc).__name__])[0])


def _json_attributes(attrs: dict[str, Any], where: str, kind: str, complete: bool) -> tuple[str, ...]:
    """Check the JSON attributes of a file of ours or a shard; the values it holds per split."""
    tables = {}
    for name, want in JSON_ATTRIBUTES.items():
        if name not in attrs:
            continue
        text = attrs[name]
        try:
            value = json.loads(text.decode() if isinstance(text, bytes) else text)
        except (TypeError, ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, want):
            raise UserError(f"{where}: attribute {name} is {shown(repr(text))}; expected "
                            f"{'a JSON object' if want is dict else 'a JSON list'}")
        tables[name] = value
    try:
        values = parse_values(attrs.get(A_VALUES))
    except UserError as exc:
        raise UserError(f"{where}: {shown(exc, 2 * MAX_SHOWN)}") from None
    if any(not isinstance(v, str) for v in tables.get(A_LABELS, {}).values()):
        raise UserError(f"{where}: attribute {A_LABELS} is {shown(repr(attrs[A_LABELS]))}; expected a JSON object "
                        "of texts")
    if any(not isinstance(d, str) for d in tables.get(A_IMPORT_DIRS, [])):
        raise UserError(f"{where}: attribute {A_IMPORT_DIRS} is {shown(repr(attrs[A_IMPORT_DIRS]))}; "
                        "expected a JSON list of folders")
    splits = tables.get(A_SPLITS)
    source = f"attribute {A_SPLITS}"
    if splits is None and (complete or A_SPEC in tables):
        data = tables.get(A_SPEC, {}).get("data")
        splits = data.get("splits") if isinstance(data, dict) else None
        source = f"attribute {A_SPEC}: data.splits"
        if splits is None and not complete:
            return values  # a file written by hand: render and summary draw what it holds
    if splits is not None and (not isinstance(splits, list) or not splits or any(s not in SPLITS for s in splits)):
        raise UserError(f"{where}: {source} is {shown(json.dumps(splits))}; expected a JSON list of "
                        f"{' and '.join(SPLITS)}")
    if splits is None and complete and kind == "surface":
        raise UserError(f"{where}: attribute {A_SPEC} has no data.splits and the file no attribute "
                        f"{A_SPLITS}; expected the splits its runs asked for")
    return values


def _grid(f: "h5py.File", where: str) -> tuple[int, ...]:
    """The grid's shape from the declared shapes of the coordinates, before they are read."""
    nx = _axis(f, X, where)
    ny = _axis(f, Y, where) if Y in f else None
    if ny is not None and nx * ny > MAX_GRID_POINTS:
        raise UserError(f"{where}: datasets {X} and {Y} declare a grid of {nx:,} x {ny:,} points; expected at "
                        f"most {MAX_GRID_POINTS:,} points")
    return (nx,) if ny is None else (ny, nx)


def _axis(f: "h5py.File", name: str, where: str) -> int:
    d = _dataset(f, name, where, required=True)
    shape = d.shape or ()
    if len(shape) != 1 or shape[0] < 1:
        raise UserError(f"{where}: dataset {name} has shape {shape}, expected a 1-D array of axis values")
    if shape[0] > MAX_GRID_POINTS:
        raise UserError(f"{where}: dataset {name} declares {shape[0]:,} coordinates; expected at most "
                        f"{MAX_GRID_POINTS:,}")
    _kind(d, name, where, NUMBERS)
    return int(shape[0])


def _dataset(f, name: str, where: str, required: bool = False):
    """The dataset `name` of `f` (a file or group), None where it is absent and not `required`;
    UserError where it is something else (a group, a link to another file)."""
    import h5py

    link = f.get(name, getlink=True)
    if link is None:
        if required:
            raise UserError(f"{where} has no dataset {name}; expected one")
        return None
    if isinstance(link, h5py.ExternalLink):
        raise UserError(f"{where}: {name} is a link to another file; expected a dataset")
    try:
        obj = f.get(name)
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{where}: {name} cannot be read ({_first_line(exc)})") from None
    if not isinstance(obj, h5py.Dataset):
        if obj is None and not required:
            return None  # a soft link to nothing
        raise UserError(f"{where}: {name} is {'a group' if isinstance(obj, h5py.Group) else 'not a dataset'}; "
                        "expected a dataset")
    return obj


def _kind(d, name: str, where: str, kinds: str) -> None:
    if d.dtype.kind not in kinds:
        expected = "text" if kinds == TEXT else "integers" if kinds == INTEGERS else "numbers"
        raise UserError(f"{where}: dataset {name} has dtype {shown(d.dtype)}; expected {expected}")


def _numbers(f, name: str, where: str, shapes: list[tuple[int, ...]], required: bool = False,
             kinds: str = NUMBERS) -> None:
    """Dataset `name`, where present (or `required`), holds numbers in one of `shapes`."""
    d = _dataset(f, name, where, required)
    if d is None:
        return
    _kind(d, name, where, kinds)
    if (d.shape or ()) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise UserError(f"{where}: dataset {name} has shape {d.shape or ()}, expected {want} "
                        f"({'ny, nx' if len(shapes[0]) == 2 else 'nx'})")


def _series(f, name: str, where: str, budget: list[int], kinds: str = NUMBERS) -> None:
    """Dataset `name` of a group, where present: 1-D of `kinds`, its length counted in `budget`."""
    d = _dataset(f, name, where)
    if d is None:
        return
    _kind(d, f"{f.name.strip('/')}/{name}", where, kinds)
    shape = d.shape or ()
    if len(shape) > 1:
        raise UserError(f"{where}: dataset {f.name.strip('/')}/{name} has shape {shape}, expected (n,)")
    n = int(np.prod(shape))
    budget[0] -= n
    label = f"{where}: dataset {f.name.strip('/')}/{name} declares {n:,} values"
    if budget[0] < 0:
        raise UserError(f"{label}; expected at most {MAX_SERIES:,} in all")
    if d.dtype.kind in "SU" and d.dtype.itemsize * n > 64 * MAX_ATTRIBUTE_BYTES:
        raise UserError(f"{label} of {d.dtype.itemsize:,} bytes; expected at most {64 * MAX_ATTRIBUTE_BYTES:,} "
                        "bytes in all")


def _shard_points(f, where: str, points: int) -> None:
    d = _dataset(f, POINTS, where, required=True)
    _kind(d, POINTS, where, INTEGERS)
    shape = d.shape or ()
    if len(shape) != 1 or shape[0] > points:
        raise UserError(f"{where}: dataset {POINTS} has shape {shape}; expected (n,) with n at most the grid's "
                        f"{points:,} points")
    share = np.asarray(d[()])
    if share.size and (share.min() < 0 or share.max() >= points):
        raise UserError(f"{where}: dataset {POINTS} holds points outside the grid's 0 to {points - 1}")


def _centre(f, where: str) -> None:
    import h5py

    group = f.get(HESSIAN_CENTRE)
    if group is None:
        return
    if not isinstance(group, h5py.Group):
        raise UserError(f"{where}: {HESSIAN_CENTRE} is not a group; expected the spectrum at the centre")
    for name in (CENTRE_TOP, CENTRE_GRID, CENTRE_DENSITY):
        _series(group, name, where, [MAX_SERIES])


def _paths(f, where: str) -> None:
    """The trajectory group and its `also` runs: series of MAX_SERIES values in all."""
    import h5py

    group = f.get(TRAJECTORY)
    if group is None:
        return
    if not isinstance(group, h5py.Group):
        raise UserError(f"{where}: {TRAJECTORY} is not a group; expected the training paths")
    budget = [MAX_SERIES]
    also = group.get(ALSO)
    runs = [group] + ([also[k] for k in also if isinstance(also.get(k), h5py.Group)]
                      if isinstance(also, h5py.Group) else [])
    for run in runs:
        for name in PATH_DATASETS[:3]:
            _series(run, name, where, budget)
        _series(run, PATH_DATASETS[3], where, budget, kinds=TEXT)


def _directions(f, where: str) -> None:
    """directions/x and directions/y (where the file is 2-D): groups of float datasets, each stored
    whole (the writer allocates them in full: a chunked dataset declaring more than the file
    holds is refused before it is read); or, stored as a seed, what `seed_record` reads."""
    import h5py

    group = f.get(DIRECTIONS)
    if isinstance(group, h5py.Group) and A_STORE in group.attrs:
        seed_record(f, where)
        return
    if not isinstance(group, h5py.Group) or not isinstance(group.get("x"), h5py.Group):
        raise UserError(f"{where}: group {DIRECTIONS}/x is missing; expected the directions")
    for axis in ("x", "y"):
        g = group.get(axis)
        if g is None:
            continue
        if not isinstance(g, h5py.Group):
            raise UserError(f"{where}: {DIRECTIONS}/{axis} is not a group; expected the directions")
        for name in g:
            label = f"{DIRECTIONS}/{axis}/{shown(name)}"
            d = _dataset(g, name, where, required=True)
            if d.dtype.kind != "f":
                raise UserError(f"{where}: dataset {label} has dtype {shown(d.dtype)}; expected floats")
            declared = int(np.prod(d.shape or ())) * d.dtype.itemsize
            if d.id.get_storage_size() < declared:
                raise UserError(f"{where}: dataset {label} declares {declared:,} bytes and the file holds "
                                f"{d.id.get_storage_size():,} of them; expected a direction stored whole")


@dataclass
class SeedRecord:
    """What a surface file made with directions.store = "seed" records of its directions."""
    seed: int
    scheme: str
    norm: str
    ignore: str
    orthogonal_coef: float | None  # y = y - coef * x, tensor by tensor; None: not made orthogonal
    same_dir: bool  # y = x
    names: list[str]
    sha256: np.ndarray  # uint8 (tensors, axes, 32): x's and (on a 2-D surface) y's digests


SEED_NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")


def seed_record(f, where: str) -> SeedRecord | None:
    """The seed record of a file's directions, None where they are stored whole; UserError
    (one line) for a record that is not what the writer makes (every field checked: a received
    file is untrusted)."""
    import h5py

    group = f.get(DIRECTIONS)
    if not isinstance(group, h5py.Group) or A_STORE not in group.attrs:
        return None
    attrs = group.attrs
    label = f"{where}: {DIRECTIONS}"

    def attr(name, kinds, expected):
        value = attrs.get(name)
        value = value.item() if isinstance(value, np.generic) else value
        value = value.decode() if isinstance(value, bytes) else value
        if not isinstance(value, kinds) or isinstance(value, bool) is not (bool in kinds):
            raise UserError(f"{label} attribute {name} is {shown(repr(value))[:80]}; expected {expected}")
        return value

    if attr(A_STORE, (str,), '"seed"') != "seed":
        raise UserError(f"{label} attribute {A_STORE} is {shown(repr(attrs.get(A_STORE)))[:80]}; expected \"seed\"")
    seed = attr("seed", (int,), "an integer seed")
    if not 0 <= seed < 2**64:
        raise UserError(f"{label} attribute seed is {seed}; expected an integer from 0 to 2**64 - 1")
    norm, ignore = attr("norm", (str,), "a norm"), attr("ignore", (str,), '"biasbn" or "none"')
    if norm not in SEED_NORMS or ignore not in ("biasbn", "none"):
        raise UserError(f"{label} attributes norm, ignore are {shown(norm)[:40]}, {shown(ignore)[:40]}; expected one "
                        f"of {', '.join(SEED_NORMS)} and biasbn or none")
    coef = attrs.get("orthogonal_coef")
    if coef is not None:
        coef = attr("orthogonal_coef", (float,), "a number")
        if not np.isfinite(coef):
            raise UserError(f"{label} attribute orthogonal_coef is {coef}; expected a finite number")
    same = attr("same_dir", (bool,), "true or false")
    names_d = _dataset(group, SEED_NAMES, label, required=True)
    sha_d = _dataset(group, SEED_SHA, label, required=True)
    if (names_d.ndim != 1 or names_d.dtype.kind != "S" or names_d.dtype.itemsize > 4096 or len(names_d) > 1 << 20
            or len(names_d) * names_d.dtype.itemsize > 1 << 26):  # declared, checked before it is read
        raise UserError(f"{label}/{SEED_NAMES} has shape {names_d.shape}, dtype {shown(names_d.dtype)}; expected "
                        "one name a tensor")
    if sha_d.dtype != np.uint8 or sha_d.ndim != 3 or sha_d.shape[0] != len(names_d) or sha_d.shape[1] not in (1, 2) \
            or sha_d.shape[2] != 32:
        raise UserError(f"{label}/{SEED_SHA} has shape {sha_d.shape}, dtype {shown(sha_d.dtype)}; expected "
                        f"({len(names_d)}, 1 or 2, 32) bytes")
    try:
        names = [n.decode() for n in np.asarray(names_d)]
    except UnicodeDecodeError:
        raise UserError(f"{label}/{SEED_NAMES} is not UTF-8 text; expected tensor names") from None
    if len(set(names)) != len(names):
        raise UserError(f"{label}/{SEED_NAMES} names a tensor twice; expected one name a tensor")
    return SeedRecord(seed, attr("scheme", (str,), "the drawing scheme's description"), norm, ignore, coef, same,
                      names, np.asarray(sha_d))


def _dir_file(f, where: str) -> None:
    """The original code's `dir_file`, where present: one string."""
    import h5py

    obj = f.get(DIR_FILE)
    if isinstance(obj, h5py.Dataset) and (int(np.prod(obj.shape or ())) > 1
                                          or obj.dtype.itemsize > MAX_ATTRIBUTE_BYTES):
        raise UserError(f"{where}: dataset {DIR_FILE} has shape {obj.shape}, dtype {shown(obj.dtype)}; "
                        "expected one path")
