"""Grid axes, the order in which points are computed, and work units.

A point is a flat index into the surface arrays, shape (nx,) for a 1-D curve
or (ny, nx) for a 2-D surface, row-major: flat = j * nx + i is (x[i], y[j]).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from losslandscape.errors import UserError

# The most points a grid may have, checked before anything is allocated: every point is a pass
# over the data, so these are far beyond any run, and the schedule of the largest grid (int64
# levels and order) takes a few hundred MB.
MAX_AXIS_POINTS = 10**6  # on one axis
MAX_POINTS = 10**7  # on the whole grid


def parse_axis(key: str, text: str) -> np.ndarray:
    """ "lo:hi:n" -> n float64 coordinates from lo to hi, both included: lo, hi and hi - lo finite,
    1 <= n <= MAX_AXIS_POINTS, and the step a normal float64 (not 0, not subnormal) whose points
    all differ."""
    n, lo, hi = axis_form(key, text)
    axis = np.linspace(lo, hi, n)
    if n > 1 and not (np.diff(axis) > 0).all():
        raise UserError(f"{key}: {_shown(text)} is not valid; its {n} points are not distinct numbers (the step "
                        f"{(hi - lo) / (n - 1):g} is too small next to {max(abs(lo), abs(hi)):g}); widen the range "
                        "or take fewer points")
    return axis


def axis_form(key: str, text: str) -> tuple[int, float, float]:
    """(n, lo, hi) of "lo:hi:n", checked as parse_axis says, without making the axis."""
    expected = 'expected "lo:hi:n" with numbers lo < hi and an integer n >= 1, e.g. "-1:1:51"'
    parts = str(text).split(":")
    if len(parts) != 3:
        raise UserError(f"{key}: {_shown(text)} is not valid; {expected}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        n = int(parts[2])
    except ValueError:
        raise UserError(f"{key}: {_shown(text)} is not valid; {expected}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or n < 1 or (n > 1 and not lo < hi) or (n == 1 and lo > hi):
        raise UserError(f"{key}: {_shown(text)} is not valid; {expected}")
    if n > MAX_AXIS_POINTS:
        raise UserError(f"{key}: {_shown(text)} has {n:,} points; expected at most {MAX_AXIS_POINTS:,} on an axis")
    if n > 1:
        span = hi - lo
        if not np.isfinite(span):
            raise UserError(f"{key}: {_shown(text)} is not valid; hi - lo is beyond the largest number "
                            f"({sys.float_info.max:.4g}); expected a narrower range")
        if span / (n - 1) < sys.float_info.min:
            raise UserError(f"{key}: {_shown(text)} is not valid; its step {span / (n - 1):g} is below the smallest "
                            f"normal number ({sys.float_info.min:.4g}); expected a wider range or fewer points")
    return n, lo, hi


def check_size(shape: tuple[int, ...], key: str = "grid") -> None:
    """One line unless a grid of `shape` ((nx,) or (ny, nx)) has at most MAX_POINTS points."""
    total = int(np.prod([int(n) for n in shape], dtype=object))
    if total > MAX_POINTS:
        raise UserError(f"{key}: {' x '.join(f'{n:,}' for n in reversed(shape))} = {total:,} points; expected at most "
                        f"{MAX_POINTS:,} in all")


def _shown(text) -> str:
    text = str(text)
    return repr(text) if len(text) <= 80 else f"{text[:40]!r}... ({len(text):,} characters)"


AUTO_POINTS = 21
AUTO_MARGIN = 0.1  # of the paths' extent, on each side


def is_auto(text: str) -> bool:
    """ "auto" or "auto:N": the range is chosen from the data (a trajectory's paths, or how fast
    the loss grows along the direction: autorange.py)."""
    return str(text) == "auto" or str(text).startswith("auto:")


def auto_points(key: str, text: str) -> int:
    """The number of points of an auto axis: AUTO_POINTS for "auto", N for "auto:N" (N >= 2)."""
    n = AUTO_POINTS
    if ":" in text:
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            n = 0
        if not 2 <= n <= MAX_AXIS_POINTS:
            raise UserError(f'{key}: {_shown(text)} is not valid; expected "auto" or "auto:N" with an integer N from 2 '
                            f"to {MAX_AXIS_POINTS:,}")
    return n


def auto_axis(key: str, text: str, values) -> str:
    """The "lo:hi:n" an auto axis resolves to: the extent of `values` and 0, plus a margin."""
    n = auto_points(key, text)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    pad = AUTO_MARGIN * (hi - lo) or 1.0
    lo, hi = lo - pad, hi + pad
    # a step that puts a point on 0 (the final model) and still reaches both ends: k steps below 0
    step = (hi - lo) / (n - 2) if n > 2 else (hi - lo)
    below = min(n - 1, int(np.ceil(-lo / step)))
    return f"{-below * step!r}:{(n - 1 - below) * step!r}:{n}"


@dataclass(frozen=True)
class GridAxes:
    x: np.ndarray
    y: np.ndarray | None = None

    @classmethod
    def from_spec(cls, grid) -> "GridAxes":
        return cls(parse_axis("grid.x", grid.x), parse_axis("grid.y", grid.y) if grid.y else None)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """(P,) flat indices -> (P, 2) coefficients (a, b) of the x and y directions."""
        points = np.asarray(points, dtype=np.int64)
        nx = len(self.x)
        a = self.x[points % nx]
        b = self.y[points // nx] if self.y is not None else np.zeros(len(points))
        return np.stack([a, b], axis=1)


def coarse_to_fine(shape: tuple[int, ...]) -> np.ndarray:
    """All flat indices of a (nx,) or (ny, nx) grid, in the order they are computed.

    Each axis is bisected recursively: level 0 of an axis of n points is its
    two ends {0, n-1}, level k adds round(j * (n-1) / 2**k) for j = 0..2**k, halves up
    (level 1 adds the middle, the centre of an odd axis), until every index has
    a level. A point's level is the largest of its axes' levels (see `levels`);
    points are ordered by level, row-major within a level. So the corners come
    first, then the centre and the edge midpoints, ..., and a partly computed
    surface is already a whole low-resolution surface.
    """
    return np.argsort(levels(shape), kind="stable").astype(np.int64)


def levels(shape: tuple[int, ...]) -> np.ndarray:
    """(N,) int64: the coarse-to-fine level of every flat point of the grid (0 = coarsest)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f"shape must be (nx,) or (ny, nx) with sizes >= 1, not {shape}")
    level = axis_levels(shape[0])
    for n in shape[1:]:
        level = np.maximum.outer(level, axis_levels(n))
    return level.ravel()


