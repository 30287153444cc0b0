"""The view layer both back ends draw from (matplotlib: plot1d, plot2d, curvature, paths;
Plotly: html): the render options, which splits and values a view draws, one value of a 2-D
surface prepared for drawing (`View2D`: clipped, its drawable lattice, its best point), the
marks (the trained model at (0, 0), the best point), the diverged points of a 1-D surface,
and the data of the `hessian` verb's maps. Nothing here imports matplotlib or Plotly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from losslandscape.surfacefile import format as fileformat
from losslandscape.errors import UserError
from losslandscape.render import labels, ranges
from losslandscape.surfacefile.read import SPLITS, Surface, check_computed

RATIO_RANGE = (0.0, 0.5)  # the colour scale of Li et al.'s Fig. 8


@dataclass(frozen=True)
class Options:
    """How every view is drawn; None leaves the choice to the view."""

    vmin: float | None = None
    """Bottom of the colour range and contour levels (of the ratio map too, 0 by default)."""
    vmax: float | None = None
    """Top of the colour range and contour levels (of the ratio map too, 0.5 by default)."""
    levels: int | None = None
    """About how many contour levels (each view has its default)."""
    log: bool | None = None
    """True a log value scale, False a linear one, None log for a loss spanning more than two decades."""
    zmax: float | None = None
    """Where the heights of the 3-D views are clipped."""

    def check(self) -> None:
        if self.levels is not None and self.levels < 2:
            raise UserError(f"--levels is {self.levels}, expected at least 2")
        if self.zmax is not None and not np.isfinite(self.zmax):
            raise UserError(f"--zmax is {self.zmax}, expected a finite number")


# ---------------------------------------------------------------- what a view draws


def nothing_computed(surface: Surface) -> bool:
    return all(f == 0 for f in surface.fraction_done.values())


def paths_only(surface: Surface) -> bool:
    """A 2-D file with training paths and nothing computed yet: its views draw the paths alone."""
    return surface.ndim == 2 and bool(surface.trajectories) and nothing_computed(surface)


def requested_splits(surface: Surface) -> list[str]:
    """The splits the file's runs asked for (fileformat.requested_splits, on the loaded attributes);
    [] where the file does not say."""
    try:  # requested_splits reads nothing but the attributes of the open file
        return fileformat.requested_splits(SimpleNamespace(attrs=surface.attrs))
    except (KeyError, TypeError, ValueError):
        return []


def splits_to_draw(surface: Surface, split: str | None) -> list[str]:
    """Splits to draw: the one asked for, or every split with something computed (with nothing
    computed in a file with paths: the splits it was asked for, to draw the paths)."""
    if split is not None and split not in surface.splits:
        present = ", ".join(surface.values)
        raise UserError(f"{surface.path} has no {split}_loss or {split}_acc dataset (present: {present})")
    if paths_only(surface):
        asked = [sp for sp in requested_splits(surface) if sp in surface.splits]
        return [split] if split is not None else asked or surface.splits
    if split is not None:
        if surface.fraction_done[split] == 0:
            raise UserError(f"{surface.path}: nothing is computed yet for split {split} (0 points done)")
        return [split]
    splits = [s for s in surface.splits if surface.fraction_done[s] > 0]
    if not splits:
        raise UserError(f"{surface.path}: nothing is computed yet (0 points done)")
    return splits


def check_value(surfaces: list[Surface], value: str | None, field: str = "--value") -> None:
    """UserError (one line, naming `field`) where the value asked for is accuracy and a file holds none."""
    for s in surfaces:
        if value == "acc" and not s.has_accuracy:
            raise UserError(f"{field} acc: {s.path} holds no accuracy (its loss defines none, so the file "
                            "has no _acc datasets); draw its loss")


def held_values(surfaces: list[Surface], value: str | None) -> list[str]:
    """The values a view of every value draws: the one asked for, else those some file holds
    (loss alone where no file holds an accuracy)."""
    if value is not None:
        return [value]
    return [v for v in ("loss", "acc") if any(v in s.held_values for s in surfaces)]


def value_for(surface: Surface, split: str, value: str | None) -> str:
    """The value a single-value view draws: the one asked for, else loss (acc if no loss)."""
    if value is not None:
        return value
    return "loss" if f"{split}_loss" in surface.values else "acc"


def computed_pairs(surfaces: list[Surface], splits: list[str], values: list[str]) -> list[tuple[str, str]]:
    """(split, value) pairs asked for and computed in every file, splits first (train loss, train acc, ...)."""
    pairs = []
    for split in splits:
        for value in values:
            name = f"{split}_{value}"
            if all(name in s.values and not np.all(np.isnan(s.values[name])) for s in surfaces):
                pairs.append((split, value))
    if not pairs:
        asked = ", ".join(f"{s}_{v}" for s in splits for v in values)
        where = str(surfaces[0].path) if len(surfaces) == 1 else "these files together"
        raise UserError(f"{where}: nothing is computed yet for {asked}")
    return pairs


def compare_splits(surfaces: list[Surface]) -> list[str]:
    """The splits computed (some point) in every file."""
    return [sp for sp in SPLITS if all(sp in s.splits and s.fraction_done[sp] > 0 for s in surfaces)]


# ---------------------------------------------------------------- marks


def centre_inside(surface: Surface) -> bool:
    """Whether the grid's rectangle reaches (0, 0), the trained model."""
    return bool(surface.x.min() <= 0 <= surface.x.max() and surface.y.min() <= 0 <= surface.y.max())


