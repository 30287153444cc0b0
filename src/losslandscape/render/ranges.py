"""Value ranges and grid geometry shared by every view, matplotlib and Plotly alike: the
colour/level range of a picture (`Range`, `value_range`, `auto_log`), clipping of diverged
points and of 3-D heights, and which part of a partial grid can be drawn (`compact_grid`,
`surface_lattice`) and how its cells are laid out (`half_step`, `cell_edges`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from losslandscape.errors import UserError
from losslandscape.numerics.grid import axis_levels


@dataclass(frozen=True)
class Range:
    """Colour / level range of one picture; `log` means a logarithmic scale,
    `exact` that the user fixed both ends (then levels are evenly spaced, as
    in the original code, rather than rounded)."""

    low: float
    high: float
    log: bool
    exact: bool = False

    def levels(self, n: int, cover: bool = False) -> np.ndarray:
        """About n contour levels inside [low, high] at round numbers; with
        `cover` the ends are included, so filled contours span the whole range."""
        if self.exact:
            return np.geomspace(self.low, self.high, n) if self.log else np.linspace(self.low, self.high, n)
        from matplotlib.ticker import LogLocator, MaxNLocator

        if self.log:
            decades = np.log10(self.high / self.low)
            per_decade = n / max(decades, 1e-12)
            subs = (1.0,) if per_decade < 2 else (1.0, 2.0, 5.0) if per_decade < 7 else np.arange(1.0, 10.0)
            lv = LogLocator(subs=subs, numticks=4 * n).tick_values(self.low, self.high)
            if np.count_nonzero((lv >= self.low) & (lv <= self.high)) < 3:
                lv = np.geomspace(self.low, self.high, n)
        else:
            lv = MaxNLocator(nbins=max(n - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(self.low, self.high)
        tol = 1e-9 * (self.high - self.low)
        lv = lv[(lv >= self.low - tol) & (lv <= self.high + tol)]
        if cover:
            lv = np.unique(np.concatenate([[self.low], lv, [self.high]]))
            # Drop a sliver band next to an end.
            if lv.size > 3 and (lv[1] - lv[0]) < 0.05 * (lv[2] - lv[1]):
                lv = np.delete(lv, 1)
            if lv.size > 3 and (lv[-1] - lv[-2]) < 0.05 * (lv[-2] - lv[-3]):
                lv = np.delete(lv, -2)
        return lv

    def ticks(self) -> np.ndarray:
        """Round-number colour-bar ticks inside the range (1-2-5 steps on a log scale)."""
        from matplotlib.ticker import LogLocator, MaxNLocator

        if self.log:
            subs = (1.0, 2.0, 5.0) if np.log10(self.high / self.low) < 3 else (1.0,)
            loc = LogLocator(subs=subs, numticks=30)
        else:
            loc = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
        t = loc.tick_values(self.low, self.high)
        tol = 1e-9 * (self.high - self.low)
        t = t[(t >= self.low - tol) & (t <= self.high + tol)]
        if t.size < 2:
            t = np.unique(np.concatenate([[self.low], t, [self.high]]))
        return t

    def norm(self):
        from matplotlib.colors import LogNorm, Normalize

        return LogNorm(self.low, self.high) if self.log else Normalize(self.low, self.high)


# A loss whose finite positive values span more than this ratio gets a log
# scale unless the user asks otherwise: a trained net's loss is ~1e-3 at the
# minimum and ~1e2 at the grid's corners, and linear levels leave the basin blank.
AUTO_LOG_RATIO = 100.0


def auto_log(
    arrays: list[np.ndarray],
    value: str,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool | None = None,
) -> bool:
    """Whether to draw on a log scale. `log` True or False is the user's choice
    (--log, --linear); None picks: log for a loss whose finite positive values
    span more than two decades (max/min > AUTO_LOG_RATIO), when neither vmin
    nor vmax is given; linear otherwise (and always for accuracy)."""
    if log is not None:
        return bool(log)
    if value != "loss" or vmin is not None or vmax is not None:
        return False
    finite = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    positive = finite[np.isfinite(finite) & (finite > 0)]
    if positive.size < 2:
        return False
    return bool(positive.max() > AUTO_LOG_RATIO * positive.min())


def value_range(
    arrays: list[np.ndarray],
    where: str,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
) -> Range:
    """The range that a picture of `arrays` spans: vmin/vmax where given, else the
    finite data's extremes (smallest positive value with `log`). `where` names
    the data in error messages."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if finite.size == 0:
        raise UserError(f"{where}: every computed point diverged (+inf); nothing to draw")
    if log:
        if vmin is not None and vmin <= 0:
            raise UserError(f"--vmin is {vmin}, expected a value > 0 with --log")
        if vmax is not None and vmax <= 0:
            raise UserError(f"--vmax is {vmax}, expected a value > 0 with --log")
        positive = finite[finite > 0]
        if positive.size == 0 and vmin is None:
            raise UserError(f"{where}: no value is > 0, so it cannot be drawn with --log")
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise UserError(f"--vmin {vmin} is not below --vmax {vmax}")
    low = vmin if vmin is not None else float(positive.min() if log else finite.min())
    high = vmax if vmax is not None else float(finite.max())
    if vmin is None and vmax is not None and low >= high:
        low = high / 10 if log else high - 1.0
    if high <= low:  # a flat surface, or vmin above every value
        high = low * 10 if log else low + max(abs(low) * 0.1, 1e-12)
    return Range(float(low), float(high), log, exact=vmin is not None and vmax is not None)


