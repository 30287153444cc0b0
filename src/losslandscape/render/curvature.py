"""Views of the `hessian` verb's results (Li et al., Sec. 6): the ratio map, the eigenvalue
maps and the spectrum at the centre.

  ratio        |min_eig / max_eig| at every grid point as a heat map, on a colour scale of 0
               to 0.5 as in the paper's Fig. 8 (--vmin/--vmax change it), with thin contour
               lines of the loss of the Hessian's split over it. Where the ratio is near 0
               the surface is convex in every direction, not only in the two drawn; where it
               is large, the 2-D picture hides negative curvature.
  eigenvalues  max_eig and min_eig side by side; min_eig on a diverging colour map centred
               at 0 (blue negative, red positive).
  spectrum     the spectral density at the centre (stochastic Lanczos quadrature) on a log
               scale, the top eigenvalues and the smallest marked, the trace in the legend.

The maps are drawn as the heat map of a loss is (`plot2d.heatmap`): one cell per computed
point, blank where nothing is computed yet, the fraction done in the title; they mark the
trained model at (0, 0). Titles say how the Hessian was taken (split, samples, parameters)
and what the surface was made from. Each drawing function returns its Figure.
"""

from __future__ import annotations

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common, plot2d
from losslandscape.render.surfacefile import SPLITS, Surface

RATIO_RANGE = (0.0, 0.5)  # the colour scale of Li et al.'s Fig. 8
MIN_CMAP = "RdBu_r"  # diverging: negative blue, 0 white, positive red
LOSS_LINES = {"colors": "white", "linewidths": 0.55, "alpha": 0.9}
TOP_COLOR, MIN_COLOR, DENSITY_COLOR = "tab:red", "tab:green", "tab:blue"
DENSITY_DECADES = 7  # the spectrum's log axis reaches this far below its peak


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


def ratio_range(vmin: float | None = None, vmax: float | None = None) -> common.Range:
    """The ratio map's colour scale: 0 to 0.5 as in the paper, or --vmin/--vmax (one given
    beyond the other's default moves that end half a unit away, as `common.value_range` does)."""
    low = RATIO_RANGE[0] if vmin is None else float(vmin)
    high = RATIO_RANGE[1] if vmax is None else float(vmax)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UserError(f"--vmin/--vmax: the ratio map needs finite numbers, not {low} and {high}")
    if low >= high:
        if vmin is not None and vmax is not None:
            raise UserError(f"--vmin {vmin} is not below --vmax {vmax}")
        span = RATIO_RANGE[1] - RATIO_RANGE[0]
        low, high = (low, low + span) if vmax is None else (high - span, high)
    return common.Range(low, high, log=False, exact=True)


def loss_lines(surface: Surface, split: str | None, log: bool | None = None) -> plot2d.View2D | None:
    """The loss whose contours go over the maps: that of the Hessian's split, else of the first
    split with a computed loss; on the range the loss views of the file use (`split_views`),
    so the lines sit at the contour view's levels. None when no loss is computed."""
    computed = [sp for sp in SPLITS if f"{sp}_loss" in surface.values
                and not np.all(np.isnan(surface.values[f"{sp}_loss"]))]
    if not computed:
        return None
    chosen = split if split in computed else computed[0]
    try:
        (view,) = [v for v in plot2d.split_views(surface, [(sp, "loss") for sp in computed], log=log)
                   if v.split == chosen]
    except UserError:  # every computed point diverged: no lines
        return None
    return view


def _clipped(z: np.ndarray, rng: common.Range) -> np.ndarray:
    """z with +-inf at the ends of the range (NaN, not computed, kept)."""
    return np.where(np.isposinf(z), rng.high, np.where(np.isneginf(z), rng.low, z))


def _extend(z: np.ndarray, low: float, high: float) -> str:
    done = z[~np.isnan(z)]
    over, under = bool((done > high).any()), bool((done < low).any())
    return {(False, False): "neither", (True, False): "max", (False, True): "min"}.get((over, under), "both")