def axis_levels(n: int) -> np.ndarray:
    """(n,) int64: the bisection level of each index of an axis of n points."""
    level = np.full(n, -1, dtype=np.int64)
    level[[0, n - 1]] = 0
    k = 0
    while (level < 0).any():
        k += 1
        j = np.arange(2**k + 1, dtype=np.int64)
        # round(j * (n-1) / 2**k), halves up, in exact integer arithmetic
        idx = (2 * j * (n - 1) + 2**k) // 2 ** (k + 1)
        new = idx[level[idx] < 0]
        level[new] = k
    return level


def split_units(points: np.ndarray, unit_size: int) -> list[np.ndarray]:
    """Consecutive chunks of at most unit_size points, in the given order."""
    if unit_size < 1:
        raise ValueError("unit_size must be >= 1")
    points = np.asarray(points, dtype=np.int64)
    return [points[i:i + unit_size] for i in range(0, len(points), unit_size)]


def assign_tasks(points: np.ndarray, num_tasks: int, unit_size: int) -> list[np.ndarray]:
    """Deal units round-robin to num_tasks tasks; every point goes to exactly one task.

    Round-robin over coarse-to-fine units keeps each task's share of every
    resolution level about equal, so all tasks finish the coarse surface early.
    """
    if num_tasks < 1:
        raise ValueError("num_tasks must be >= 1")
    units = split_units(points, unit_size)
    tasks = [units[k::num_tasks] for k in range(num_tasks)]
    return [np.concatenate(t) if t else np.zeros(0, dtype=np.int64) for t in tasks]
