"""2-D views of one value of a surface: contour lines, filled contours, heat map,
3-D surface, and several surfaces side by side.

All start from the (ny, nx) array with NaN where not computed. The heat map
draws every computed point (rows and columns with none are dropped, so the
cells of a coarse partial grid fill the picture); points not computed stay
blank. Lines, filled contours and the 3-D surface need whole cells, so they
draw the sub-grid of `ranges.surface_lattice`: the full grid once complete,
the last complete coarse pass while a coarse-to-fine run is under way. Where
no cell is whole yet, they draw the computed points as dots. Diverged points
(+inf) are clipped to the top of the colour range.

Every view marks the trained model at (0, 0) and the best point (the minimum
of a loss, the maximum of an accuracy), and a partial surface's computed
points and blank, not computed area; a legend under the figure says which is
which. The title says what the surface was made from (`labels.provenance`).
A PCA surface's training paths are drawn over every view (`paths`): a line
through each run's checkpoints, its start and end marked, named with its mean
projection error in the legend; the axes stay at the grid. A PCA file with
nothing computed yet still gets its views, with the paths alone.
The views of one file's splits share one range per value (`split_views`):
train and test have the same levels and colours, so they compare by eye.
Each drawing function takes a `view.View2D` and the `view.Options` and returns its Figure;
`render` saves it. What a view is made from (its range, lattice, marks) is `view`'s.

The value scale is logarithmic with --log, linear with --linear, and by
default (log None) logarithmic for a loss spanning more than two decades
(`ranges.auto_log`); the colour-bar label then ends in "(log scale)".
"""


from __future__ import annotations

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import labels, mplfigure, paths, ranges
from losslandscape.render.mplfigure import BEST_STYLE, CMAP, COMPUTED_STYLE, TRAINED_STYLE
from losslandscape.surfacefile.read import VALUE_LABELS, Surface, check_computed
from losslandscape.render.view import Options, View2D, centre_inside, centre_on_grid

CONTOUR_LEVELS = 15  # the original code: vmin=0.1, vmax=10, vlevel=0.5 -> 20 levels
FILLED_LEVELS = 25


def _decorate(ax, view: View2D, title: bool = True) -> None:
    s = view.surface
    ax.set_xlabel(labels.axis_label(s, "x"))
    ax.set_ylabel(labels.axis_label(s, "y"))
    ax.set_xlim(s.x.min(), s.x.max())
    ax.set_ylim(s.y.min(), s.y.max())
    if ranges.equal_aspect(s.x, s.y):
        ax.set_aspect("equal")
    if title:
        ax.set_title(labels.title(s, view.split, view.value))


def _mark_models(ax, view: View2D, prefix: str = "") -> None:
    """The trained model at (0, 0), where the grid reaches it, and the best point
    (labelled with `prefix`, e.g. a panel's file name), for the legend."""
    mplfigure.mark_centre(ax, view.surface)
    best = view.best()
    if best is not None:
        x, y, _, label = best
        ax.plot([x], [y], label=prefix + label, zorder=4, clip_on=False, **BEST_STYLE)


def _dots(ax, view: View2D, size: float = 12):
    """The computed points as coloured dots: the fallback while no cell is whole."""
    x, y, z = view.computed_points()
    return ax.scatter(x, y, c=z, s=size, cmap=CMAP, norm=view.range.norm(), edgecolors="none", label="computed point")


def _mark_computed(ax, view: View2D) -> None:
    """Small grey dots on the computed points of a partial surface (the lines or
    fills show only its whole cells)."""
    if view.partial() and view.drawable:
        x, y, _ = view.computed_points()
        ax.plot(x, y, label="computed point", zorder=3, **COMPUTED_STYLE)


def _line_levels(rng: ranges.Range, filled_levels: np.ndarray) -> np.ndarray:
    """A few black lines over filled contours, at round levels."""
    inner = rng.levels(7)
    return inner if inner.size else filled_levels[::4]


def _filled_into(ax, view: View2D, lv: np.ndarray, extend: str):
    """Filled contours with a few black lines (dots while no cell is whole); returns the mappable."""
    if not view.drawable:
        return _dots(ax, view)
    X, Y = view.grid
    cf = ax.contourf(X, Y, view.masked, levels=lv, cmap=CMAP, norm=view.range.norm(), extend=extend)
    ax.contour(X, Y, view.masked, levels=_line_levels(view.range, lv), colors="k", linewidths=0.4, alpha=0.6)
    return cf


def _extra_handles(view: View2D) -> list:
    """Legend entries beyond the labelled marks: the paths' start and end markers, and the
    blank area of a partial surface."""
    return paths.legend_handles([view.surface]) + ([mplfigure.not_computed_handle()] if view.partial() else [])


