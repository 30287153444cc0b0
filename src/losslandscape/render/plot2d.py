"""2-D views of one value of a surface: contour lines, filled contours, heat map,
3-D surface, and several surfaces side by side.

All start from the (ny, nx) array with NaN where not computed. The heat map
draws every computed point (rows and columns with none are dropped, so the
cells of a coarse partial grid fill the picture); points not computed stay
blank. Lines, filled contours and the 3-D surface need whole cells, so they
draw the sub-grid of `common.surface_lattice`: the full grid once complete,
the last complete coarse pass while a coarse-to-fine run is under way. Where
no cell is whole yet, they draw the computed points as dots. Diverged points
(+inf) are clipped to the top of the colour range.

The value scale is logarithmic with --log, linear with --linear, and by
default (log None) logarithmic for a loss spanning more than two decades
(`common.auto_log`); the colour-bar label then ends in "(log scale)".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common
from losslandscape.render.surfacefile import VALUE_LABELS, Surface, check_computed

CONTOUR_LEVELS = 15  # the original code: vmin=0.1, vmax=10, vlevel=0.5 -> 20 levels
FILLED_LEVELS = 25


class View2D:
    """One value of a 2-D surface, prepared for drawing."""

    def __init__(
        self,
        surface: Surface,
        split: str,
        value: str,
        vmin: float | None = None,
        vmax: float | None = None,
        log: bool | None = None,
        rng: common.Range | None = None,
    ):
        if surface.y is None:
            raise UserError(f"{surface.path} is a 1-D surface (no ycoordinates); 2-D views need a 2-D one")
        self.surface, self.split, self.value = surface, split, value
        self.name = f"{split}_{value}"
        z = check_computed(surface, self.name)
        if rng is None:
            log = common.auto_log([z], value, vmin, vmax, log)
            rng = common.value_range([z], f"{surface.path} {self.name}", vmin, vmax, log)
        self.range = rng
        self.full = common.clip_diverged(z, self.range)  # (ny, nx)
        self.points_x, self.points_y, self.points_z, _, _ = common.compact_grid(surface.x, surface.y, self.full)
        rows, cols = common.surface_lattice(surface.x, surface.y, self.full)
        self.x, self.y = surface.x[cols], surface.y[rows]
        self.z = self.full[np.ix_(rows, cols)]  # (ny', nx') of the lattice
        computed = ~np.isnan(self.z)
        self.drawable = self.z.shape[0] >= 2 and self.z.shape[1] >= 2 and common.complete_cells(computed).any()

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
        return common.value_label(self.split, self.value, self.range.log)

    def extend(self) -> str:
        """Colour-bar arrows for values outside the range."""
        finite = self.full[np.isfinite(self.full)]
        low = bool(finite.size) and finite.min() < self.range.low
        high = bool(finite.size) and finite.max() > self.range.high
        return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((low, high), "both")

    def decorate(self, ax, title: bool = True) -> None:
        s = self.surface
        ax.set_xlabel(common.axis_label(s, "x"))
        ax.set_ylabel(common.axis_label(s, "y"))
        ax.set_xlim(s.x.min(), s.x.max())
        ax.set_ylim(s.y.min(), s.y.max())
        if common.equal_aspect(s.x, s.y):
            ax.set_aspect("equal")
        if title:
            ax.set_title(common.title(s, self.split, self.value))


def _colorbar(fig, mappable, ax, rng: common.Range, label: str, **kwargs):
    cbar = fig.colorbar(mappable, ax=ax, **kwargs)
    cbar.set_label(label)
    _round_ticks(cbar, rng)
    return cbar


def _round_ticks(cbar, rng: common.Range) -> None:
    """Colour-bar ticks at round values, written plainly (0.05, not 5e-2)."""
    from matplotlib.ticker import FuncFormatter

    cbar.set_ticks(rng.ticks())
    if rng.log:
        cbar.minorticks_off()
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _scalar_mappable(rng: common.Range):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=rng.norm(), cmap=common.CMAP)


def _dots(ax, view: View2D, size: float = 12):
    """The computed points as coloured dots: the fallback while no cell is whole."""
    x, y, z = view.computed_points()
    return ax.scatter(x, y, c=z, s=size, cmap=common.CMAP, norm=view.range.norm(), edgecolors="none")


def _mark_computed(ax, view: View2D) -> None:
    """Small grey dots on the computed points of a partial surface."""
    x, y, _ = view.computed_points()
    ax.plot(x, y, ".", color="0.4", ms=1.5, zorder=0)


def _line_levels(rng: common.Range, filled_levels: np.ndarray) -> np.ndarray:
    """A few black lines over filled contours, at round levels."""
    inner = rng.levels(7)
    return inner if inner.size else filled_levels[::4]


def _filled_into(ax, view: View2D, lv: np.ndarray, extend: str):
    """Filled contours with a few black lines (dots while no cell is whole); returns the mappable."""
    if not view.drawable:
        return _dots(ax, view)
    X, Y = view.grid
    cf = ax.contourf(X, Y, view.masked, levels=lv, cmap=common.CMAP, norm=view.range.norm(), extend=extend)
    ax.contour(X, Y, view.masked, levels=_line_levels(view.range, lv), colors="k", linewidths=0.4, alpha=0.6)
    return cf


def contour(view: View2D, out: Path, fmt: str, levels: int | None = None) -> Path:
    with common.paper_style():
        fig = common.new_figure()
        ax = fig.add_subplot()
        if view.drawable:
            X, Y = view.grid
            lv = view.range.levels(levels or CONTOUR_LEVELS)
            cs = ax.contour(X, Y, view.masked, levels=lv, cmap=common.CMAP, norm=view.range.norm(), linewidths=0.8)
            if len(cs.levels):
                # Every other level: labels on all of them crowd a 4-inch figure.
                ax.clabel(cs, cs.levels[::2], inline=True, fontsize=6.5, fmt=common.level_format)
            if view.surface.fraction_done.get(view.split, 1.0) < 1.0:
                _mark_computed(ax, view)
        else:
            _dots(ax, view)
        view.decorate(ax)
        # A continuous bar: the lines' own colours read better against it.
        _colorbar(fig, _scalar_mappable(view.range), ax, view.range, view.label())
        return common.save(fig, out, fmt)


def filled(view: View2D, out: Path, fmt: str, levels: int | None = None) -> Path:
    with common.paper_style():
        fig = common.new_figure()
        ax = fig.add_subplot()
        lv = view.range.levels(levels or FILLED_LEVELS, cover=True)
        mappable = _filled_into(ax, view, lv, view.extend())
        view.decorate(ax)
        _colorbar(fig, mappable, ax, view.range, view.label(), extend=view.extend())
        return common.save(fig, out, fmt)


def heatmap(view: View2D, out: Path, fmt: str) -> Path:
    with common.paper_style():
        fig = common.new_figure()
        ax = fig.add_subplot()
        hx, hy = _half_step(view.surface.x), _half_step(view.surface.y)
        # One cell per computed row and column, centred on its point; with
        # explicit edges this works for a single computed row or column too.
        mesh = ax.pcolormesh(
            _edges(view.points_x, hx),
            _edges(view.points_y, hy),
            np.ma.masked_invalid(view.points_z),
            shading="flat",
            cmap=common.CMAP,
            norm=view.range.norm(),
        )
        view.decorate(ax)
        ax.set_xlim(view.surface.x.min() - hx, view.surface.x.max() + hx)
        ax.set_ylim(view.surface.y.min() - hy, view.surface.y.max() + hy)
        _colorbar(fig, mesh, ax, view.range, view.label(), extend=view.extend())
        return common.save(fig, out, fmt)


def _half_step(a: np.ndarray) -> float:
    return float(np.min(np.abs(np.diff(a)))) / 2 if a.size > 1 else 0.5


def _edges(a: np.ndarray, half: float) -> np.ndarray:
    """Cell edges halfway between points; the outer cells reach half a grid step out."""
    sign = -1.0 if a.size > 1 and a[1] < a[0] else 1.0
    return np.concatenate([[a[0] - sign * half], (a[:-1] + a[1:]) / 2, [a[-1] + sign * half]])


def surface3d(view: View2D, out: Path, fmt: str, zmax: float | None = None) -> Path:
    """A shaded 3-D surface; heights clipped at zmax (or the colour range's top).

    On a log scale the heights are log10 of the value (as the original code's
    h5_to_vtp --log), with the z axis and colour bar ticked at round values of
    the value itself, so a basin 1e-3 deep under corners at 1e2 stays visible."""
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    rng = view.range
    if rng.log and zmax is not None and zmax <= 0:
        raise UserError(f"--zmax is {zmax}, expected a value > 0 on a log scale (or give --linear)")
    top = rng.high if zmax is None else min(zmax, rng.high)
    if top <= rng.low:
        top = rng.high

    def height(z: np.ndarray) -> np.ndarray:
        z = np.minimum(z, top)
        return np.log10(z) if rng.log else z

    # Colours span the heights drawn, so a clipped surface keeps its colours.
    norm = Normalize(*(np.log10([rng.low, top]) if rng.log else (rng.low, top)))
    label = view.label()
    log_ticks = np.log10(common.Range(rng.low, top, True).ticks()) if rng.log else None
    with common.paper_style():
        fig = common.new_figure(common.WIDTH_IN, 3.8)
        ax = fig.add_subplot(projection="3d")
        if view.drawable:
            X, Y = view.grid
            ny, nx = view.z.shape
            # rcount/ccount cap the polygon count: a 201x201 grid stays fast and
            # the PDF small; linewidth=0 avoids the white seams of edge strokes.
            mappable = ax.plot_surface(
                X,
                Y,
                np.ma.masked_invalid(height(view.z)),
                cmap=common.CMAP,
                norm=norm,
                rcount=min(ny, 80),
                ccount=min(nx, 80),
                linewidth=0,
                antialiased=False,
            )
        else:
            x, y, z = view.computed_points()
            mappable = ax.scatter(x, y, height(z), c=height(z), cmap=common.CMAP, norm=norm, s=10, depthshade=False)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(5))
        values = FuncFormatter(lambda v, _: f"{10.0**v:.6g}")  # 0.001, 0.2, 1000
        if log_ticks is not None:
            ax.zaxis.set_major_locator(FixedLocator(log_ticks))
            ax.zaxis.set_major_formatter(values)
        ax.set_xlabel(common.axis_label(view.surface, "x"), labelpad=-1)
        ax.set_ylabel(common.axis_label(view.surface, "y"), labelpad=-1)
        ax.set_zlabel(label, labelpad=1)
        ax.tick_params(axis="both", which="major", pad=0)
        ax.view_init(elev=30, azim=-60)
        ax.set_title(common.title(view.surface, view.split, view.value))
        cbar = fig.colorbar(mappable, ax=ax, shrink=0.6, pad=0.12)
        cbar.set_label(label)
        if log_ticks is not None:
            cbar.set_ticks(log_ticks)
            cbar.ax.yaxis.set_major_formatter(values)
        return common.save(fig, out, fmt)


def panel_names(surfaces: list[Surface]) -> list[str]:
    """Model names, with the file stem added where two panels would share one."""
    names = [s.model_name for s in surfaces]
    return [n if names.count(n) == 1 else f"{n} ({s.stem})" for n, s in zip(names, surfaces)]


def compare(
    surfaces: list[Surface],
    out: Path,
    fmt: str,
    split: str,
    value: str,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
) -> Path:
    """2-D surfaces side by side: filled contours on the same levels, one colour bar."""
    name = f"{split}_{value}"
    arrays = []
    for s in surfaces:
        if s.y is None:
            raise UserError(f"{s.path} is a 1-D surface; compare needs surfaces of the same kind (all 2-D)")
        arrays.append(check_computed(s, name))
    log = common.auto_log(arrays, value, vmin, vmax, log)
    rng = common.value_range(arrays, name, vmin, vmax, log)
    views = [View2D(s, split, value, rng=rng) for s in surfaces]
    lv = rng.levels(levels or FILLED_LEVELS, cover=True)
    extends = {v.extend() for v in views} - {"neither"}
    extend = "neither" if not extends else extends.pop() if len(extends) == 1 else "both"
    n = len(views)
    with common.paper_style():
        fig = common.new_figure(min(2.3 * n + 0.9, 10.0), 2.9)
        axes = fig.subplots(1, n, squeeze=False)[0]
        mappable = None
        for ax, view, panel in zip(axes, views, panel_names(surfaces)):
            mappable = _filled_into(ax, view, lv, extend)
            view.decorate(ax, title=False)
            ax.set_title(f"{panel}{common.done_note(view.surface, split)}")
            if ax is not axes[0]:
                ax.set_ylabel("")
        if not all(v.drawable for v in views):
            mappable = _scalar_mappable(rng)
        _colorbar(fig, mappable, list(axes), rng, common.value_label(split, value, rng.log), extend=extend)
        fig.suptitle(f"{split} {VALUE_LABELS[value]}")
        return common.save(fig, out, fmt)