def centre_on_grid(surface: Surface) -> tuple[int, int] | None:
    """(row, column) of the grid point at (0, 0), None when (0, 0) is not a grid point."""
    i, j = int(np.argmin(np.abs(surface.x))), int(np.argmin(np.abs(surface.y)))
    on_grid = abs(surface.x[i]) <= 1e-9 * np.ptp(surface.x) and abs(surface.y[j]) <= 1e-9 * np.ptp(surface.y)
    return (j, i) if on_grid else None


def diverged_points(surface: Surface, split: str) -> np.ndarray:
    """Where the split's loss diverged (+-inf; the loader turns a computed NaN into +inf)."""
    loss = surface.values.get(f"{split}_loss")
    return np.zeros(surface.x.shape, dtype=bool) if loss is None else np.isinf(loss)


def diverged_note(surfaces: list[Surface], name: str) -> str:
    """'\\n3 diverged points, drawn at the top of the range', or '' where none diverged."""
    n = sum(int(np.isposinf(s.values[name]).sum()) for s in surfaces)
    return f"\n{n} diverged point{'s' if n != 1 else ''}, drawn at the top of the range" if n else ""


# ---------------------------------------------------------------- 2-D


class View2D:
    """One value of a 2-D surface, prepared for drawing. With `empty_ok`, a value with nothing
    computed yet is a view too (`empty`: no surface, a placeholder range), for the paths of a
    PCA surface that has none yet."""

    def __init__(
        self,
        surface: Surface,
        split: str,
        value: str,
        vmin: float | None = None,
        vmax: float | None = None,
        log: bool | None = None,
        rng: ranges.Range | None = None,
        empty_ok: bool = False,
    ):
        if surface.y is None:
            raise UserError(f"{surface.path} is a 1-D surface (no ycoordinates); 2-D views need a 2-D one")
        self.surface, self.split, self.value = surface, split, value
        self.name = f"{split}_{value}"
        z = surface.values.get(self.name)
        self.empty = bool(empty_ok and z is not None and np.all(np.isnan(z)))
        if self.empty:
            self.range = rng or ranges.Range(0.0, 1.0, False)
        else:
            z = check_computed(surface, self.name)
            self.range = rng or ranges.shared_range([z], value, f"{surface.path} {self.name}", vmin, vmax, log)
        self.full = ranges.clip_diverged(z, self.range)  # (ny, nx)
        self.points_x, self.points_y, self.points_z, _, _ = ranges.compact_grid(surface.x, surface.y, self.full)
        self.rows, self.cols = ranges.surface_lattice(surface.x, surface.y, self.full)
        self.x, self.y = surface.x[self.cols], surface.y[self.rows]
        self.z = self.full[np.ix_(self.rows, self.cols)]  # (ny', nx') of the lattice
        computed = ~np.isnan(self.z)
        self.drawable = self.z.shape[0] >= 2 and self.z.shape[1] >= 2 and ranges.complete_cells(computed).any()

    @property
    def masked(self) -> np.ma.MaskedArray:
        return np.ma.masked_invalid(self.z)

    @property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        return np.meshgrid(self.x, self.y)  # each (ny', nx')

    def computed_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, value of every computed point (1-D arrays)."""
        X, Y = np.meshgrid(self.surface.x, self.surface.y)
        ok = ~np.isnan(self.full)
        return X[ok], Y[ok], self.full[ok]

    def label(self) -> str:
        return labels.value_label(self.split, self.value, self.range.log)

    def best(self) -> tuple[float, float, float, str] | None:
        """x, y, value and legend label of the best computed point: the minimum
        of a loss, the maximum of an accuracy; None if every point diverged."""
        z = self.surface.values[self.name]
        finite = np.isfinite(z)
        if not finite.any():
            return None
        sign = -1.0 if self.value == "acc" else 1.0  # the best accuracy is the highest
        j, i = np.unravel_index(np.argmin(np.where(finite, sign * z, np.inf)), z.shape)
        x, y, v = float(self.surface.x[i]), float(self.surface.y[j]), float(z[j, i])
        at = f"({labels.coord_text(x, self.surface.x)}, {labels.coord_text(y, self.surface.y)})"
        word = "maximum" if self.value == "acc" else "minimum"
        return x, y, v, f"{word} {at} = {v:.4g}"

    def partial(self) -> bool:
        return self.surface.fraction_done.get(self.split, 1.0) < 1.0

    def extend(self) -> str:
        """Colour-bar arrows for values outside the range."""
        finite = self.full[np.isfinite(self.full)]
        low = bool(finite.size) and finite.min() < self.range.low
        high = bool(finite.size) and finite.max() > self.range.high
        return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((low, high), "both")


def split_views(
    surface: Surface, pairs: list[tuple[str, str]], vmin=None, vmax=None, log: bool | None = None
) -> list[View2D]:
    """A view per (split, value) of one file; the views of one value share one
    range, so train and test get the same contour levels and colour scale. A value
    with nothing computed is refused, except in a file with training paths (a PCA
    surface) and nothing computed at all: then its views are `empty`, to draw the
    paths alone."""
    shared: dict = {}
    alone = bool(surface.trajectories) and nothing_computed(surface)
    for value in dict.fromkeys(v for _, v in pairs):
        names = [f"{sp}_{v}" for sp, v in pairs if v == value]
        if alone and all(n in surface.values for n in names):
            shared[value] = None
            continue
        arrays = [check_computed(surface, n) for n in names]
        shared[value] = ranges.shared_range(arrays, value, f"{surface.path} {value}", vmin, vmax, log)
    return [View2D(surface, sp, v, rng=shared[v], empty_ok=shared[v] is None) for sp, v in pairs]


# ---------------------------------------------------------------- the `hessian` verb's results


def has_maps(surface: Surface) -> bool:
    """Whether the file has eigenvalue maps with at least one computed point."""
    return surface.eig is not None and bool(surface.eig_computed.any())


def check_maps(surface: Surface, kind: str) -> None:
    if surface.eig is None:
        raise UserError(f"--kind {kind}: {surface.path} has no Hessian eigenvalue maps (max_eig, min_eig); "
                        f"compute them with `losslandscape hessian {surface.path}`")
    if not surface.eig_computed.any():
        raise UserError(f"{surface.path}: nothing is computed yet for the Hessian eigenvalue maps "
                        f"(0 of {surface.eig_computed.size} points done)")


def check_spectrum(surface: Surface) -> None:
    if surface.centre_spectrum is None:
        raise UserError(f"--kind spectrum: {surface.path} has no Hessian spectrum at the centre (hessian_centre); "
                        f"compute it with `losslandscape hessian {surface.path} --centre`")


def ratio_range(vmin: float | None = None, vmax: float | None = None) -> ranges.Range:
    """The ratio map's colour scale: 0 to 0.5 as in the paper, or --vmin/--vmax (one given
    beyond the other's default moves that end half a unit away, as `ranges.value_range` does)."""
    low = RATIO_RANGE[0] if vmin is None else float(vmin)
    high = RATIO_RANGE[1] if vmax is None else float(vmax)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UserError(f"--vmin/--vmax: the ratio map needs finite numbers, not {low} and {high}")
    if low >= high:
        if vmin is not None and vmax is not None:
            raise UserError(f"--vmin {vmin} is not below --vmax {vmax}")
        span = RATIO_RANGE[1] - RATIO_RANGE[0]
        low, high = (low, low + span) if vmax is None else (high - span, high)
    return ranges.Range(low, high, log=False, exact=True)


