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

Every view marks the trained model at (0, 0) and the best point (the minimum
of a loss, the maximum of an accuracy), and a partial surface's computed
points and blank, not computed area; a legend under the figure says which is
which. The title says what the surface was made from (`common.provenance`).
A PCA surface's training paths are drawn over every view (`paths`): a line
through each run's checkpoints, its start and end marked, named with its mean
projection error in the legend; the axes stay at the grid. A PCA file with
nothing computed yet still gets its views, with the paths alone.
The views of one file's splits share one range per value (`split_views`):
train and test have the same levels and colours, so they compare by eye.
Each drawing function returns its Figure; `render` saves it.

The value scale is logarithmic with --log, linear with --linear, and by
default (log None) logarithmic for a loss spanning more than two decades
(`common.auto_log`); the colour-bar label then ends in "(log scale)".
"""

from __future__ import annotations

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common, paths
from losslandscape.render.surfacefile import VALUE_LABELS, Surface, check_computed

CONTOUR_LEVELS = 15  # the original code: vmin=0.1, vmax=10, vlevel=0.5 -> 20 levels
FILLED_LEVELS = 25


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
        rng: common.Range | None = None,
        empty_ok: bool = False,
    ):
        if surface.y is None:
            raise UserError(f"{surface.path} is a 1-D surface (no ycoordinates); 2-D views need a 2-D one")
        self.surface, self.split, self.value = surface, split, value
        self.name = f"{split}_{value}"
        z = surface.values.get(self.name)
        self.empty = bool(empty_ok and z is not None and np.all(np.isnan(z)))
        if self.empty:
            self.range = rng or common.Range(0.0, 1.0, False)
        else:
            z = check_computed(surface, self.name)
            self.range = rng or shared_range([z], value, f"{surface.path} {self.name}", vmin, vmax, log)
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
        at = f"({common.coord_text(x, self.surface.x)}, {common.coord_text(y, self.surface.y)})"
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


def shared_range(
    arrays: list[np.ndarray], value: str, where: str, vmin=None, vmax=None, log: bool | None = None
) -> common.Range:
    """One range for pictures of `arrays` (one value): the scale by `common.auto_log`,
    the ends by `common.value_range`."""
    log = common.auto_log(arrays, value, vmin, vmax, log)
    return common.value_range(arrays, where, vmin, vmax, log)


def split_views(
    surface: Surface, pairs: list[tuple[str, str]], vmin=None, vmax=None, log: bool | None = None
) -> list[View2D]:
    """A view per (split, value) of one file; the views of one value share one
    range, so train and test get the same contour levels and colour scale. A value
    with nothing computed is refused, except in a file with training paths (a PCA
    surface) and nothing computed at all: then its views are `empty`, to draw the
    paths alone."""
    ranges: dict = {}
    paths_only = bool(surface.trajectories) and all(f == 0 for f in surface.fraction_done.values())
    for value in dict.fromkeys(v for _, v in pairs):
        names = [f"{sp}_{v}" for sp, v in pairs if v == value]
        if paths_only and all(n in surface.values for n in names):
            ranges[value] = None
            continue
        arrays = [check_computed(surface, n) for n in names]
        ranges[value] = shared_range(arrays, value, f"{surface.path} {value}", vmin, vmax, log)
    return [View2D(surface, sp, v, rng=ranges[v], empty_ok=ranges[v] is None) for sp, v in pairs]


# The marks every 2-D view shares, kept apart from the colour map's colours.
TRAINED_STYLE = dict(ls="none", marker="P", ms=7, mfc="white", mec="black", mew=0.7)
BEST_STYLE = dict(ls="none", marker="*", ms=10, mfc="tab:red", mec="white", mew=0.6)
COMPUTED_STYLE = dict(ls="none", marker=".", color="0.4", ms=1.5)


def centre_label(surface: Surface) -> str:
    if common.checkpoint_name(surface) == "fresh initialisation":
        return "fresh initialisation (0, 0)"
    return "trained model (0, 0)"


def _mark_models(ax, view: View2D, prefix: str = "") -> None:
    """The trained model at (0, 0), where the grid reaches it, and the best point
    (labelled with `prefix`, e.g. a panel's file name), for the legend."""
    s = view.surface
    if s.x.min() <= 0 <= s.x.max() and s.y.min() <= 0 <= s.y.max():
        ax.plot([0.0], [0.0], label=centre_label(s), zorder=5, clip_on=False, **TRAINED_STYLE)
    best = view.best()
    if best is not None:
        x, y, _, label = best
        ax.plot([x], [y], label=prefix + label, zorder=4, clip_on=False, **BEST_STYLE)


def _not_computed_handle():
    """Legend entry for the blank area of a partial surface."""
    from matplotlib.patches import Patch

    return Patch(facecolor="white", edgecolor="0.5", linewidth=0.6, label="not computed yet (blank)")


def _legend(fig, axes, extra: list = ()) -> None:
    """One legend under the figure: every labelled mark of `axes` (each label once), then `extra`."""
    unique: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    for handle in extra:
        unique.setdefault(handle.get_label(), handle)
    if unique:
        # Below the axes: inside, it would hide part of the surface.
        fig.legend(list(unique.values()), list(unique), loc="outside lower center", ncols=2, frameon=False)


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
    return ax.scatter(
        x, y, c=z, s=size, cmap=common.CMAP, norm=view.range.norm(), edgecolors="none", label="computed point"
    )


def _mark_computed(ax, view: View2D) -> None:
    """Small grey dots on the computed points of a partial surface (the lines or
    fills show only its whole cells)."""
    x, y, _ = view.computed_points()
    ax.plot(x, y, label="computed point", zorder=3, **COMPUTED_STYLE)


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


def contour(view: View2D, levels: int | None = None):
    """Labelled contour lines (dots while no cell is whole); returns the Figure."""
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
        elif not view.empty:
            _dots(ax, view)
        _mark_models(ax, view)
        paths.draw(ax, view.surface)
        if view.partial() and view.drawable:
            _mark_computed(ax, view)
        view.decorate(ax)
        if not view.empty:
            # A continuous bar: the lines' own colours read better against it.
            _colorbar(fig, _scalar_mappable(view.range), ax, view.range, view.label())
        _legend(fig, [ax], _extra_handles(view))
        return fig


def filled(view: View2D, levels: int | None = None):
    """Filled contours with a few black lines; returns the Figure."""
    with common.paper_style():
        fig = common.new_figure()
        ax = fig.add_subplot()
        lv = view.range.levels(levels or FILLED_LEVELS, cover=True)
        mappable = None if view.empty else _filled_into(ax, view, lv, view.extend())
        _mark_models(ax, view)
        paths.draw(ax, view.surface)
        if view.partial() and view.drawable:
            _mark_computed(ax, view)
        view.decorate(ax)
        if mappable is not None:
            _colorbar(fig, mappable, ax, view.range, view.label(), extend=view.extend())
        _legend(fig, [ax], _extra_handles(view))
        return fig


def heatmap(view: View2D):
    """One cell per computed point; returns the Figure."""
    with common.paper_style():
        fig = common.new_figure()
        ax = fig.add_subplot()
        hx, hy = _half_step(view.surface.x), _half_step(view.surface.y)
        # One cell per computed row and column, centred on its point; with
        # explicit edges this works for a single computed row or column too.
        mesh = None if view.empty else ax.pcolormesh(
            _edges(view.points_x, hx),
            _edges(view.points_y, hy),
            np.ma.masked_invalid(view.points_z),
            shading="flat",
            cmap=common.CMAP,
            norm=view.range.norm(),
        )
        _mark_models(ax, view)
        paths.draw(ax, view.surface)
        view.decorate(ax)
        ax.set_xlim(view.surface.x.min() - hx, view.surface.x.max() + hx)
        ax.set_ylim(view.surface.y.min() - hy, view.surface.y.max() + hy)
        if mesh is not None:
            _colorbar(fig, mesh, ax, view.range, view.label(), extend=view.extend())
        _legend(fig, [ax], _extra_handles(view))
        return fig


def _extra_handles(view: View2D) -> list:
    """Legend entries beyond the labelled marks: the paths' start and end markers, and the
    blank area of a partial surface."""
    return paths.legend_handles([view.surface]) + ([_not_computed_handle()] if view.partial() else [])


def _half_step(a: np.ndarray) -> float:
    return float(np.min(np.abs(np.diff(a)))) / 2 if a.size > 1 else 0.5


def _edges(a: np.ndarray, half: float) -> np.ndarray:
    """Cell edges halfway between points; the outer cells reach half a grid step out."""
    sign = -1.0 if a.size > 1 and a[1] < a[0] else 1.0
    return np.concatenate([[a[0] - sign * half], (a[:-1] + a[1:]) / 2, [a[-1] + sign * half]])


def surface3d(view: View2D, zmax: float | None = None):
    """A shaded 3-D surface; heights clipped at zmax (or the colour range's top);
    returns the Figure. The colour bar names the value (the z axis repeats it
    in numbers only); the trained model, where computed, and the best point
    sit on the surface.

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
        # Draw in zorder: the marks stay visible on the surface, where mplot3d's
        # depth sorting would often hide them under it.
        ax.computed_zorder = False
        mappable = None
        if view.empty:  # nothing computed yet: the paths alone, on the floor, and the trained model
            s = view.surface
            if s.x.min() <= 0 <= s.x.max() and s.y.min() <= 0 <= s.y.max():
                ax.plot([0.0], [0.0], [0.0], label=centre_label(s), zorder=5, **TRAINED_STYLE)
        elif view.drawable:
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
        _mark_models_3d(ax, view, height)
        # The paths on the surface drawn (its heights, interpolated), else on the floor.
        lattice = (view.x, view.y, height(view.z)) if view.drawable else None
        paths.draw_3d(ax, view.surface, lattice, 0.0 if view.empty else float(norm.vmin))
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(5))
        values = FuncFormatter(lambda v, _: f"{10.0**v:.6g}")  # 0.001, 0.2, 1000
        if log_ticks is not None:
            ax.zaxis.set_major_locator(FixedLocator(log_ticks))
            ax.zaxis.set_major_formatter(values)
        ax.set_xlabel(common.axis_label(view.surface, "x"), labelpad=-1)
        ax.set_ylabel(common.axis_label(view.surface, "y"), labelpad=-1)
        ax.tick_params(axis="both", which="major", pad=0)
        ax.view_init(elev=30, azim=-60)
        ax.set_title(common.title(view.surface, view.split, view.value))
        if mappable is not None:
            cbar = fig.colorbar(mappable, ax=ax, shrink=0.6, pad=0.12)
            cbar.set_label(label)
            if log_ticks is not None:
                cbar.set_ticks(log_ticks)
                cbar.ax.yaxis.set_major_formatter(values)
        else:  # no value to show: the box spans the grid, its heights unlabelled
            s = view.surface
            ax.set_xlim(s.x.min(), s.x.max())
            ax.set_ylim(s.y.min(), s.y.max())
            ax.set_zlim(0.0, 1.0)
            ax.set_zticks([])
        _legend(fig, [ax], _extra_handles(view) if view.empty else paths.legend_handles([view.surface]))
        return fig


def _mark_models_3d(ax, view: View2D, height) -> None:
    """The trained model (where (0, 0) is a computed grid point) and the best
    point, on the surface at `height(value)`."""
    s, full = view.surface, view.full
    i, j = int(np.argmin(np.abs(s.x))), int(np.argmin(np.abs(s.y)))
    on_grid = abs(s.x[i]) <= 1e-9 * np.ptp(s.x) and abs(s.y[j]) <= 1e-9 * np.ptp(s.y)
    if on_grid and not np.isnan(full[j, i]):
        z = height(full[j, i : i + 1])
        ax.plot([0.0], [0.0], z, label=centre_label(s), zorder=5, **TRAINED_STYLE)
    best = view.best()
    if best is not None:
        x, y, v, label = best
        z = height(common.clip_diverged(np.array([v]), view.range))
        ax.plot([x], [y], z, label=label, zorder=4, **BEST_STYLE)


def compare(
    surfaces: list[Surface],
    split: str,
    value: str,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
):
    """2-D surfaces side by side: filled contours on the same levels, one colour
    bar, each panel titled by its file; returns the Figure."""
    name = f"{split}_{value}"
    arrays = []
    for s in surfaces:
        if s.y is None:
            raise UserError(f"{s.path} is a 1-D surface; compare needs surfaces of the same kind (all 2-D)")
        arrays.append(check_computed(s, name))
    rng = shared_range(arrays, value, name, vmin, vmax, log)
    views = [View2D(s, split, value, rng=rng) for s in surfaces]
    lv = rng.levels(levels or FILLED_LEVELS, cover=True)
    extends = {v.extend() for v in views} - {"neither"}
    extend = "neither" if not extends else extends.pop() if len(extends) == 1 else "both"
    n = len(views)
    with common.paper_style():
        fig = common.new_figure(min(2.3 * n + 0.9, 10.0), 3.4)
        axes = fig.subplots(1, n, squeeze=False)[0]
        mappable = None
        for ax, view, panel in zip(axes, views, common.panel_titles(surfaces, split)):
            mappable = _filled_into(ax, view, lv, extend)
            # Each panel's best point, named by its file: one marker style for all.
            _mark_models(ax, view, prefix=f"{view.surface.path.name}: ")
            paths.draw(ax, view.surface, prefix=f"{view.surface.path.name}: ")
            view.decorate(ax, title=False)
            ax.set_title(panel, fontsize=8)
            if ax is not axes[0]:
                ax.set_ylabel("")
        if not all(v.drawable for v in views):
            mappable = _scalar_mappable(rng)
        _colorbar(fig, mappable, list(axes), rng, common.value_label(split, value, rng.log), extend=extend)
        fig.suptitle(f"{split} {VALUE_LABELS[value]}")
        extra = paths.legend_handles([v.surface for v in views])
        _legend(fig, axes, extra + ([_not_computed_handle()] if any(v.partial() for v in views) else []))
        return fig
