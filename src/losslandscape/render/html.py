"""Interactive pages: one self-contained HTML file per surface file, and one comparing
several, drawn by Plotly (`plotly.graph_objects`, laid out by `plotly.subplots.make_subplots`)
with plotly.js inlined.

    figure(surface, splits, values, opts)          -> the page's go.Figure
    compare_figure(surfaces, splits, values, opts) -> the comparison's go.Figure
    write_html / write_compare_html                -> the figure written as one HTML file

The page loads nothing: no script, style sheet, font or image comes from the
network (no CDN, no MathJax), so it opens on a cluster login node, from an
e-mail, or offline. It is about 5 MB, nearly all of it plotly.js; values are
stored as float32 and the 3-D surface has at most SURFACE_POINTS a side (as the
static surface3d's rcount/ccount), so a 201 x 201 grid with four values adds
about 3 MB.

A 2-D surface gets a rotatable 3-D surface (go.Surface) beside a heat map with
contour lines (go.Contour, or go.Heatmap while partial) of the same values;
hovering either shows x, y and the value. Buttons above choose the split and
value (train/test x loss/accuracy, whatever the file has computed) and the
scale: a loss can be drawn on a log scale (log10 heights and colours, ticks in
the loss's own units). Each choice starts on the scale the static views use:
the user's --log or --linear, else log for a loss spanning more than two
decades (`ranges.auto_log`); train and test of one value share one colour
range. What the static views mark is marked here too (`view`), and named in the
legend: the trained model at (0, 0), the best point (the minimum of a loss, the
maximum of an accuracy; both drawn whole on the map's edge or corner), and on a
partial surface the computed points, with blanks (NaN) where nothing is computed
yet; the title says how much is done.
Diverged points are drawn at the top of the range, and the title counts them.
A file with the `hessian` verb's eigenvalue maps also offers them in the selector,
"|min/max| (Hessian)" (Li et al.'s Fig. 8: colour scale 0 to 0.5 as the static `ratio`
view, the loss of the Hessian's split as contour lines over it) and the maps of the
largest and of the smallest eigenvalue (a diverging colour scale centred at 0), each a heat
map alone: the 3-D view's axes are hidden while one is shown.
A PCA surface's training paths (`paths`) are scatter traces on the map (a line through each
run's checkpoints, its start a white circle ringed in the run's colour, its end a filled
square; hovering names the checkpoint and its projection error) and lines on the 3-D surface,
named in the legend with the run's mean projection error; clicking a run's legend entry hides
its path in both. The axes stay at the grid. A PCA file with nothing computed yet gets a
page with the paths alone.

A 1-D surface gets a line chart instead (`html1d`). Several files of one kind compare on one
page: 2-D surfaces side by side, each file's 3-D view above its map, all on one colour scale
and one height range; 1-D curves on one chart, a colour per file. The buttons and what the
pages share are `htmlparts`'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import html1d, labels, paths, ranges
from losslandscape.render.htmlparts import (
    BEST_MARKER, BEST_MARKER_3D, BLANK_MARKER, COLORSCALE, COMPUTED_MARKER, HESSIAN_MAPS, LINEAR, LOG, MARGIN,
    TITLE, TRAINED_MARKER, TRAINED_MARKER_3D, Panel, Series, Traces, escape, f32, hover_xy, text, write,
)
from losslandscape.surfacefile.read import VALUE_LABELS, Surface
from losslandscape.render.view import (
    Options, View2D, centre_inside, centre_on_grid, computed_pairs, diverged_note, eigenvalue_range, has_maps,
    loss_lines, ratio_range,
)

CONTOUR_LEVELS = 15  # as plot2d.CONTOUR_LEVELS
SURFACE_POINTS = 101  # the 3-D surface's most points a side (a 201 x 201 grid draws every 2nd)
# The static surface3d's view (matplotlib elev=30, azim=-60), a little farther out so that labels fit.
CAMERA_EYE = {"x": 1.0, "y": -1.75, "z": 1.15}
MIN_EIG_COLORSCALE = "RdBu"  # reversed: negative blue, 0 white, positive red (curvature.MIN_CMAP)
HESSIAN_MAP_X = (0.3, 0.92)  # the map's domain while a Hessian map is shown (the 3-D view is hidden)
PATH_LIFT = 0.015  # the 3-D paths float this share of the height range above the surface
LINES = {"color": "rgba(0,0,0,0.45)", "width": 0.8}  # the contour lines over a map


def write_html(surface: Surface, out: Path, splits: list[str], values: list[str], opts: Options = Options(),
               hessian: bool = False) -> Path:
    """The page of one surface file: `figure(...)` written to `out`."""
    title = f"{labels.model_label(surface)}: {surface.path.name}"
    return write(figure(surface, splits, values, opts, hessian), out, title)


def write_compare_html(surfaces: list[Surface], out: Path, splits: list[str], values: list[str],
                       opts: Options = Options()) -> Path:
    """One page comparing several files of the same kind: `compare_figure(...)` written to `out`."""
    title = "compare " + ", ".join(s.path.name for s in surfaces)
    return write(compare_figure(surfaces, splits, values, opts), out, title)


def figure(surface: Surface, splits: list[str], values: list[str], opts: Options = Options(), hessian: bool = False):
    """The page's Plotly figure (go.Figure) for the asked splits and values that are
    computed; UserError if none is. With `hessian`, a 2-D file's eigenvalue maps (where it
    has computed points) are offered too; opts.vmin/vmax, where given, also set the ratio map's
    colour scale (0 to 0.5 by default), as in the static views."""
    if surface.ndim == 1:
        return html1d.figure([surface], splits, values, opts)
    if surface.trajectories and not any(
            f"{sp}_{v}" in surface.values and not np.all(np.isnan(surface.values[f"{sp}_{v}"]))
            for sp in splits for v in values):
        return _figure_paths_only(surface, splits, values)
    return _figure_2d([surface], splits, values, opts, hessian=hessian)


def compare_figure(surfaces: list[Surface], splits: list[str], values: list[str], opts: Options = Options()):
    """Several surfaces (all 1-D or all 2-D) on one figure: each (split, value)
    computed in every file, on one shared colour scale or value axis."""
    if len({s.ndim for s in surfaces}) > 1:
        raise UserError("an html comparison needs surfaces of the same kind: these mix 1-D and 2-D files")
    if surfaces[0].ndim == 1:
        return html1d.figure(surfaces, splits, values, opts)
    return _figure_2d(surfaces, splits, values, opts)


# ---------------------------------------------------------------- layout


def _subplots(surfaces: list[Surface]):
    """The figure and its panels: one file, 3-D left and map right; several, one column each,
    3-D above the map (a column's title on top); the domains leave room for the colour bar."""
    from plotly.subplots import make_subplots

    n = len(surfaces)
    if n == 1:
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]])
        cells = [((1, 1), (1, 2), ((0.0, 0.47), (0.0, 1.0), (0.55, 0.92), (0.0, 1.0)))]
    else:
        fig = make_subplots(rows=2, cols=n, specs=[[{"type": "scene"}] * n, [{"type": "xy"}] * n])
        w = 0.94 / n
        cells = [((1, i + 1), (2, i + 1), ((i * w, (i + 1) * w - 0.04), (0.44, 0.92),
                                           (i * w, (i + 1) * w - 0.04), (0.0, 0.38))) for i in range(n)]
    prefixes = [f"{name}: " for name in labels.file_names(surfaces)] if n > 1 else [""]
    panels = [Panel(s, sc, mc, fig.get_subplot(*sc).plotly_name, prefix, dom)
              for s, (sc, mc, dom), prefix in zip(surfaces, cells, prefixes)]
    return fig, panels