def eigenvalue_range(z: np.ndarray, centred: bool) -> ranges.Range:
    """The colour range of an eigenvalue map: its finite extremes, or with `centred` (the
    smallest eigenvalue, on a diverging scale) symmetric about 0."""
    if centred:
        bound = np.abs(z[np.isfinite(z)])
        bound = float(bound.max()) if bound.size and bound.max() > 0 else 1e-12
        return ranges.Range(-bound, bound, log=False)
    finite = z[np.isfinite(z)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + max(abs(low) * 0.1, 1e-12)
    return ranges.Range(low, high, log=False)


def loss_lines(surface: Surface, split: str | None, log: bool | None = None) -> View2D | None:
    """The loss whose contours go over the maps: that of the Hessian's split, else of the first
    split with a computed loss; on the range the loss views of the file use (`split_views`),
    so the lines sit at the contour view's levels. None when no loss is computed."""
    computed = [sp for sp in SPLITS if f"{sp}_loss" in surface.values
                and not np.all(np.isnan(surface.values[f"{sp}_loss"]))]
    if not computed:
        return None
    chosen = split if split in computed else computed[0]
    try:
        (view,) = [v for v in split_views(surface, [(sp, "loss") for sp in computed], log=log) if v.split == chosen]
    except UserError:  # every computed point diverged: no lines
        return None
    return view

