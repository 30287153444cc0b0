"""Reading surface files for rendering: ours and the original loss-landscape code's.

Our files (attr `format = "losslandscape-surface"`) mark computed points with
`<split>_done` flags; the original code's files (no `format` attr, no flags)
mark missing points with -1. Both come out of `load_surface` the same way:
float64 arrays of shape (ny, nx) -- row j is y[j], column i is x[i] -- or (nx,)
for a 1-D surface, with NaN wherever a point is not computed.

The `hessian` verb's results load too, where a file has them: the eigenvalue
maps (`max_eig`, `min_eig`, NaN where `eig_done` is not 1) as `Surface.eig`, with
their settings (the `hessian_*` attributes) as `Surface.eig_settings`, and the
spectrum at the centre (the `hessian_centre` group) as `Surface.centre_spectrum`.

A PCA surface (`directions.kind = "pca"`, Li et al.'s Sec. 7) also has the paths of
training runs on its plane: the run's own (`trajectory/x`, `y`, `error`, `checkpoints`) and
any further runs projected on the same plane (`trajectory/also/0`, `1`, ..., each with a
`pattern` attribute); they load as `Surface.trajectories`, and the file attribute
`explained_variance_ratio` (PC1's and PC2's share of the variance) as
`Surface.explained_variance_ratio`.

Files are opened read-only with HDF5 file locking off, so a surface that a
running job is still writing can be drawn (the original code's users hit
"unable to lock file, errno 11" exactly there).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslandscape.errors import UserError, readable_file

from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile.format import (FORMAT, HESSIAN_CENTRE, ORIGINAL_MISSING, SPLITS, TRAJECTORY,  # noqa: F401
                                      VALUE_NAMES, VALUES)

VALUE_LABELS = {"loss": "loss", "acc": "accuracy"}
EIG_SETTINGS = ("split", "samples", "params", "tol")  # the maps' attributes, `hessian_<name>`


@dataclass
class Surface:
    """One surface file, loaded into memory.

    `values` maps dataset names ("train_loss", "test_acc", ...) to float64
    arrays of shape (ny, nx), or (nx,) for 1-D, with NaN where the point is
    not computed; diverged losses stay +inf. A file whose loss defines no
    accuracy (attribute `values` = ["loss"]) has no `_acc` entries: then
    `has_accuracy` is False and `s.train_acc` is None, never an array of NaN.
    """

    path: Path
    x: np.ndarray  # (nx,)
    y: np.ndarray | None  # (ny,), None for a 1-D surface
    values: dict[str, np.ndarray]
    fraction_done: dict[str, float]  # per split present, in [0, 1]
    model_name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    original_format: bool = False  # the original loss-landscape code's file (-1 = missing)
    # The `hessian` verb's maps: {"max": ..., "min": ...}, each shaped as the values, NaN where
    # not computed (eig_done not 1); None when the file has none.
    eig: dict[str, np.ndarray] | None = None
    eig_computed: np.ndarray | None = None  # bool, where the maps are computed (eig_done)
    eig_fraction_done: float = 0.0  # of the maps, in [0, 1]
    eig_settings: dict[str, Any] = field(default_factory=dict)  # split, samples, params, tol
    # The spectrum at the centre (`hessian --centre`): top_eigenvalues (descending),
    # min_eigenvalue, ratio_min_max, trace, trace_stderr, parameters, split, samples, params,
    # hutchinson_samples, density_grid and density (arrays); None when the file has none.
    centre_spectrum: dict[str, Any] | None = None
    # Paths of training runs on a PCA plane, the run's own first, then the `also` runs: each a dict
    # name ("run: model_*.pt" for the run's own, the pattern for the others, both cut to the last
    # parts of the glob that tell the runs apart), pattern (the whole glob), x, y, error (float64
    # (n,); error is the distance from the plane relative to the distance from the final model)
    # and checkpoints (the n file names, in training order). [] when the file has none.
    trajectories: list[dict[str, Any]] = field(default_factory=list)
    explained_variance_ratio: np.ndarray | None = None  # float64 (2,): PC1's and PC2's share of the variance

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def splits(self) -> list[str]:
        """Splits with at least one value dataset, in the order train, test."""
        return [s for s in SPLITS if any(f"{s}_{v}" in self.values for v in VALUES)]

    @property
    def held_values(self) -> list[str]:
        """The values the file holds, in the order loss, acc: ["loss"] where its loss defines
        no accuracy."""
        return [v for v in VALUES if any(f"{s}_{v}" in self.values for s in SPLITS)]

    @property
    def has_accuracy(self) -> bool:
        return "acc" in self.held_values

    @property
    def eig_ratio(self) -> np.ndarray | None:
        """|min_eig / max_eig| (Li et al.'s Fig. 8), NaN where not computed; +inf where the
        largest eigenvalue is 0 and the smallest is not. None without maps."""
        if self.eig is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.eig["min"] / self.eig["max"])

    def __getattr__(self, name: str) -> np.ndarray:
        """`s.train_loss`, `s.test_acc`, ...: the value arrays (NaN where not computed); an
        accuracy is None in a file that holds none (its loss defines no accuracy)."""
        if name in VALUE_NAMES:
            values = self.__dict__.get("values", {})
            if name in values:
                return values[name]
            if name.endswith("_acc") and values and not any(k.endswith("_acc") for k in values):
                return None
            raise AttributeError(f"{self.__dict__.get('path')} holds no {name}")
        raise AttributeError(name)

    def to_xarray(self):
        """An xarray Dataset of the values with x (and y) coordinates and the file's attributes
        (needs xarray installed)."""
        try:
            import xarray as xr
        except ImportError:
            raise UserError("to_xarray needs xarray: pip install xarray") from None
        dims = ("x",) if self.y is None else ("y", "x")
        coords = {"x": self.x} if self.y is None else {"x": self.x, "y": self.y}
        attrs = {k: v for k, v in self.attrs.items() if isinstance(v, (str, int, float))}
        data = {k: (dims, v) for k, v in self.values.items()}
        if self.eig is not None:
            data.update({"max_eig": (dims, self.eig["max"]), "min_eig": (dims, self.eig["min"])})
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def shape_text(self) -> str:
        if self.y is None:
            return f"1-D, {self.x.size} points"
        return f"2-D, {self.x.size} x {self.y.size}"


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _shown(value: Any) -> Any:
    """An attribute as titles, pages and lines show it: text cut to format.MAX_SHOWN characters
    (format.shown); JSON text (the spec) keeps its form, with its strings cut."""
    if isinstance(value, str):
        if len(value) > ff.MAX_SHOWN and value[:1] in "{[":
            try:
                table = json.loads(value)
            except ValueError:
                return ff.shown(value)
            cut = _shown_json(table)
            return value if cut == table else json.dumps(cut)
        return ff.shown(value)
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _shown_json(value: Any) -> Any:
    if isinstance(value, str):
        return ff.shown(value)
    if isinstance(value, list):
        return [_shown_json(v) for v in value]
    if isinstance(value, dict):
        return {ff.shown(k): _shown_json(v) for k, v in value.items()}
    return value


def _model_name(attrs: dict[str, Any], stem: str) -> str:
    spec = ff.spec_table(attrs.get(ff.A_SPEC))
    if isinstance(spec, dict):
        model = spec.get("model")
        if isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]:
            return model["name"]
    return stem


def _coordinates(f, name: str, path: Path) -> np.ndarray:
    data = np.asarray(f[name][()], dtype=np.float64)
    if data.ndim != 1 or data.size < 1:
        raise UserError(f"{path}: dataset {name} has shape {data.shape}, expected a 1-D array of axis values")
    if not np.all(np.isfinite(data)):
        raise UserError(f"{path}: dataset {name} has non-finite axis values")
    return data


def load_surface(path: str | Path) -> Surface:
    """Read a surface file; raise UserError naming the file if it is not one, or if it declares
    datasets or attributes that a surface file does not hold (format.check_file: checked before
    anything is read). Text from the file (the model's name, the spec's paths) comes cut to
    format.MAX_SHOWN characters, as titles and pages show it."""
    path = Path(path)
    with _open(path) as f:
        layout = ff.check_file(f, path)
        attrs = {k: _shown(_plain(v)) for k, v in layout.attrs.items()}
        original = layout.original
        x, y = _axes(f, path)
        shape = (x.size,) if y is None else (y.size, x.size)
        values = _values(f, path, x, y, original)
        done = _done_flags(f, path, shape)
        hessian = {} if original else _hessian(f, path, shape)
        trajectories = [] if original else _trajectories(f, path, attrs)
        evr = None if original else _explained_variance(f, path)
    if not values:
        raise UserError(f"{path} has none of the datasets {', '.join(VALUE_NAMES)}")
    eig, eig_computed = hessian.get("eig"), hessian.get("eig_computed")
    return Surface(
        path=path,
        x=x,
        y=y,
        values=values,
        fraction_done=_fraction_done(values, done, shape, original),
        model_name=_model_name(attrs, path.stem),
        attrs=attrs,
        original_format=original,
        eig=eig,
        eig_computed=eig_computed,
        eig_fraction_done=0.0 if eig_computed is None else float(eig_computed.mean()),
        eig_settings={k: attrs[f"hessian_{k}"] for k in EIG_SETTINGS if f"hessian_{k}" in attrs} if eig else {},
        centre_spectrum=hessian.get("centre"),
        trajectories=trajectories,
        explained_variance_ratio=evr,
    )


def _open(path: Path):
    """The file, read-only and without locking (a running job may be writing it)."""
    return ff.open_h5(path, "r", field="surface file")


def _axes(f, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import h5py

    if not isinstance(f.get(ff.X), h5py.Dataset):
        raise UserError(f"{path} has no xcoordinates dataset, expected a loss-landscape surface file")
    x = _coordinates(f, ff.X, path)
    return x, (_coordinates(f, ff.Y, path) if isinstance(f.get(ff.Y), h5py.Dataset) else None)


def _values(f, path: Path, x: np.ndarray, y: np.ndarray | None, original: bool) -> dict[str, np.ndarray]:
    """The value datasets as float64 (ny, nx) or (nx,), as stored (-1 still marks a point the
    original code did not compute)."""
    import h5py

    shape = (x.size,) if y is None else (y.size, x.size)
    if original:
        raw = ff.read_original(f).values
    else:
        raw = {name: np.array(f[name][()], dtype=np.float64) for name in VALUE_NAMES
               if isinstance(f.get(name), h5py.Dataset)}
    values = {}
    for name, data in raw.items():
        if original and y is not None and data.shape == (x.size, y.size) and data.shape != shape:
            # The original code allocates (nx, ny) but fills it through the
            # flat index of meshgrid(x, y), i.e. in (ny, nx) order.
            data = data.reshape(shape)
        if data.shape != shape:
            raise UserError(f"{path}: dataset {name} has shape {data.shape}, expected {shape} (ny, nx)")
        values[name] = data
    return values


def _done_flags(f, path: Path, shape: tuple) -> dict[str, np.ndarray]:
    import h5py

    done: dict[str, np.ndarray] = {}
    for split in SPLITS:
        flag = ff.done_name(split)
        if isinstance(f.get(flag), h5py.Dataset):
            flags = np.asarray(f[flag][()])
            if flags.shape != shape:
                raise UserError(f"{path}: dataset {flag} has shape {flags.shape}, expected {shape} (ny, nx)")
            done[split] = flags == 1
    return done


def _hessian(f, path: Path, shape: tuple) -> dict[str, Any]:
    """The `hessian` verb's results that the file has: {"eig", "eig_computed", "centre"}."""
    import h5py

    out: dict[str, Any] = {}
    if all(isinstance(f.get(n), h5py.Dataset) for n in ff.EIG_MAPS):
        out["eig"], out["eig_computed"] = _eigenvalue_maps(f, path, shape)
    if isinstance(f.get(HESSIAN_CENTRE), h5py.Group):
        out["centre"] = _centre_spectrum(f[HESSIAN_CENTRE], path)
    return out


def _fraction_done(values: dict[str, np.ndarray], done: dict[str, np.ndarray], shape: tuple,
                   original: bool) -> dict[str, float]:
    """Per split present: the share of points computed. Sets NaN where a point is not computed,
    in place, and +inf where an evaluated loss came out NaN (the point diverged)."""
    fraction_done: dict[str, float] = {}
    for split in SPLITS:
        names = [f"{split}_{v}" for v in VALUES if f"{split}_{v}" in values]
        if not names:
            continue
        if original:
            # The original code writes loss and accuracy of a point together and
            # leaves -1 in both until then; the loss (else accuracy) decides.
            for name in names:
                if name.endswith("_loss"):
                    # NaN is an evaluated loss there (not -1): the point diverged.
                    values[name][np.isnan(values[name])] = np.inf
                values[name][values[name] == ORIGINAL_MISSING] = np.nan
            computed = ~np.isnan(values[names[0]])
            for name in names[1:]:
                values[name][~computed] = np.nan
        elif split in done:
            computed = done[split]
            for name in names:
                values[name][~computed] = np.nan
                if name.endswith("_loss"):
                    # A point that was evaluated and came out NaN diverged.
                    values[name][computed & np.isnan(values[name])] = np.inf
        else:
            computed = np.zeros(shape, dtype=bool)
            for name in names:
                computed |= ~np.isnan(values[name])
        fraction_done[split] = float(computed.mean())
    return fraction_done


def _eigenvalue_maps(f, path: Path, shape: tuple) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `hessian` verb's maps, NaN where eig_done is not 1 (where there are no flags,
    the points with a value count as computed), and where they are computed."""
    import h5py

    eig = {}
    for key, name in zip(("max", "min"), ff.EIG_MAPS):
        data = np.array(f[name][()], dtype=np.float64)
        if data.shape != shape:
            raise UserError(f"{path}: dataset {name} has shape {data.shape}, expected {shape} (ny, nx)")
        eig[key] = data
    if isinstance(f.get(ff.EIG_DONE), h5py.Dataset):
        flags = np.asarray(f[ff.EIG_DONE][()])
        if flags.shape != shape:
            raise UserError(f"{path}: dataset eig_done has shape {flags.shape}, expected {shape} (ny, nx)")
        computed = flags == 1
    else:
        computed = ~np.isnan(eig["max"]) | ~np.isnan(eig["min"])
    for data in eig.values():
        data[~computed] = np.nan
    return eig, computed


def _centre_spectrum(group, path: Path) -> dict[str, Any]:
    """The `hessian_centre` group as a dict: its attributes (plain values), the top
    eigenvalues as a list, the density and its grid as arrays (empty where missing)."""
    import h5py

    stored = ff.read_attributes(group, f"{path}: {HESSIAN_CENTRE}")
    out: dict[str, Any] = {k: _shown(_plain(v)) for k, v in stored.items()}
    for key in ("min_eigenvalue", "ratio_min_max", "trace", "trace_stderr", "parameters", "samples",
                "hutchinson_samples", "trace_products", "trace_deflated", "trace_seed"):
        if out.get(key) is not None and (isinstance(out[key], bool) or not isinstance(out[key], (int, float))):
            raise UserError(f"{path}: attribute {HESSIAN_CENTRE}/{key} is {ff.shown(repr(out[key]))}; "
                            "expected a number")
    if out.get("trace_method") is not None and not isinstance(out["trace_method"], str):
        raise UserError(f"{path}: attribute {HESSIAN_CENTRE}/trace_method is {ff.shown(repr(out['trace_method']))}; "
                        "expected text")

    def array(name: str) -> np.ndarray:
        if name in group and isinstance(group[name], h5py.Dataset):
            return np.asarray(group[name][()], dtype=np.float64).ravel()
        return np.zeros(0)

    out["top_eigenvalues"] = array(ff.CENTRE_TOP).tolist()
    out["density_grid"], out["density"] = array(ff.CENTRE_GRID), array(ff.CENTRE_DENSITY)
    if out["density_grid"].size != out["density"].size:
        raise UserError(f"{path}: {HESSIAN_CENTRE}/density has {out['density'].size} values for "
                        f"{out['density_grid'].size} grid points")
    for key in ("min_eigenvalue", "ratio_min_max", "trace", "trace_stderr"):
        out.setdefault(key, None)
    top, low = out["top_eigenvalues"], out["min_eigenvalue"]
    if out["ratio_min_max"] is None and top and top[0] and low is not None:
        out["ratio_min_max"] = abs(low / top[0])
    return out


def _strings(data: np.ndarray) -> list[str]:
    """An HDF5 string dataset (fixed-length bytes, or variable-length str or bytes) as str."""
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(data).ravel().tolist()]


def _run(group, where: str, path: Path) -> dict[str, Any]:
    """One path of a trajectory group: x, y, error (float64 (n,)), checkpoints (n names), pattern."""
    import h5py

    def floats(name: str, required: bool) -> np.ndarray | None:
        if name not in group or not isinstance(group[name], h5py.Dataset):
            if required:
                raise UserError(f"{path}: {where} has no {name} dataset")
            return None
        data = np.asarray(group[name][()], dtype=np.float64)
        if data.ndim != 1:
            raise UserError(f"{path}: dataset {where}/{name} has shape {data.shape}, expected (n,)")
        return data

    nx, ny, nerr, nckpt = ff.PATH_DATASETS
    x, y = floats(nx, True), floats(ny, True)
    n = x.size
    error = floats(nerr, False)
    error = np.full(n, np.nan) if error is None else error
    stored = group.get(nckpt)
    names = [ff.shown(n) for n in _strings(stored[()])] if isinstance(stored, h5py.Dataset) else []
    for name, size in ((ny, y.size), (nerr, error.size), (nckpt, len(names) or n)):
        if size != n:
            raise UserError(f"{path}: dataset {where}/{name} has {size} values for the {n} of {where}/{nx}")
    pattern = _plain(ff.read_attributes(group, f"{path}: {where}").get(ff.PATH_PATTERN, ""))
    pattern = ff.shown(pattern if isinstance(pattern, str) else str(pattern))
    return {"name": "", "pattern": pattern, "x": x, "y": y,
            "error": error, "checkpoints": names}


def _trajectories(f, path: Path, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """The paths of a PCA surface, the run's own first (see `Surface.trajectories`); [] without."""
    import h5py

    group = f.get(TRAJECTORY)
    if not isinstance(group, h5py.Group):
        return []
    directions = (ff.spec_table(attrs.get(ff.A_SPEC)) or {}).get("directions") or {}
    directions = directions if isinstance(directions, dict) else {}
    runs = [_run(group, TRAJECTORY, path)]
    runs[0]["pattern"] = runs[0]["pattern"] or ff.shown(directions.get("checkpoints") or "")
    also = group.get(ff.ALSO)
    if isinstance(also, h5py.Group):
        keys = sorted((k for k in also if isinstance(also[k], h5py.Group)),
                      key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))
        listed = directions.get("also") if isinstance(directions.get("also"), list) else []
        for k in keys:
            run = _run(also[k], f"{TRAJECTORY}/{ff.ALSO}/{k}", path)
            if not run["pattern"] and k.isdigit() and int(k) < len(listed):
                run["pattern"] = ff.shown(listed[int(k)])
            run["pattern"] = run["pattern"] or f"also {k}"
            runs.append(run)
    names = short_patterns([r["pattern"] or "trajectory" for r in runs])
    for i, (run, name) in enumerate(zip(runs, names)):
        run["name"] = f"run: {name}" if i == 0 else name
    return runs