def _frame(fig, panels: list[Panel]) -> None:
    """Each panel's scene and map axes: titles, the grid's extent (the map's half a cell out),
    equal scales where the directions span comparable ranges."""
    for p in panels:
        s, (sx, sy, mx, my) = p.surface, p.domains
        xl, yl = (text(labels.axis_label(s, a)) for a in ("x", "y"))
        equal = ranges.equal_aspect(s.x, s.y)
        ratio = float(np.ptp(s.y)) / float(np.ptp(s.x)) if equal else 1.0
        fig.update_scenes(
            domain={"x": list(sx), "y": list(sy)},
            xaxis={"title": {"text": xl}, "range": [float(s.x.min()), float(s.x.max())]},
            yaxis={"title": {"text": yl}, "range": [float(s.y.min()), float(s.y.max())]},
            aspectmode="manual", aspectratio={"x": 1.0, "y": ratio, "z": 0.75}, camera={"eye": CAMERA_EYE},
            row=p.scene_cell[0], col=p.scene_cell[1])
        box = {"showline": True, "mirror": True, "linecolor": "#444", "zeroline": False}
        fig.update_xaxes(domain=list(mx), title={"text": xl}, range=ranges.padded(s.x), **box,
                         **({"constrain": "domain"} if equal else {}), row=p.map_cell[0], col=p.map_cell[1])
        scaled = {"scaleanchor": fig.get_subplot(*p.map_cell).yaxis.anchor, "scaleratio": 1.0, "constrain": "domain"}
        fig.update_yaxes(domain=list(my), title={"text": yl}, range=ranges.padded(s.y), **box,
                         **(scaled if equal else {}), row=p.map_cell[0], col=p.map_cell[1])
    fig.update_layout(
        template="plotly_white", margin=MARGIN, title=TITLE, hovermode="closest",
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.1, "yanchor": "top"},
    )