def _map_into(ax, surface: Surface, z: np.ndarray, norm, cmap):
    """One cell per computed point (rows and columns with none dropped), blank where z is NaN."""
    hx, hy = plot2d._half_step(surface.x), plot2d._half_step(surface.y)
    px, py, pz, _, _ = common.compact_grid(surface.x, surface.y, z)
    mesh = ax.pcolormesh(plot2d._edges(px, hx), plot2d._edges(py, hy), np.ma.masked_invalid(pz),
                         shading="flat", cmap=cmap, norm=norm)
    ax.set_xlabel(common.axis_label(surface, "x"))
    ax.set_ylabel(common.axis_label(surface, "y"))
    ax.set_xlim(surface.x.min() - hx, surface.x.max() + hx)
    ax.set_ylim(surface.y.min() - hy, surface.y.max() + hy)
    if common.equal_aspect(surface.x, surface.y):
        ax.set_aspect("equal")
    return mesh


def _mark_centre(ax, surface: Surface) -> None:
    """The trained model at (0, 0), where the grid reaches it (as plot2d._mark_models)."""
    if surface.x.min() <= 0 <= surface.x.max() and surface.y.min() <= 0 <= surface.y.max():
        ax.plot([0.0], [0.0], label=plot2d.centre_label(surface), zorder=5, clip_on=False, **plot2d.TRAINED_STYLE)


def _lines_handle(label: str):
    """Legend entry for the white loss contours: a white line with a grey edge."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    stroke = [patheffects.withStroke(linewidth=2.4, foreground="0.45")]
    return Line2D([], [], color="white", lw=1.2, path_effects=stroke, label=label)


def _draw_loss_lines(ax, view: plot2d.View2D | None, levels: int | None):
    """Thin contour lines of the loss over a map, a few labelled; returns the ContourSet (None
    when there is no loss or no whole cell of it yet)."""
    if view is None or not view.drawable:
        return None
    X, Y = view.grid
    lv = view.range.levels(levels or plot2d.CONTOUR_LEVELS)
    cs = ax.contour(X, Y, view.masked, levels=lv, zorder=3, **LOSS_LINES)
    cs.set_gid(f"{view.split} loss contours")
    if len(cs.levels):
        ax.clabel(cs, cs.levels[::2], inline=True, fontsize=5.5, fmt=common.level_format, colors="white")
    return cs


def _partial_handles(surface: Surface) -> list:
    return [plot2d._not_computed_handle()] if surface.eig_fraction_done < 1.0 else []


def ratio(
    surface: Surface,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
):
    """Li et al.'s Fig. 8: |min_eig / max_eig| as a heat map on 0..0.5 (or vmin..vmax), with
    the loss contours of the Hessian's split over it (levels: their number, log: their scale,
    as the contour view's); returns the Figure."""
    check_maps(surface, "ratio")
    rng = ratio_range(vmin, vmax)
    z = surface.eig_ratio
    settings = surface.eig_settings
    lines = loss_lines(surface, settings.get("split"), log)
    with common.paper_style():
        fig = common.new_figure(common.WIDTH_IN, 3.9)
        ax = fig.add_subplot()
        mesh = _map_into(ax, surface, _clipped(z, rng), rng.norm(), common.CMAP)
        cs = _draw_loss_lines(ax, lines, levels)
        _mark_centre(ax, surface)
        ax.set_title(common.hessian_title(surface, common.RATIO_LABEL, settings, surface.eig_fraction_done))
        cbar = plot2d._colorbar(fig, mesh, ax, rng, common.RATIO_LABEL, extend=_extend(z, rng.low, rng.high))
        cbar.ax.set_gid("ratio colour bar")
        extra = [_lines_handle(f"{lines.split} loss (contour lines)")] if cs is not None else []
        plot2d._legend(fig, [ax], extra + _partial_handles(surface))
        return fig


