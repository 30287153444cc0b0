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
and what the surface was made from. The maps' data (their ranges, the loss lines, the
checks) is `view`'s, shared with the html page. Each drawing function returns its Figure.
"""

from __future__ import annotations

import numpy as np

from losslandscape.render import labels, mplfigure, plot2d, ranges
from losslandscape.surfacefile.read import Surface
from losslandscape.render.view import (
    Options, View2D, check_maps, check_spectrum, eigenvalue_range, loss_lines, ratio_range,
)

MIN_CMAP = "RdBu_r"  # diverging: negative blue, 0 white, positive red
LOSS_LINES = {"colors": "white", "linewidths": 0.55, "alpha": 0.9}
TOP_COLOR, MIN_COLOR, DENSITY_COLOR = "tab:red", "tab:green", "tab:blue"
DENSITY_DECADES = 7  # the spectrum's log axis reaches this far below its peak


def _extend(z: np.ndarray, low: float, high: float) -> str:
    done = z[~np.isnan(z)]
    over, under = bool((done > high).any()), bool((done < low).any())
    return {(False, False): "neither", (True, False): "max", (False, True): "min"}.get((over, under), "both")


def _map_into(ax, surface: Surface, z: np.ndarray, norm, cmap):
    """One cell per computed point (rows and columns with none dropped), blank where z is NaN."""
    hx, hy = ranges.half_step(surface.x), ranges.half_step(surface.y)
    px, py, pz, _, _ = ranges.compact_grid(surface.x, surface.y, z)
    mesh = ax.pcolormesh(ranges.cell_edges(px, hx), ranges.cell_edges(py, hy), np.ma.masked_invalid(pz),
                         shading="flat", cmap=cmap, norm=norm)
    ax.set_xlabel(labels.axis_label(surface, "x"))
    ax.set_ylabel(labels.axis_label(surface, "y"))
    ax.set_xlim(*ranges.padded(surface.x))
    ax.set_ylim(*ranges.padded(surface.y))
    if ranges.equal_aspect(surface.x, surface.y):
        ax.set_aspect("equal")
    return mesh


def _lines_handle(label: str):
    """Legend entry for the white loss contours: a white line with a grey edge."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    stroke = [patheffects.withStroke(linewidth=2.4, foreground="0.45")]
    return Line2D([], [], color="white", lw=1.2, path_effects=stroke, label=label)


def _draw_loss_lines(ax, view: View2D | None, levels: int | None):
    """Thin contour lines of the loss over a map, a few labelled; returns the ContourSet (None
    when there is no loss or no whole cell of it yet)."""
    if view is None or not view.drawable:
        return None
    X, Y = view.grid
    lv = view.range.levels(levels or plot2d.CONTOUR_LEVELS)
    cs = ax.contour(X, Y, view.masked, levels=lv, zorder=3, **LOSS_LINES)
    cs.set_gid(f"{view.split} loss contours")
    if len(cs.levels):
        ax.clabel(cs, cs.levels[::2], inline=True, fontsize=5.5, fmt=labels.level_format, colors="white")
    return cs


def _partial_handles(surface: Surface) -> list:
    return [mplfigure.not_computed_handle()] if surface.eig_fraction_done < 1.0 else []


def ratio(surface: Surface, opts: Options = Options()):
    """Li et al.'s Fig. 8: |min_eig / max_eig| as a heat map on 0..0.5 (or vmin..vmax), with
    the loss contours of the Hessian's split over it (levels: their number, log: their scale,
    as the contour view's); returns the Figure."""
    check_maps(surface, "ratio")
    rng = ratio_range(opts.vmin, opts.vmax)
    z = surface.eig_ratio
    settings = surface.eig_settings
    lines = loss_lines(surface, settings.get("split"), opts.log)
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(mplfigure.WIDTH_IN, 3.9)
        ax = fig.add_subplot()
        mesh = _map_into(ax, surface, ranges.clip_infinite(z, rng), rng.norm(), mplfigure.CMAP)
        cs = _draw_loss_lines(ax, lines, opts.levels)
        mplfigure.mark_centre(ax, surface)
        ax.set_title(labels.hessian_title(surface, labels.RATIO_LABEL, settings, surface.eig_fraction_done))
        cbar = mplfigure.colorbar(fig, mesh, ax, rng, labels.RATIO_LABEL, extend=_extend(z, rng.low, rng.high))
        cbar.ax.set_gid("ratio colour bar")
        extra = [_lines_handle(f"{lines.split} loss (contour lines)")] if cs is not None else []
        mplfigure.legend(fig, [ax], extra + _partial_handles(surface))
        return fig


def eigenvalues(surface: Surface, opts: Options = Options()):
    """max_eig and min_eig side by side (min_eig on a diverging colour map centred at 0);
    returns the Figure."""
    from matplotlib.colors import Normalize

    check_maps(surface, "eigenvalues")
    settings = surface.eig_settings
    lam_max, lam_min = surface.eig["max"], surface.eig["min"]
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(8.0, 3.9)
        axes = fig.subplots(1, 2)
        panels = [(axes[0], lam_max, False, mplfigure.CMAP, labels.LAMBDA_MAX, "largest"),
                  (axes[1], lam_min, True, MIN_CMAP, labels.LAMBDA_MIN, "smallest")]
        for ax, z, centred, cmap, label, word in panels:
            rng = eigenvalue_range(z, centred)
            mesh = _map_into(ax, surface, ranges.clip_infinite(z, rng), Normalize(rng.low, rng.high), cmap)
            mplfigure.mark_centre(ax, surface)
            ax.set_title(label)
            cbar = fig.colorbar(mesh, ax=ax)
            cbar.set_label(f"{word} Hessian eigenvalue")
        head = labels.hessian_title(surface, "Hessian eigenvalues", settings, surface.eig_fraction_done)
        fig.suptitle(head)
        mplfigure.legend(fig, list(axes), _partial_handles(surface))
        return fig


def spectrum(surface: Surface, opts: Options = Options()):
    """The spectral density at the centre on a log scale, the top eigenvalues (dashed) and
    the smallest (dotted) marked, the trace and |min/max| in the legend; returns the Figure."""
    from matplotlib.lines import Line2D

    check_spectrum(surface)
    c = surface.centre_spectrum
    grid, density = c["density_grid"], c["density"]
    top, low = c["top_eigenvalues"], c.get("min_eigenvalue")
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(mplfigure.WIDTH_IN, 4.0)
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
            how = labels.trace_method(c)
            handles.append(Line2D([], [], label=f"trace = {c['trace']:.4g}{err}{how}", **blank))
        ax.set_xlabel("eigenvalue")
        where = "at the trained model" if labels.checkpoint_name(surface) != "fresh initialisation" else \
            "at the centre (fresh initialisation)"
        ax.set_title(labels.hessian_title(surface, f"Hessian spectrum {where}", c, parameters=c.get("parameters")))
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=1 if len(handles) < 3 else 2,
                       frameon=False)
        return fig