def _layout(s: Series, scale: str, panels: list[Panel], zmax) -> dict:
    """What changes in the layout with the series and scale: the title, the panels'
    titles (compare) and the 3-D z axes' titles and ticks."""
    surfaces = [p.surface for p in panels]
    if len(panels) == 1:
        title = labels.title(surfaces[0], s.split, s.value) + diverged_note(surfaces, s.name)
    else:
        title = f"{s.split} {VALUE_LABELS[s.value]}" + (" (log scale)" if scale == LOG else "")
        title += diverged_note(surfaces, s.name).replace("\n", ": ")
    layout = {"title.text": text(title)}
    f = _scale_fn(scale)
    for i, p in enumerate(panels):
        rng = s.views[scale][i].range
        top = ranges.height_top(rng, zmax)
        ticks = _ticks(rng, top)
        layout[f"{p.scene}.zaxis.title.text"] = text(labels.value_label(None, s.value, scale == LOG))
        # The same heights in every panel (the colour range's, clipped at zmax).
        layout[f"{p.scene}.zaxis.range"] = [float(f(rng.low)), float(f(top))]
        layout[f"{p.scene}.zaxis.tickvals"] = ticks.get("tickvals")
        layout[f"{p.scene}.zaxis.ticktext"] = ticks.get("ticktext")
    if len(panels) > 1:
        layout["annotations"] = [{
            "text": text(t), "x": sum(p.domains[0]) / 2, "y": 0.99, "xref": "paper", "yref": "paper",
            "xanchor": "center", "yanchor": "top", "showarrow": False, "font": {"size": 12},
        } for p, t in zip(panels, labels.panel_titles(surfaces, s.split))]
    return layout


def _scale_fn(scale: str):
    return np.log10 if scale == LOG else (lambda a: np.asarray(a, dtype=float))


def _ticks(rng: ranges.Range, top: float | None = None) -> dict:
    """Colour-bar and z-axis ticks at round values of the value itself, for a log scale
    (where the drawn numbers are log10 of it); {} on a linear scale (Plotly's own ticks)."""
    if not rng.log:
        return {}
    ticks = ranges.Range(rng.low, rng.high if top is None else top, True).ticks()
    return {"tickvals": np.log10(ticks).tolist(), "ticktext": [f"{t:g}" for t in ticks]}