def contour(view: View2D, opts: Options = Options()):
    """Labelled contour lines (dots while no cell is whole); returns the Figure."""
    with mplfigure.paper_style():
        fig = mplfigure.new_figure()
        ax = fig.add_subplot()
        if view.drawable:
            X, Y = view.grid
            lv = view.range.levels(opts.levels or CONTOUR_LEVELS)
            cs = ax.contour(X, Y, view.masked, levels=lv, cmap=CMAP, norm=view.range.norm(), linewidths=0.8)
            if len(cs.levels):
                # Every other level: labels on all of them crowd a 4-inch figure.
                ax.clabel(cs, cs.levels[::2], inline=True, fontsize=6.5, fmt=labels.level_format)
        elif not view.empty:
            _dots(ax, view)
        _mark_models(ax, view)
        paths.draw(ax, view.surface)
        _mark_computed(ax, view)
        _decorate(ax, view)
        if not view.empty:
            # A continuous bar: the lines' own colours read better against it.
            mplfigure.colorbar(fig, mplfigure.scalar_mappable(view.range), ax, view.range, view.label())
        mplfigure.legend(fig, [ax], _extra_handles(view))
        return fig


def filled(view: View2D, opts: Options = Options()):
    """Filled contours with a few black lines; returns the Figure."""
    with mplfigure.paper_style():
        fig = mplfigure.new_figure()
        ax = fig.add_subplot()
        lv = view.range.levels(opts.levels or FILLED_LEVELS, cover=True)
        mappable = None if view.empty else _filled_into(ax, view, lv, view.extend())
        _mark_models(ax, view)
        paths.draw(ax, view.surface)
        _mark_computed(ax, view)
        _decorate(ax, view)
        if mappable is not None:
            mplfigure.colorbar(fig, mappable, ax, view.range, view.label(), extend=view.extend())
        mplfigure.legend(fig, [ax], _extra_handles(view))
        return fig


def heatmap(view: View2D, opts: Options = Options()):
    """One cell per computed point; returns the Figure."""
    with mplfigure.paper_style():
        fig = mplfigure.new_figure()
        ax = fig.add_subplot()
        s = view.surface
        hx, hy = ranges.half_step(s.x), ranges.half_step(s.y)
        # One cell per computed row and column, centred on its point; with
        # explicit edges this works for a single computed row or column too.
        mesh = None if view.empty else ax.pcolormesh(
            ranges.cell_edges(view.points_x, hx),
            ranges.cell_edges(view.points_y, hy),
            np.ma.masked_invalid(view.points_z),
            shading="flat",
            cmap=CMAP,
            norm=view.range.norm(),
        )
        _mark_models(ax, view)
        paths.draw(ax, s)
        _decorate(ax, view)
        ax.set_xlim(*ranges.padded(s.x))
        ax.set_ylim(*ranges.padded(s.y))
        if mesh is not None:
            mplfigure.colorbar(fig, mesh, ax, view.range, view.label(), extend=view.extend())
        mplfigure.legend(fig, [ax], _extra_handles(view))
        return fig


class _Heights:
    """The 3-D view's heights: values clipped at `top` (zmax, or the range's top), log10 of them
    on a log scale (as the original code's h5_to_vtp --log)."""

    def __init__(self, rng: ranges.Range, zmax: float | None):
        ranges.check_log_zmax(rng.log, zmax)
        self.rng, self.top = rng, ranges.height_top(rng, zmax)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.minimum(z, self.top)
        return np.log10(z) if self.rng.log else z

    def norm(self):
        """Colours span the heights drawn, so a clipped surface keeps its colours."""
        from matplotlib.colors import Normalize

        return Normalize(*(np.log10([self.rng.low, self.top]) if self.rng.log else (self.rng.low, self.top)))

    def log_ticks(self) -> np.ndarray | None:
        return np.log10(ranges.Range(self.rng.low, self.top, True).ticks()) if self.rng.log else None


def surface3d(view: View2D, opts: Options = Options()):
    """A shaded 3-D surface; heights clipped at zmax (or the colour range's top);
    returns the Figure. The colour bar names the value (the z axis repeats it
    in numbers only); the trained model, where computed, and the best point
    sit on the surface.

    On a log scale the heights are log10 of the value (as the original code's
    h5_to_vtp --log), with the z axis and colour bar ticked at round values of
    the value itself, so a basin 1e-3 deep under corners at 1e2 stays visible."""
    height = _Heights(view.range, opts.zmax)
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(mplfigure.WIDTH_IN, 3.8)
        ax = fig.add_subplot(projection="3d")
        # Draw in zorder: the marks stay visible on the surface, where mplot3d's
        # depth sorting would often hide them under it.
        ax.computed_zorder = False
        mappable = _surface_into(ax, view, height)
        _mark_models_3d(ax, view, height)
        # The paths on the surface drawn (its heights, interpolated), else on the floor.
        lattice = (view.x, view.y, height(view.z)) if view.drawable else None
        paths.draw_3d(ax, view.surface, lattice, 0.0 if view.empty else float(height.norm().vmin))
        _axes_3d(fig, ax, view, mappable, height.log_ticks())
        mplfigure.legend(fig, [ax], _extra_handles(view) if view.empty else paths.legend_handles([view.surface]))
        return fig