def short_patterns(patterns: list[str]) -> list[str]:
    """Each glob cut to its last path parts, as few as tell the different globs apart:
    ["out/a/model_*.pt", "out/b/model_*.pt"] -> ["a/model_*.pt", "b/model_*.pt"]."""
    parts = [[p for p in pattern.replace("\\", "/").split("/") if p] or [pattern] for pattern in patterns]
    wanted = len(set(patterns))
    for k in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == wanted:
            return tails
    return list(patterns)


def _explained_variance(f, path: Path) -> np.ndarray | None:
    """The attribute explained_variance_ratio (PC1's and PC2's shares), float64 (2,); None without."""
    if ff.A_EXPLAINED not in f.attrs:
        return None
    try:
        ratio = np.asarray(f.attrs[ff.A_EXPLAINED], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise UserError(f"{path}: attribute explained_variance_ratio is not numeric") from None
    if ratio.size < 2:
        raise UserError(f"{path}: attribute explained_variance_ratio has {ratio.size} values, expected 2")
    return ratio[:2].copy()


def check_computed(surface: Surface, name: str) -> np.ndarray:
    """The values of `name`, or UserError if the file has no such dataset or none of it is computed."""
    if name not in surface.values:
        present = ", ".join(surface.values) or "none"
        raise UserError(f"{surface.path} has no {name} dataset (present: {present})")
    data = surface.values[name]
    if np.all(np.isnan(data)):
        raise UserError(f"{surface.path}: nothing is computed yet for {name} (0 of {data.size} points done)")
    return data


# --- what the run's steps read (status, the Hessian maps, an array task) ------------------------

@dataclass
class Progress:
    """How far a surface or a shard file is: what `status` reads of it, in one open."""
    splits: list[str]  # the splits any run or submission asked for, in SPLITS order
    values: tuple[str, ...]  # ("loss", "acc"), or ("loss",)
    done: dict[str, np.ndarray]  # {split: flat bool}
    seconds: np.ndarray  # flat float64, the wall time of each point (NaN where not computed)
    points: np.ndarray | None = None  # a shard's share (flat indices)
    x: np.ndarray | None = None  # the grid's axes
    y: np.ndarray | None = None
    surface: Path | None = None  # a shard's surface file
    eig_done: np.ndarray | None = None  # flat bool of the Hessian maps; None without maps
    eig_settings: dict[str, Any] = field(default_factory=dict)  # the maps' hessian_* attributes

    @property
    def total(self) -> int:
        return len(self.seconds)


def read_progress(path: str | Path, shard: bool = False, verb: str = "status") -> Progress:
    """The progress of a surface file of ours (UserError naming `verb` for any other file), or
    with `shard` of a shard file."""
    path = Path(path)
    with ff.open_h5(path, "r", field="shard" if shard else "output.surface") as f:
        layout = ff.check_file(f, path, "shard" if shard else verb, "shard" if shard else "surface", complete=True)
        p = Progress(ff.requested_splits(f) if not shard else [], ff.file_values(f), ff.done_masks(f),
                     np.asarray(f[ff.POINT_SECONDS]).ravel())
        p.x, p.y = ff.axes_arrays(f)
        if shard:
            p.points = np.asarray(f[ff.POINTS])
            p.surface = Path(_plain(layout.attrs[ff.A_SURFACE]))
        if ff.EIG_DONE in f:
            p.eig_done = ff.maps_done(f)
            p.eig_settings = {k: _shown(_plain(layout.attrs.get(k))) for k in ff.HESSIAN_ATTRS}
    return p


@contextmanager
def stored_directions(f_or_path):
    """(x, y or None) stored in a surface file (an open one, or a path, opened for the block):
    each {name: float32 array}, read when asked for, so that the caller never holds a whole
    direction besides its own copy."""
    if isinstance(f_or_path, (str, Path)):
        with ff.open_h5(f_or_path, "r") as f:
            with stored_directions(f) as xy:
                yield xy
        return
    g = f_or_path[ff.DIRECTIONS]
    yield _LazyDirection(g["x"]), (_LazyDirection(g["y"]) if "y" in g else None)


def stored_seed(f_or_path) -> tuple[ff.SeedRecord, dict[str, str]] | None:
    """(the seed record, the versions that made the file) of a surface file whose directions are
    stored as a seed (directions.store = "seed"); None where they are stored whole."""
    if isinstance(f_or_path, (str, Path)):
        with ff.open_h5(f_or_path, "r") as f:
            return stored_seed(f)
    f = f_or_path
    record = ff.seed_record(f, f.filename)
    if record is None:
        return None
    try:
        versions = json.loads(_plain(f.attrs.get(ff.A_VERSIONS)) or "{}")
    except ValueError:
        versions = {}
    versions = {str(k): ff.shown(str(v))[:40] for k, v in versions.items()} if isinstance(versions, dict) else {}
    return record, versions


class _LazyDirection:
    """{name: float32 array} over a directions group, each read when asked for."""

    def __init__(self, group):
        self.group = group

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.group:  # a file made for another model
            raise UserError(f"{self.group.file.filename}: group {self.group.name.lstrip('/')} has no direction "
                            f"{ff.shown(repr(name))}; expected one for each tensor the model moves")
        return np.asarray(self.group[name], dtype=np.float32)

    def rows(self, name: str, first: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
        """Rows first..first+count of direction `name` (a rank's shard of a tensor of `shape`),
        read alone; the stored tensor's shape is checked against `shape`."""
        d = self.group[name] if name in self.group else self[name]
        if tuple(d.shape) != tuple(shape):
            raise UserError(f"{self.group.file.filename}: direction {ff.shown(repr(name))} has shape "
                            f"{tuple(d.shape)}; expected {tuple(shape)}, the model's tensor")
        return np.asarray(d[first:first + count] if d.ndim else d[()], dtype=np.float32)


@dataclass
class MapsSource:
    """What the Hessian maps need of a surface file before their datasets exist, in one open."""
    spec: dict  # the `spec` attribute, as a table
    import_dirs: list[str]
    x: np.ndarray
    y: np.ndarray
    stored: dict[str, Any]  # the maps' settings attributes (format.HESSIAN_ATTRS), None where absent
    done: np.ndarray | None  # flat bool of eig_done; None when the maps do not exist yet


def read_maps_source(path: str | Path) -> MapsSource:
    """A 2-D surface file of ours as the `hessian` verb reads it (UserError, one line, for any other)."""
    with ff.open_h5(path, "r") as f:
        layout = ff.check_file(f, path, "hessian", "surface", complete=True, directions=True,
                               hint=" (convert an original file first by resuming it with `losslandscape surface`)")
        if len(layout.shape) != 2:
            raise UserError(f"hessian: {path} is a 1-D surface; the eigenvalue maps need a 2-D surface (grid.y)")
        spec = _spec(layout, f"hessian: {path}")
        x, y = ff.axes_arrays(f)
        return MapsSource(spec, ff.import_dirs(f), x, y, {k: layout.attrs.get(k) for k in ff.HESSIAN_ATTRS},
                          ff.maps_done(f) if ff.EIG_DONE in f else None)


def _spec(layout: ff.Layout, where: str) -> dict:
    """The `spec` attribute of a checked file (format.check_file), which a run needs."""
    if ff.A_SPEC not in layout.attrs:
        raise UserError(f"{where}: attribute {ff.A_SPEC} is missing; expected the job spec (JSON)")
    return json.loads(layout.attrs[ff.A_SPEC])


def read_shard_spec(shard: str | Path) -> tuple[dict, list[str]]:
    """(the spec table, the folders of its factories) a shard file holds: what `submit` gave its task."""
    with ff.open_h5(shard, "r", field="shard") as f:
        layout = ff.check_file(f, shard, "shard", "shard", complete=True)
        return _spec(layout, f"shard: {shard}"), ff.import_dirs(f)


# --- directions from a file: ours (by name) or the original code's (by position) ---

Arrays = dict[str, np.ndarray]


def read_direction_file(path: str, shapes: dict[str, tuple[int, ...]], two: bool,
                        field: str = "directions.file", all_names: list[str] | None = None,
                        only: list[str] | None = None) -> tuple[Arrays, Arrays | None]:
    """Directions ({name: float32 array}) over the tensors named in `shapes` ({name: shape}, in
    the model's order; or over its entries `only`, the moved subset) from one of our surface
    files or an original loss-landscape direction file.

    Ours: groups directions/x and directions/y, one dataset per name. The
    original code's: groups xdirection / ydirection with datasets "0", "1", ...
    in the order of `model.parameters()` (dir_type "weights") or of every
    `model.state_dict()` entry (dir_type "states"), integer buffers such as
    BatchNorm's num_batches_tracked included. `all_names`, the model's full
    state-dict key list, lets such a states file be matched by position and its
    non-floating entries dropped (we never move them; in eval mode they change nothing).
    An original file is matched by position against all of `shapes` and then narrowed to
    `only`; ours is read by name, so it needs entries for `only` alone.
    """
    import h5py

    wanted = list(shapes) if only is None else list(only)
    readable_file(path, field, "an HDF5 file with directions")
    try:
        f = h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise UserError(f"{field}: no such file {path!r}") from None
    except OSError as exc:
        raise UserError(f"{field}: {path} is not an HDF5 file ({exc})") from None
    with f:
        seeded = ff.seed_record(f, f"{field}: {path}")
        if seeded is not None:
            raise UserError(f'{field}: {path} records its directions as a seed (directions.store = "seed"), not '
                            f'as tensors; the same directions are kind = "random" with seed = {seeded.seed} and '
                            f'norm = "{seeded.norm}" on the same model')
        if "directions" in f:
            groups = [f["directions"].get("x"), f["directions"].get("y")]
            read = lambda g: {k: np.asarray(g[k], dtype=np.float32) for k in wanted if k in g}
        elif "xdirection" in f:
            groups = [f.get("xdirection"), f.get("ydirection")]
            read = lambda g: _select(_read_original_group(g, path, field, list(shapes), all_names), wanted)
        else:
            raise UserError(f"{field}: {path} holds no directions (expected group 'directions' or 'xdirection')")
        if groups[0] is None or (two and groups[1] is None):
            raise UserError(f"{field}: {path} lacks the {'y' if groups[0] is not None else 'x'} direction")
        result = [read(groups[0]), read(groups[1]) if two else None]
    for d in result:
        if d is None:
            continue
        missing = [k for k in wanted if k not in d]
        if missing:
            raise UserError(f"{field}: {path} has no direction for {len(missing)} entries, e.g. {missing[0]!r}")
        for k in wanted:
            if tuple(d[k].shape) != tuple(shapes[k]):
                raise UserError(f"{field}: direction {k!r} has shape {tuple(d[k].shape)}, the model {tuple(shapes[k])}")
    return result[0], result[1]


def _select(direction: Arrays, names: list[str]) -> Arrays:
    return {k: direction[k] for k in names}


def _read_original_group(g: "h5py.Group", path: str, field: str, names: list[str],
                         all_names: list[str] | None) -> Arrays:
    """{name: tensor} for `names` from an original direction group ("0", "1", ... by position)."""
    try:
        keys = sorted(g.keys(), key=int)
    except ValueError:
        raise UserError(f"{field}: {path}: group {g.name!r} has datasets not named 0, 1, ...") from None
    order = names
    if all_names is not None and len(keys) == len(all_names):
        # one entry per state-dict entry, as the original code wrote states directions
        order = list(all_names)
        known = set(order)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"all_names lacks {unknown[0]!r}")  # a caller's mistake, not the user's
    if len(keys) != len(order):
        in_all = f" ({len(all_names)} state-dict entries in all)" if all_names and len(all_names) != len(names) else ""
        raise UserError(f"{field}: {path} holds {len(keys)} direction entries in {g.name!r}, the model has "
                        f"{len(names)} to move{in_all}; is directions.dir_type right?")
    by_name = dict(zip(order, keys))
    return {n: np.asarray(g[by_name[n]], dtype=np.float32) for n in names}