def _contour_levels(rng: ranges.Range, scale: str, n: int) -> dict:
    f = _scale_fn(scale)
    if scale == LINEAR:
        lv = rng.levels(n)
        if lv.size >= 2:
            return {"start": float(lv[0]), "end": float(lv[-1]), "size": float(lv[1] - lv[0])}
    lo, hi = float(f(rng.low)), float(f(rng.high))
    size = (hi - lo) / n
    return {"start": lo + size / 2, "end": hi - size / 2, "size": size}


def _cells(points: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Heat-map coordinates: the points (Plotly puts the cell edges halfway between them),
    or for a single point its cell's edges, half a grid step either side (Plotly's default is 1)."""
    if points.size > 1:
        return points
    half = ranges.half_step(axis)
    return np.array([points[0] - half, points[0] + half])


def _thin(n: int) -> np.ndarray:
    """Indices of at most about SURFACE_POINTS of n, evenly strided, the last one kept."""
    stride = -(-n // SURFACE_POINTS)
    idx = np.arange(0, n, stride)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


# ---------------------------------------------------------------- 2-D


def _series_2d(surfaces: list[Surface], pairs: list[tuple[str, str]], opts: Options) -> list[Series]:
    """Each (split, value) with its scales and views; the views of one value share one range
    on each scale (train and test, and every file, get the same colours)."""
    shared: dict[str, dict[str, ranges.Range]] = {}
    for value in dict.fromkeys(v for _, v in pairs):
        arrays = [s.values[f"{sp}_{v}"] for sp, v in pairs if v == value for s in surfaces]
        where = f"{surfaces[0].path} {value}" if len(surfaces) == 1 else value
        default = LOG if ranges.auto_log(arrays, value, opts.vmin, opts.vmax, opts.log) else LINEAR
        offered = [default]
        if value == "loss" or opts.log:  # accuracy is linear, unless --log asks for log everywhere
            offered.append(LINEAR if default == LOG else LOG)
        shared[value] = {}
        for scale in offered:
            try:
                ranges.check_log_zmax(scale == LOG, opts.zmax)
                rng = ranges.shared_range(arrays, value, where, opts.vmin, opts.vmax, log=scale == LOG)
            except UserError:
                if scale == default:
                    raise
                continue  # the other scale cannot draw these values (say, no loss > 0 for log)
            shared[value][scale] = rng
    series = []
    for split, value in pairs:
        s = Series(split, value, list(shared[value]))
        s.views = {scale: [View2D(f, split, value, rng=rng) for f in surfaces] for scale, rng in shared[value].items()}
        series.append(s)
    return series


def _figure_2d(surfaces: list[Surface], splits: list[str], values: list[str], opts: Options, hessian: bool = False):
    import plotly.graph_objects as go

    series = _series_2d(surfaces, computed_pairs(surfaces, splits, values), opts)
    maps = hessian and len(surfaces) == 1 and has_maps(surfaces[0])
    if maps:
        split = surfaces[0].eig_settings.get("split") or ""
        series += [Series(split, value, [LINEAR]) for value in HESSIAN_MAPS]
    fig, panels = _subplots(surfaces)
    traces = Traces(fig, series)
    levels = opts.levels or CONTOUR_LEVELS
    for k, s in enumerate(series):
        if s.value in HESSIAN_MAPS:
            _add_hessian_map(traces, go, k, panels[0], opts, levels)
            continue
        for i, panel in enumerate(panels):
            paths.add_to_map(traces, go, k, panel)  # first: the marks below are drawn over them
            _add_marks(traces, go, k, panel, s.views[s.scales[0]][i], first=i == 0)
            for scale in s.scales:
                _add_surface(traces, go, k, scale, s.views[scale][i], panel, opts.zmax)
                _add_map(traces, go, k, scale, s.views[scale][i], panel, i == 0, levels)
        paths.add_legend(traces, go, k, panels)
        if any(v.partial() for v in s.views[s.scales[0]]):  # a legend entry for the blank, not computed area
            _add_blank(traces, go, k, panels[0])
        for scale in s.scales:
            traces.layouts[(k, scale)] = _layout(s, scale, panels, opts.zmax)
    if maps:  # a Hessian map is shown alone: the 3-D view's axes hidden, the map in the middle
        for (k, _), layout in traces.layouts.items():
            alone = series[k].value in HESSIAN_MAPS
            for axis in ("xaxis", "yaxis", "zaxis"):
                layout[f"scene.{axis}.visible"] = not alone
            layout["xaxis.domain"] = list(HESSIAN_MAP_X if alone else panels[0].domains[2])
    _frame(fig, panels)
    traces.finish()
    return fig


def _add_marks(traces: Traces, go, k: int, panel: Panel, view: View2D, first: bool) -> None:
    """Marks on the map, the same on either scale (as plot2d._mark_models): the trained model, the
    best point, and on a partial surface every computed point (the lines show only whole cells)."""
    surf = panel.surface
    if centre_inside(surf):
        _add_centre(traces, go, k, panel, showlegend=first)
    best = view.best()
    if best is not None:
        label = panel.prefix + best[3]
        traces.add(go.Scatter(
            x=[best[0]], y=[best[1]], mode="markers", marker=BEST_MARKER, name=label, cliponaxis=False,
            legendgroup=f"best-{panel.scene}", hovertemplate=f"{escape(label)}<extra></extra>"),
            k, part="best", cell=panel.map_cell)
    if view.partial() and view.drawable:
        cx, cy, _ = view.computed_points()
        traces.add(go.Scatter(
            x=cx, y=cy, mode="markers", marker=COMPUTED_MARKER, name="computed point",
            legendgroup="computed", showlegend=first, hoverinfo="skip"), k, part="computed", cell=panel.map_cell)


def _add_centre(traces: Traces, go, k: int, panel: Panel, showlegend: bool | None = None) -> None:
    label = labels.centre_label(panel.surface)
    traces.add(go.Scatter(
        x=[0.0], y=[0.0], mode="markers", marker=TRAINED_MARKER, name=label, legendgroup="trained",
        cliponaxis=False, showlegend=showlegend, hovertemplate=f"{label}<extra></extra>"), k, part="trained",
        cell=panel.map_cell)


def _add_blank(traces: Traces, go, k: int, panel: Panel) -> None:
    traces.add(go.Scatter(
        x=[None], y=[None], mode="markers", marker=BLANK_MARKER, name="not computed yet (blank)",
        hoverinfo="skip"), k, part="blank", cell=panel.map_cell)


def _shown(view: View2D) -> np.ndarray:
    """The values hover shows: the value itself, not its log10, nor a loss floored at the log
    scale's bottom (a diverged point shows the top of the range, where it is drawn)."""
    raw = view.surface.values[view.name]
    return np.where(np.isinf(raw), view.full, raw)