def eigenvalues(surface: Surface):
    """max_eig and min_eig side by side (min_eig on a diverging colour map centred at 0);
    returns the Figure."""
    from matplotlib.colors import Normalize

    check_maps(surface, "eigenvalues")
    settings = surface.eig_settings
    lam_max, lam_min = surface.eig["max"], surface.eig["min"]
    with common.paper_style():
        fig = common.new_figure(8.0, 3.9)
        axes = fig.subplots(1, 2)
        finite = lam_max[np.isfinite(lam_max)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if high <= low:
            high = low + max(abs(low) * 0.1, 1e-12)
        bound = np.abs(lam_min[np.isfinite(lam_min)])
        bound = float(bound.max()) if bound.size and bound.max() > 0 else 1e-12
        panels = [(axes[0], lam_max, Normalize(low, high), common.CMAP, common.LAMBDA_MAX, "largest"),
                  (axes[1], lam_min, Normalize(-bound, bound), MIN_CMAP, common.LAMBDA_MIN, "smallest")]
        for ax, z, norm, cmap, label, word in panels:
            rng = common.Range(norm.vmin, norm.vmax, log=False)
            mesh = _map_into(ax, surface, _clipped(z, rng), norm, cmap)
            _mark_centre(ax, surface)
            ax.set_title(label)
            cbar = fig.colorbar(mesh, ax=ax)
            cbar.set_label(f"{word} Hessian eigenvalue")
        head = common.hessian_title(surface, "Hessian eigenvalues", settings, surface.eig_fraction_done)
        fig.suptitle(head)
        plot2d._legend(fig, list(axes), _partial_handles(surface))
        return fig


def spectrum(surface: Surface):
    """The spectral density at the centre on a log scale, the top eigenvalues (dashed) and
    the smallest (dotted) marked, the trace and |min/max| in the legend; returns the Figure."""
    from matplotlib.lines import Line2D

    check_spectrum(surface)
    c = surface.centre_spectrum
    grid, density = c["density_grid"], c["density"]
    top, low = c["top_eigenvalues"], c.get("min_eigenvalue")
    with common.paper_style():
        fig = common.new_figure(common.WIDTH_IN, 4.0)
        ax = fig.add_subplot()
        handles = []
        positive = density[density > 0] if density.size else density
        if positive.size:
            handles += ax.plot(grid, density, color=DENSITY_COLOR, lw=1.2, label="spectral density")
            ax.set_yscale("log")
            ax.set_ylim(max(float(positive.min()), float(positive.max()) * 10.0**-DENSITY_DECADES),
                        float(positive.max()) * 3)
            ax.set_ylabel("spectral density (log scale)")
        else:
            ax.set_ylabel("spectral density")
            ax.set_yticks([])
        for i, v in enumerate(top):
            line = ax.axvline(v, color=TOP_COLOR, ls="--", lw=0.9, zorder=3)
            if i == 0:
                values = ", ".join(f"{t:.4g}" for t in top)
                line.set_label(f"top eigenvalue{'s' if len(top) > 1 else ''}: {values}")
                handles.append(line)
        if low is not None:
            handles.append(ax.axvline(low, color=MIN_COLOR, ls=":", lw=1.2, zorder=3,
                                      label=f"min eigenvalue: {low:.4g}"))
        blank = dict(ls="none", marker="none")
        if c.get("ratio_min_max") is not None:
            handles.append(Line2D([], [], label=f"|min / max| = {c['ratio_min_max']:.4g}", **blank))
        if c.get("trace") is not None:
            err = f" ± {c['trace_stderr']:.2g}" if c.get("trace_stderr") is not None else ""
            probes = c.get("hutchinson_samples")
            how = f" (Hutchinson, {probes} probes)" if probes else " (Hutchinson)"
            handles.append(Line2D([], [], label=f"trace = {c['trace']:.4g}{err}{how}", **blank))
        ax.set_xlabel("eigenvalue")
        where = "at the trained model" if common.checkpoint_name(surface) != "fresh initialisation" else \
            "at the centre (fresh initialisation)"
        ax.set_title(common.hessian_title(surface, f"Hessian spectrum {where}", c, parameters=c.get("parameters")))
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=1 if len(handles) < 3 else 2,
                       frameon=False)
        return fig