def _surface_into(ax, view: View2D, height: _Heights):
    """The surface (the computed points as dots while no cell is whole); returns the mappable,
    None when nothing is computed (then the trained model alone, on the floor)."""
    if view.empty:
        if centre_inside(view.surface):
            ax.plot([0.0], [0.0], [0.0], label=labels.centre_label(view.surface), zorder=5, **TRAINED_STYLE)
        return None
    if view.drawable:
        X, Y = view.grid
        ny, nx = view.z.shape
        # rcount/ccount cap the polygon count: a 201x201 grid stays fast and
        # the PDF small; linewidth=0 avoids the white seams of edge strokes.
        return ax.plot_surface(X, Y, np.ma.masked_invalid(height(view.z)), cmap=CMAP, norm=height.norm(),
                               rcount=min(ny, 80), ccount=min(nx, 80), linewidth=0, antialiased=False)
    x, y, z = view.computed_points()
    return ax.scatter(x, y, height(z), c=height(z), cmap=CMAP, norm=height.norm(), s=10, depthshade=False)


def _axes_3d(fig, ax, view: View2D, mappable, log_ticks: np.ndarray | None) -> None:
    """Ticks, labels, title and colour bar of the 3-D view; a box spanning the grid, its
    heights unlabelled, when there is no value to show."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    s = view.surface
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    values = FuncFormatter(lambda v, _: f"{10.0**v:.6g}")  # 0.001, 0.2, 1000
    if log_ticks is not None:
        ax.zaxis.set_major_locator(FixedLocator(log_ticks))
        ax.zaxis.set_major_formatter(values)
    ax.set_xlabel(labels.axis_label(s, "x"), labelpad=-1)
    ax.set_ylabel(labels.axis_label(s, "y"), labelpad=-1)
    ax.tick_params(axis="both", which="major", pad=0)
    ax.view_init(elev=30, azim=-60)
    ax.set_title(labels.title(s, view.split, view.value))
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=ax, shrink=0.6, pad=0.12)
        cbar.set_label(view.label())
        if log_ticks is not None:
            cbar.set_ticks(log_ticks)
            cbar.ax.yaxis.set_major_formatter(values)
    else:
        ax.set_xlim(s.x.min(), s.x.max())
        ax.set_ylim(s.y.min(), s.y.max())
        ax.set_zlim(0.0, 1.0)
        ax.set_zticks([])


def _mark_models_3d(ax, view: View2D, height) -> None:
    """The trained model (where (0, 0) is a computed grid point) and the best
    point, on the surface at `height(value)`."""
    s, full = view.surface, view.full
    centre = centre_on_grid(s)
    if centre is not None and not np.isnan(full[centre]):
        j, i = centre
        ax.plot([0.0], [0.0], height(full[j, i : i + 1]), label=labels.centre_label(s), zorder=5, **TRAINED_STYLE)
    best = view.best()
    if best is not None:
        x, y, v, label = best
        z = height(ranges.clip_diverged(np.array([v]), view.range))
        ax.plot([x], [y], z, label=label, zorder=4, **BEST_STYLE)


def compare(surfaces: list[Surface], split: str, value: str, opts: Options = Options()):
    """2-D surfaces side by side: filled contours on the same levels, one colour
    bar, each panel titled by its file; returns the Figure."""
    name = f"{split}_{value}"
    arrays = []
    for s in surfaces:
        if s.y is None:
            raise UserError(f"{s.path} is a 1-D surface; compare needs surfaces of the same kind (all 2-D)")
        arrays.append(check_computed(s, name))
    rng = ranges.shared_range(arrays, value, name, opts.vmin, opts.vmax, opts.log)
    views = [View2D(s, split, value, rng=rng) for s in surfaces]
    lv = rng.levels(opts.levels or FILLED_LEVELS, cover=True)
    extends = {v.extend() for v in views} - {"neither"}
    extend = "neither" if not extends else extends.pop() if len(extends) == 1 else "both"
    n = len(views)
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(min(2.3 * n + 0.9, 10.0), 3.4)
        axes = fig.subplots(1, n, squeeze=False)[0]
        mappable = None
        for ax, view, panel in zip(axes, views, labels.panel_titles(surfaces, split)):
            mappable = _filled_into(ax, view, lv, extend)
            # Each panel's best point, named by its file: one marker style for all.
            _mark_models(ax, view, prefix=f"{view.surface.path.name}: ")
            paths.draw(ax, view.surface, prefix=f"{view.surface.path.name}: ")
            _decorate(ax, view, title=False)
            ax.set_title(panel, fontsize=8)
            if ax is not axes[0]:
                ax.set_ylabel("")
        if not all(v.drawable for v in views):
            mappable = mplfigure.scalar_mappable(rng)
        mplfigure.colorbar(fig, mappable, list(axes), rng, labels.value_label(split, value, rng.log), extend=extend)
        fig.suptitle(f"{split} {VALUE_LABELS[value]}")
        extra = paths.legend_handles([v.surface for v in views])
        partial = [mplfigure.not_computed_handle()] if any(v.partial() for v in views) else []
        mplfigure.legend(fig, axes, extra + partial)
        return fig