def _add_surface(traces: Traces, go, k: int, scale: str, view: View2D, panel: Panel, zmax) -> None:
    """The 3-D surface of one view on one scale, its marks and the paths on it. The lattice of
    whole cells (all of the grid once complete), heights clipped at the top, at most
    SURFACE_POINTS a side (as the static view's rcount/ccount), which keeps big grids light."""
    s, rng, surf = traces.series[k], view.range, view.surface
    f, top, label = _scale_fn(scale), ranges.height_top(rng, zmax), labels.value_label(s.split, s.value)
    value = _shown(view)

    def height(v):
        return f(np.minimum(v, top))

    colours = {"cmin": float(f(rng.low)), "cmax": float(f(top)), "colorscale": COLORSCALE}
    on_scene = {"scene": panel.scene, "hovertemplate": hover_xy(surf, label, "customdata")}
    if view.drawable:
        rows, cols = view.rows[_thin(view.rows.size)], view.cols[_thin(view.cols.size)]
        z = view.full[np.ix_(rows, cols)]
        traces.add(go.Surface(
            x=surf.x[cols], y=surf.y[rows], z=f32(height(z)), customdata=f32(value[np.ix_(rows, cols)]),
            showscale=False, name=label, lighting={"ambient": 0.75, "diffuse": 0.6, "specular": 0.05},
            **colours, **on_scene), k, scale, "surface")
    else:  # no whole cell yet: the computed points as coloured dots
        px, py, pz = view.computed_points()
        traces.add(go.Scatter3d(
            x=px, y=py, z=f32(height(pz)), customdata=f32(value[~np.isnan(view.full)]), mode="markers",
            marker={"size": 3, "color": f32(height(pz)), **colours}, name="computed point", showlegend=False,
            **on_scene), k, scale, "surface")
    centre = centre_on_grid(surf)
    if centre is not None and not np.isnan(view.full[centre]):
        name = labels.centre_label(surf)
        traces.add(go.Scatter3d(
            x=[0.0], y=[0.0], z=[float(height(view.full[centre]))], mode="markers", marker=TRAINED_MARKER_3D,
            name=name, legendgroup="trained", showlegend=False, scene=panel.scene,
            hovertemplate=f"{name}<extra></extra>"), k, scale, "trained3d")
    best = view.best()
    if best is not None:
        bx, by, bv, blabel = best
        bz = ranges.clip_diverged(np.array([bv]), rng)[0]
        traces.add(go.Scatter3d(
            x=[bx], y=[by], z=[float(height(bz))], mode="markers", marker=BEST_MARKER_3D,
            name=panel.prefix + blabel, legendgroup=f"best-{panel.scene}", showlegend=False, scene=panel.scene,
            hovertemplate=f"{escape(panel.prefix + blabel)}<extra></extra>"), k, scale, "best3d")
    if surf.trajectories:
        # On the surface as drawn (its thinned lattice), else on the floor of the box; lifted a
        # little, as WebGL draws a cell as two flat triangles and a bilinear height inside it can
        # fall just under them.
        lattice = None
        if view.drawable:
            lift = PATH_LIFT * float(f(top) - f(rng.low))
            lattice = (surf.x[cols], surf.y[rows], height(view.full[np.ix_(rows, cols)]) + lift)
        paths.add_to_scene(traces, go, k, scale, panel, lattice, float(f(rng.low)))