def shared_range(
    arrays: list[np.ndarray], value: str, where: str, vmin=None, vmax=None, log: bool | None = None
) -> Range:
    """One range for pictures of `arrays` (one value): the scale by `auto_log`, the ends by
    `value_range`."""
    log = auto_log(arrays, value, vmin, vmax, log)
    return value_range(arrays, where, vmin, vmax, log)


def clip_diverged(z: np.ndarray, rng: Range, zmax: float | None = None) -> np.ndarray:
    """z with +inf clipped to the top of the range (or zmax), -inf to the bottom,
    values above zmax clipped to zmax; NaN (not computed) kept."""
    top = rng.high if zmax is None else zmax
    z = z.copy()
    z[np.isposinf(z)] = top
    z[np.isneginf(z)] = rng.low
    if zmax is not None:
        z[z > zmax] = zmax
    if rng.log:  # zero and below have no logarithm: floor them at the range's bottom
        computed = ~np.isnan(z)
        z[computed & (z < rng.low)] = rng.low
    return z


def clip_infinite(z: np.ndarray, rng: Range) -> np.ndarray:
    """z with +-inf at the ends of the range (NaN, not computed, and values beyond it kept)."""
    return np.where(np.isposinf(z), rng.high, np.where(np.isneginf(z), rng.low, z))


def height_top(rng: Range, zmax: float | None) -> float:
    """Where a 3-D view clips its heights: zmax inside the range, else the range's top."""
    top = rng.high if zmax is None else min(zmax, rng.high)
    return rng.high if top <= rng.low else top


def check_log_zmax(log: bool, zmax: float | None) -> None:
    if log and zmax is not None and zmax <= 0:
        raise UserError(f"--zmax is {zmax}, expected a value > 0 on a log scale (or give --linear)")


def compact_grid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop the rows and columns with no computed point.

    Returns x, y, z of the smaller grid and the kept row and column indices
    into the full grid. A partial file computed coarse to fine keeps only the
    rows and columns reached so far.
    """
    computed = ~np.isnan(z)
    rows = np.flatnonzero(computed.any(axis=1))
    cols = np.flatnonzero(computed.any(axis=0))
    return x[cols], y[rows], z[np.ix_(rows, cols)], rows, cols


def complete_cells(computed: np.ndarray) -> np.ndarray:
    """(ny-1, nx-1): cells whose four corners are computed."""
    return computed[:-1, :-1] & computed[1:, :-1] & computed[:-1, 1:] & computed[1:, 1:]


def surface_lattice(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the sub-grid that draws the most of a partial surface.

    Lines, filled contours and 3-D surfaces need cells with four computed
    corners. Halfway through a coarse-to-fine pass the finest rows and columns
    have holes everywhere, so every cell of the full grid is broken while the
    previous pass's coarser grid is whole. Candidates are the rows and columns
    with any computed point, those of them every 2nd, 4th, 8th, ... grid index
    from the first, and those of each level of the coarse-to-fine bisection
    (`grid.levels`); the one whose complete cells cover the largest area wins
    (the finest on a tie). A complete surface always gets its full grid.
    """
    computed = ~np.isnan(z)
    rows = np.flatnonzero(computed.any(axis=1))
    cols = np.flatnonzero(computed.any(axis=0))
    candidates = []
    stride = 1
    while stride < max(z.shape):  # stride-aligned passes (files of the original code, older files)
        candidates.append((rows[(rows - rows[0]) % stride == 0] if rows.size else rows,
                           cols[(cols - cols[0]) % stride == 0] if cols.size else cols))
        stride *= 2
    ry, cx = axis_levels(z.shape[0]), axis_levels(z.shape[1])
    for level in range(int(max(ry.max(), cx.max())) + 1):  # the bisection levels this tool computes in
        candidates.append((rows[ry[rows] <= level], cols[cx[cols] <= level]))
    best, best_area = (rows, cols), -1.0
    for r, c in candidates:
        if r.size < 2 or c.size < 2:
            continue
        cells = complete_cells(computed[np.ix_(r, c)])
        area = float((np.abs(np.diff(y[r]))[:, None] * np.abs(np.diff(x[c]))[None, :])[cells].sum())
        if area > best_area * (1 + 1e-6) or (area >= best_area * (1 - 1e-6) and r.size * c.size > best[0].size * best[1].size):
            best, best_area = (r, c), area
    return best


def equal_aspect(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal axis scales when both directions span comparable ranges."""
    wx, wy = np.ptp(x), np.ptp(y)
    return wx > 0 and wy > 0 and 1 / 3 <= wx / wy <= 3


def half_step(a: np.ndarray) -> float:
    """Half the grid's smallest step along an axis (0.5 for a one-point axis): a cell's half width."""
    return float(np.min(np.abs(np.diff(a)))) / 2 if a.size > 1 else 0.5


def cell_edges(a: np.ndarray, half: float) -> np.ndarray:
    """Cell edges halfway between points; the outer cells reach half a grid step out."""
    sign = -1.0 if a.size > 1 and a[1] < a[0] else 1.0
    return np.concatenate([[a[0] - sign * half], (a[:-1] + a[1:]) / 2, [a[-1] + sign * half]])


def padded(a: np.ndarray) -> list[float]:
    """The full grid's extent, half a step out: a map spans the whole grid however little is computed."""
    half = half_step(a)
    return [float(a.min()) - half, float(a.max()) + half]
