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

Files are opened read-only with HDF5 file locking off, so a surface that a
running job is still writing can be drawn (the original code's users hit
"unable to lock file, errno 11" exactly there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslandscape.errors import UserError

from losslandscape.fileformat import FORMAT, ORIGINAL_MISSING, SPLITS, VALUE_NAMES, VALUES  # noqa: F401
VALUE_LABELS = {"loss": "loss", "acc": "accuracy"}
HESSIAN_CENTRE = "hessian_centre"  # as hessmap.CENTRE (hessmap itself imports the torch side)
EIG_SETTINGS = ("split", "samples", "params", "tol")  # the maps' attributes, `hessian_<name>`


@dataclass
class Surface:
    """One surface file, loaded into memory.

    `values` maps dataset names ("train_loss", "test_acc", ...) to float64
    arrays of shape (ny, nx), or (nx,) for 1-D, with NaN where the point is
    not computed; diverged losses stay +inf.
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
    def eig_ratio(self) -> np.ndarray | None:
        """|min_eig / max_eig| (Li et al.'s Fig. 8), NaN where not computed; +inf where the
        largest eigenvalue is 0 and the smallest is not. None without maps."""
        if self.eig is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.eig["min"] / self.eig["max"])

    def __getattr__(self, name: str) -> np.ndarray:
        """`s.train_loss`, `s.test_acc`, ...: the value arrays (NaN where not computed)."""
        if name in VALUE_NAMES:
            values = self.__dict__.get("values", {})
            if name in values:
                return values[name]
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


def _model_name(attrs: dict[str, Any], stem: str) -> str:
    spec = attrs.get("spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return stem
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
    """Read a surface file; raise UserError naming the file if it is not one."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise UserError(f"surface file {path} does not exist")
    if path.is_dir():
        raise UserError(f"surface file {path} is a directory, expected an HDF5 file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable HDF5 surface file ({reason})") from None
    with f:
        attrs = {str(k): _plain(v) for k, v in f.attrs.items()}
        fmt = attrs.get("format")
        if fmt is not None and fmt != FORMAT:
            raise UserError(f"{path}: attribute format is {fmt!r}, expected {FORMAT!r}")
        original = fmt is None
        if "xcoordinates" not in f or not isinstance(f["xcoordinates"], h5py.Dataset):
            raise UserError(f"{path} has no xcoordinates dataset, expected a loss-landscape surface file")
        x = _coordinates(f, "xcoordinates", path)
        y = None
        if "ycoordinates" in f and isinstance(f["ycoordinates"], h5py.Dataset):
            y = _coordinates(f, "ycoordinates", path)
        shape = (x.size,) if y is None else (y.size, x.size)

        values: dict[str, np.ndarray] = {}
        for name in VALUE_NAMES:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                continue
            data = np.array(f[name][()], dtype=np.float64)
            if original and y is not None and data.shape == (x.size, y.size) and data.shape != shape:
                # The original code allocates (nx, ny) but fills it through the
                # flat index of meshgrid(x, y), i.e. in (ny, nx) order.
                data = data.reshape(shape)
            if data.shape != shape:
                raise UserError(f"{path}: dataset {name} has shape {data.shape}, expected {shape} (ny, nx)")
            values[name] = data

        done: dict[str, np.ndarray] = {}
        for split in SPLITS:
            flag = f"{split}_done"
            if flag in f and isinstance(f[flag], h5py.Dataset):
                flags = np.asarray(f[flag][()])
                if flags.shape != shape:
                    raise UserError(f"{path}: dataset {flag} has shape {flags.shape}, expected {shape} (ny, nx)")
                done[split] = flags == 1

        eig = eig_computed = None
        if not original and all(n in f and isinstance(f[n], h5py.Dataset) for n in ("max_eig", "min_eig")):
            eig, eig_computed = _eigenvalue_maps(f, path, shape)
        centre = None
        if not original and HESSIAN_CENTRE in f and isinstance(f[HESSIAN_CENTRE], h5py.Group):
            centre = _centre_spectrum(f[HESSIAN_CENTRE], path)

    if not values:
        raise UserError(f"{path} has none of the datasets {', '.join(VALUE_NAMES)}")

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

    return Surface(
        path=path,
        x=x,
        y=y,
        values=values,
        fraction_done=fraction_done,
        model_name=_model_name(attrs, path.stem),
        attrs=attrs,
        original_format=original,
        eig=eig,
        eig_computed=eig_computed,
        eig_fraction_done=0.0 if eig_computed is None else float(eig_computed.mean()),
        eig_settings={k: attrs[f"hessian_{k}"] for k in EIG_SETTINGS if f"hessian_{k}" in attrs} if eig else {},
        centre_spectrum=centre,
    )


def _eigenvalue_maps(f, path: Path, shape: tuple) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `hessian` verb's maps, NaN where eig_done is not 1 (where there are no flags,
    the points with a value count as computed), and where they are computed."""
    import h5py

    eig = {}
    for key, name in (("max", "max_eig"), ("min", "min_eig")):
        data = np.array(f[name][()], dtype=np.float64)
        if data.shape != shape:
            raise UserError(f"{path}: dataset {name} has shape {data.shape}, expected {shape} (ny, nx)")
        eig[key] = data
    if "eig_done" in f and isinstance(f["eig_done"], h5py.Dataset):
        flags = np.asarray(f["eig_done"][()])
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

    out: dict[str, Any] = {str(k): _plain(v) for k, v in group.attrs.items()}

    def array(name: str) -> np.ndarray:
        if name in group and isinstance(group[name], h5py.Dataset):
            return np.asarray(group[name][()], dtype=np.float64).ravel()
        return np.zeros(0)

    out["top_eigenvalues"] = array("top_eigenvalues").tolist()
    out["density_grid"], out["density"] = array("density_grid"), array("density")
    if out["density_grid"].size != out["density"].size:
        raise UserError(f"{path}: {HESSIAN_CENTRE}/density has {out['density'].size} values for "
                        f"{out['density_grid'].size} grid points")
    for key in ("min_eigenvalue", "ratio_min_max", "trace", "trace_stderr"):
        out.setdefault(key, None)
    top, low = out["top_eigenvalues"], out["min_eigenvalue"]
    if out["ratio_min_max"] is None and top and top[0] and low is not None:
        out["ratio_min_max"] = abs(low / top[0])
    return out


def check_computed(surface: Surface, name: str) -> np.ndarray:
    """The values of `name`, or UserError if the file has no such dataset or none of it is computed."""
    if name not in surface.values:
        present = ", ".join(surface.values) or "none"
        raise UserError(f"{surface.path} has no {name} dataset (present: {present})")
    data = surface.values[name]
    if np.all(np.isnan(data)):
        raise UserError(f"{surface.path}: nothing is computed yet for {name} (0 of {data.size} points done)")
    return data