def _add_map(traces: Traces, go, k: int, scale: str, view: View2D, panel: Panel, first: bool, levels: int) -> None:
    """The map of one view on one scale: one cell per computed point (rows and columns with none
    dropped), blank where not computed, with contour lines over the whole cells."""
    s, rng, surf = traces.series[k], view.range, view.surface
    f, logged, label = _scale_fn(scale), scale == LOG, labels.value_label(s.split, s.value)
    value = _shown(view)
    bar = {"title": {"text": text(labels.value_label(s.split, s.value, logged)), "side": "right"}, **_ticks(rng)}
    if panel.map_cell[0] == 2:  # several files, the maps in the second row: the bar beside that row
        bar.update(len=0.42, y=0.0, yanchor="bottom")
    args = {
        "zmin": float(f(rng.low)), "zmax": float(f(rng.high)), "colorscale": COLORSCALE, "showscale": first,
        "colorbar": bar, "name": label, "hoverongaps": False,
        "hovertemplate": hover_xy(surf, label, "customdata" if logged else "z"),
    }
    levels_at = _contour_levels(rng, scale, levels)
    if not np.isnan(view.full).any():  # complete: one trace, heat-map cells with contour lines over them
        traces.add(go.Contour(
            x=surf.x, y=surf.y, z=f32(f(view.full)), customdata=f32(value) if logged else None,
            contours={"coloring": "heatmap", **levels_at}, line=LINES, **args), k, scale, "map", cell=panel.map_cell)
        return
    _, _, points_value, _, _ = ranges.compact_grid(surf.x, surf.y, value)  # the points of view.points_z
    traces.add(go.Heatmap(
        x=_cells(view.points_x, surf.x), y=_cells(view.points_y, surf.y), z=f32(f(view.points_z)),
        customdata=f32(points_value) if logged else None, **args), k, scale, "map", cell=panel.map_cell)
    if view.drawable:
        traces.add(go.Contour(
            x=view.x, y=view.y, z=f32(f(view.z)), contours={"coloring": "none", **levels_at}, line=LINES,
            showscale=False, hoverinfo="skip", name=label, showlegend=False), k, scale, "lines", cell=panel.map_cell)


def _add_hessian_map(traces: Traces, go, k: int, panel: Panel, opts: Options, levels: int) -> None:
    """One of the `hessian` verb's maps as a heat map (one cell per computed point, blank where
    not computed), the trained model marked; the ratio |min/max| on 0..0.5 (--vmin/--vmax) with
    the loss of the Hessian's split as contour lines over it, min_eig on a diverging scale."""
    s, surf = traces.series[k], panel.surface
    if s.value == "ratio":
        z, what, colours = surf.eig_ratio, labels.RATIO_LABEL, {"colorscale": COLORSCALE}
        rng = ratio_range(opts.vmin, opts.vmax)
    elif s.value == "max":
        z, what, colours = surf.eig["max"], labels.LAMBDA_MAX, {"colorscale": COLORSCALE}
        rng = eigenvalue_range(z, centred=False)
    else:
        z, what = surf.eig["min"], labels.LAMBDA_MIN
        colours = {"colorscale": MIN_EIG_COLORSCALE, "reversescale": True, "zmid": 0.0}
        rng = eigenvalue_range(z, centred=True)
    label = text(what)
    px, py, pz, _, _ = ranges.compact_grid(surf.x, surf.y, ranges.clip_infinite(z, rng))
    traces.add(go.Heatmap(
        x=_cells(px, surf.x), y=_cells(py, surf.y), z=f32(pz), zmin=rng.low, zmax=rng.high, showscale=True,
        colorbar={"title": {"text": label, "side": "right"}}, hoverongaps=False, name=label,
        hovertemplate=hover_xy(surf, label, "z"), **colours), k, LINEAR, "map", cell=panel.map_cell)
    view = loss_lines(surf, s.split, opts.log) if s.value == "ratio" else None
    if view is not None and view.drawable:
        scale = LOG if view.range.log else LINEAR
        traces.add(go.Contour(
            x=view.x, y=view.y, z=f32(_scale_fn(scale)(view.z)),
            contours={"coloring": "none", **_contour_levels(view.range, scale, levels)},
            line={"color": "rgba(255,255,255,0.9)", "width": 0.8}, showscale=False, hoverinfo="skip",
            name=f"{view.split} loss (white contour lines)", showlegend=True), k, LINEAR, "lines",
            cell=panel.map_cell)
    if centre_inside(surf):
        _add_centre(traces, go, k, panel)
    if surf.eig_fraction_done < 1.0:
        _add_blank(traces, go, k, panel)
    title = labels.hessian_title(surf, what if s.value == "ratio" else f"Hessian eigenvalue {what}",
                                 surf.eig_settings, surf.eig_fraction_done)
    traces.layouts[(k, LINEAR)] = {"title.text": text(title)}


def _figure_paths_only(surface: Surface, splits: list[str], values: list[str]):
    """The page of a PCA surface with nothing computed yet: the paths alone, on the map's axes
    (the grid's extent) and on the floor of the 3-D box; the trained model marked."""
    import plotly.graph_objects as go

    split = splits[0]
    value = "loss" if "loss" in values and f"{split}_loss" in surface.values else values[0]
    fig, (panel,) = _subplots([surface])
    traces = Traces(fig, [Series(split, value, [LINEAR])])
    paths.add_to_map(traces, go, 0, panel)
    if centre_inside(surface):
        _add_centre(traces, go, 0, panel)
    paths.add_legend(traces, go, 0, [panel])
    paths.add_to_scene(traces, go, 0, LINEAR, panel, None, 0.0)
    _add_blank(traces, go, 0, panel)
    traces.layouts[(0, LINEAR)] = {
        "title.text": text(labels.title(surface, split, value)), "scene.zaxis.range": [0.0, 1.0],
        "scene.zaxis.showticklabels": False, "scene.zaxis.title.text": "not computed yet",
    }
    _frame(fig, [panel])
    traces.finish()
    return fig
