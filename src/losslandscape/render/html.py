"""Interactive pages: one self-contained HTML file per surface file, and one comparing
several, drawn by Plotly (`plotly.graph_objects`) with plotly.js inlined.

    figure(surface, splits, values, ...)          -> the page's go.Figure
    compare_figure(surfaces, splits, values, ...) -> the comparison's go.Figure
    write_html / write_compare_html               -> the figure written as one HTML file

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
decades (`common.auto_log`); train and test of one value share one colour
range. What the static views mark is marked here too, and named in the
legend: the trained model at (0, 0), the best point (the minimum of a loss, the
maximum of an accuracy), and on a partial surface the computed points, with
blanks (NaN) where nothing is computed yet; the title says how much is done.
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

A 1-D surface gets a line chart instead: loss (left axis) and accuracy (right
axis) against x, train solid and test dashed, with the same buttons (the scale
buttons switch the loss axis; linear first, as the curve, unless --log).
Several files of one kind compare on one page: 2-D surfaces side by side, each
file's 3-D view above its map, all on one colour scale and one height range;
1-D curves on one chart, a colour per file.

How the buttons work, without any JavaScript of ours: every (split, value), on
each scale it can be drawn on, has its own traces; a button shows one set and
hides the rest (Plotly's "update" method), and sets the title and the 3-D axes.
Choosing a split and value also resets the scale buttons to that choice's
first scale and points them at its traces, so the two rows never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common
from losslandscape.render.surfacefile import VALUE_LABELS, Surface

COLORSCALE = "Viridis"  # plotly's viridis is matplotlib's (common.CMAP), the static views' colours
LOG, LINEAR = "log", "linear"
SCALE_BUTTONS = (LOG, LINEAR)  # the order of the scale buttons
CONTOUR_LEVELS = 15  # as plot2d.CONTOUR_LEVELS
SURFACE_POINTS = 101  # the 3-D surface's most points a side (a 201 x 201 grid draws every 2nd)
LOSS_COLOR, ACC_COLOR = "#1f77b4", "#d62728"  # matplotlib's tab:blue and tab:red, as plot1d
SPLIT_DASH = {"train": "solid", "test": "dash"}
FILE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# The marks of the static views (plot2d.TRAINED_STYLE, BEST_STYLE, COMPUTED_STYLE).
TRAINED_MARKER = {"symbol": "cross", "size": 11, "color": "white", "line": {"color": "black", "width": 1.2}}
BEST_MARKER = {"symbol": "star", "size": 15, "color": "#d62728", "line": {"color": "white", "width": 1}}
BEST_MARKER_3D = {"symbol": "diamond", "size": 6, "color": "#d62728", "line": {"color": "white", "width": 1}}
TRAINED_MARKER_3D = {"symbol": "cross", "size": 6, "color": "white", "line": {"color": "black", "width": 1}}
COMPUTED_MARKER = {"size": 3, "color": "#666666"}
BLANK_MARKER = {"symbol": "square", "size": 11, "color": "white", "line": {"color": "#808080", "width": 1}}
# Title at the top, the buttons below it, then the plots; the legend under them.
TITLE = {"x": 0.5, "xanchor": "center", "y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 18},
         "font": {"size": 15}}
MARGIN = {"t": 140, "l": 60, "r": 40, "b": 90}
# The static surface3d's view (matplotlib elev=30, azim=-60), a little farther out so that labels fit.
CAMERA_EYE = {"x": 1.0, "y": -1.75, "z": 1.15}
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
# The `hessian` verb's maps a page offers: value -> (series name, button label).
HESSIAN_MAPS = {
    "ratio": ("hessian_ratio", "|min/max| (Hessian)"),
    "max": ("max_eig", "max eigenvalue (Hessian)"),
    "min": ("min_eig", "min eigenvalue (Hessian)"),
}
MIN_EIG_COLORSCALE = "RdBu"  # reversed: negative blue, 0 white, positive red (curvature.MIN_CMAP)
HESSIAN_MAP_X = (0.3, 0.92)  # the map's domain while a Hessian map is shown (the 3-D view is hidden)
PATH_LIFT = 0.015  # the 3-D paths float this share of the height range above the surface
PATH_LEGEND_RANK = 1001  # the paths' legend entries after the marks' (Plotly's default is 1000), in run order


def write_html(surface: Surface, out: Path, splits: list[str], values: list[str], **options) -> Path:
    """The page of one surface file: `figure(...)` written to `out` (options: those of `figure`)."""
    return _write(figure(surface, splits, values, **options), out, f"{surface.model_name}: {surface.path.name}")


def write_compare_html(surfaces: list[Surface], out: Path, splits: list[str], values: list[str], **options) -> Path:
    """One page comparing several files of the same kind: `compare_figure(...)` written to `out`."""
    title = "compare " + ", ".join(s.path.name for s in surfaces)
    return _write(compare_figure(surfaces, splits, values, **options), out, title)


def figure(
    surface: Surface,
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
    zmax: float | None = None,
    hessian: bool = False,
):
    """The page's Plotly figure (go.Figure) for the asked splits and values that are
    computed; UserError if none is. With `hessian`, a 2-D file's eigenvalue maps (where it
    has computed points) are offered too; vmin/vmax, where given, also set the ratio map's
    colour scale (0 to 0.5 by default), as in the static views."""
    opts = {"vmin": vmin, "vmax": vmax, "levels": levels, "log": log, "zmax": zmax}
    if surface.ndim == 1:
        return _figure_1d([surface], splits, values, opts)
    if surface.trajectories and not any(
            f"{sp}_{v}" in surface.values and not np.all(np.isnan(surface.values[f"{sp}_{v}"]))
            for sp in splits for v in values):
        return _figure_paths_only(surface, splits, values)
    return _figure_2d([surface], splits, values, opts, hessian=hessian)


def compare_figure(
    surfaces: list[Surface],
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
    zmax: float | None = None,
):
    """Several surfaces (all 1-D or all 2-D) on one figure: each (split, value)
    computed in every file, on one shared colour scale or value axis."""
    if len({s.ndim for s in surfaces}) > 1:
        raise UserError("an html comparison needs surfaces of the same kind: these mix 1-D and 2-D files")
    opts = {"vmin": vmin, "vmax": vmax, "levels": levels, "log": log, "zmax": zmax}
    if surfaces[0].ndim == 1:
        return _figure_1d(surfaces, splits, values, opts)
    return _figure_2d(surfaces, splits, values, opts)


def _write(fig, out: Path, title: str) -> Path:
    import plotly.io as pio

    text = pio.to_html(
        fig, include_plotlyjs=True, include_mathjax=False, full_html=True, config=CONFIG,
        default_width="100%", default_height="100%", validate=False,
    )
    head = f'<meta charset="utf-8" />\n    <title>{_escape(title)}</title>'
    text = text.replace('<meta charset="utf-8" />', head, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _text(text: str) -> str:
    r"""Plotly text: lines joined by <br>; no $...$ (that would ask for MathJax, which is not there):
    the mathtext of the static views' labels becomes Greek letters and <sub> ($\lambda_{\max}$
    -> λ<sub>max</sub>)."""
    import re

    return re.sub(r"\$([^$]*)\$", lambda m: _math(m[1]), _escape(text)).replace("\n", "<br>")


def _math(tex: str) -> str:
    r"""A little of matplotlib's mathtext as Plotly's HTML subset: \alpha, \lambda, subscripts."""
    import re

    tex = tex.replace("\\alpha", "α").replace("\\lambda", "λ")
    tex = re.sub(r"_\{\\?([^{}]*)\}", r"<sub>\1</sub>", tex)
    tex = re.sub(r"_(\w)", r"<sub>\1</sub>", tex)
    return tex.replace("\\", "").replace(" / ", "/")


def _f32(a: np.ndarray) -> np.ndarray:
    """Values as float32 (7 digits: plenty for a picture, and half the page size); NaN stays NaN.
    Plotly 6 and later store them as base64 typed arrays; older versions write JSON numbers,
    where float32's long decimals ("0.02250000089406967") would triple the size: there, the
    values rounded to 6 digits."""
    a = np.asarray(a, dtype=np.float32)
    if _typed_arrays():
        return a
    return np.array([float(f"{v:.6g}") for v in a.ravel().tolist()]).reshape(a.shape)


def _typed_arrays() -> bool:
    import plotly

    return int(plotly.__version__.split(".")[0]) >= 6


def _common_series(surfaces: list[Surface], splits: list[str], values: list[str]) -> list[tuple[str, str]]:
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


# ---------------------------------------------------------------- buttons


@dataclass
class _Series:
    """One (split, value) of the page, with the scales it can be drawn on (the default first)."""

    split: str
    value: str  # loss, acc; or one of HESSIAN_MAPS
    scales: list[str]
    views: dict = field(default_factory=dict)  # scale -> one View2D per file (2-D only)

    @property
    def name(self) -> str:
        if self.value in HESSIAN_MAPS:
            return HESSIAN_MAPS[self.value][0]
        return f"{self.split}_{self.value}"

    @property
    def label(self) -> str:
        if self.value in HESSIAN_MAPS:
            return HESSIAN_MAPS[self.value][1]
        return common.value_label(self.split, self.value)


class _Traces:
    """A figure's traces, each owned by a series (or none: always shown) and a scale
    (or none: shown on either), and the layout each (series, scale) needs."""

    def __init__(self, fig, series: list[_Series]):
        self.fig, self.series = fig, series
        self.owners: list[tuple[int | None, str | None]] = []
        self.layouts: dict[tuple[int, str], dict] = {}

    def add(self, trace, series: int | None = None, scale: str | None = None, part: str = "", **meta) -> None:
        name = self.series[series].name if series is not None else ""
        trace.meta = {"series": name, "scale": scale or "", "part": part, **meta}
        self.fig.add_trace(trace)
        self.owners.append((series, scale))

    def visible(self, k: int | None, scale: str | None) -> list[bool]:
        return [s is None or (s == k and (m is None or m == scale)) for s, m in self.owners]

    def finish(self) -> None:
        """Buttons, and the figure in its first state (the first series on its default scale)."""
        fig, series = self.fig, self.series
        for trace, shown in zip(fig.data, self.visible(0, series[0].scales[0])):
            trace.visible = shown
        for key, val in self.layouts.get((0, series[0].scales[0]), {}).items():
            fig.layout[key] = val
        menus = []
        toggles = any(len(s.scales) > 1 for s in series)
        selector, toggle = (0, 1) if len(series) > 1 else (None, 0)
        if selector is not None:
            buttons = []
            for k, s in enumerate(series):
                args = {**self.layouts.get((k, s.scales[0]), {})}
                if toggles:
                    args[f"updatemenus[{toggle}].buttons"] = self._scale_buttons(k)
                    args[f"updatemenus[{toggle}].active"] = _scale_index(s.scales[0])
                    args[f"updatemenus[{toggle}].visible"] = len(s.scales) > 1
                buttons.append({"label": s.label, "method": "update",
                                "args": [{"visible": self.visible(k, s.scales[0])}, args]})
            menus.append(_menu(buttons, 0, x=0.0, xanchor="left", name="series"))
        if toggles:
            menu = _menu(self._scale_buttons(0), _scale_index(series[0].scales[0]), x=1.0, xanchor="right",
                         name="scale")
            menu["visible"] = len(series[0].scales) > 1
            menus.append(menu)
        fig.update_layout(updatemenus=menus)
        fig.layout.meta = {
            "series": [{"name": s.name, "label": s.label, "scales": s.scales} for s in series],
        }

    def _scale_buttons(self, k: int) -> list[dict]:
        s = self.series[k]
        buttons = []
        for scale in SCALE_BUTTONS:
            label = "log scale" if scale == LOG else "linear scale"
            if scale in s.scales:
                args = [{"visible": self.visible(k, scale)}, self.layouts.get((k, scale), {})]
                buttons.append({"label": label, "method": "update", "args": args})
            else:  # not offered for this series (the buttons are hidden then)
                buttons.append({"label": label, "method": "skip", "args": []})
        return buttons


def _scale_index(scale: str) -> int:
    return SCALE_BUTTONS.index(scale)


def _menu(buttons: list[dict], active: int, x: float, xanchor: str, name: str) -> dict:
    return {
        "type": "buttons", "direction": "right", "buttons": buttons, "active": active, "name": name,
        "x": x, "xanchor": xanchor, "y": 1.0, "yanchor": "bottom",
        "pad": {"b": 26, "l": 0, "r": 0}, "showactive": True, "font": {"size": 12},
    }


# ---------------------------------------------------------------- 2-D


def _series_2d(surfaces: list[Surface], pairs: list[tuple[str, str]], opts: dict) -> list[_Series]:
    """Each (split, value) with its scales and views; the views of one value share one range
    on each scale (train and test, and every file, get the same colours)."""
    from losslandscape.render import plot2d

    vmin, vmax, log, zmax = opts["vmin"], opts["vmax"], opts["log"], opts["zmax"]
    ranges: dict[str, dict[str, common.Range]] = {}
    order: dict[str, list[str]] = {}
    for value in dict.fromkeys(v for _, v in pairs):
        arrays = [s.values[f"{sp}_{v}"] for sp, v in pairs if v == value for s in surfaces]
        where = f"{surfaces[0].path} {value}" if len(surfaces) == 1 else value
        default = LOG if common.auto_log(arrays, value, vmin, vmax, log) else LINEAR
        offered = [default]
        if value == "loss" or log:  # accuracy is linear, unless --log asks for log everywhere
            offered.append(LINEAR if default == LOG else LOG)
        ranges[value], order[value] = {}, []
        for scale in offered:
            try:
                if scale == LOG and zmax is not None and zmax <= 0:
                    raise UserError(f"--zmax is {zmax}, expected a value > 0 on a log scale (or give --linear)")
                rng = plot2d.shared_range(arrays, value, where, vmin, vmax, log=scale == LOG)
            except UserError:
                if scale == default:
                    raise
                continue  # the other scale cannot draw these values (say, no loss > 0 for log)
            ranges[value][scale] = rng
            order[value].append(scale)
    series = []
    for split, value in pairs:
        s = _Series(split, value, order[value])
        for scale in s.scales:
            s.views[scale] = [plot2d.View2D(f, split, value, rng=ranges[value][scale]) for f in surfaces]
        series.append(s)
    return series


@dataclass
class _Panel:
    """Where one file is drawn: its 3-D scene and its map's axes."""

    surface: Surface
    scene: str  # "scene", "scene2", ...
    xaxis: str  # "x", "x2", ...
    yaxis: str
    prefix: str = ""  # legend labels of its best point, e.g. "a.h5: "
    scene_x: tuple = (0.0, 0.47)  # domains, in the figure's fractions
    scene_y: tuple = (0.0, 1.0)
    map_x: tuple = (0.55, 0.92)
    map_y: tuple = (0.0, 1.0)


def _axis_key(axis: str) -> str:
    """Trace axis id to layout key: "x" -> "xaxis", "y3" -> "yaxis3"."""
    return f"{axis[0]}axis{axis[1:]}"


def _scale_fn(scale: str):
    return np.log10 if scale == LOG else (lambda a: np.asarray(a, dtype=float))


def _ticks(rng: common.Range, top: float | None = None) -> dict:
    """Colour-bar and z-axis ticks at round values of the value itself, for a log scale
    (where the drawn numbers are log10 of it); {} on a linear scale (Plotly's own ticks)."""
    if not rng.log:
        return {}
    ticks = common.Range(rng.low, rng.high if top is None else top, True).ticks()
    return {"tickvals": np.log10(ticks).tolist(), "ticktext": [f"{t:g}" for t in ticks]}


def _hover(surface: Surface, label: str, value: str) -> str:
    xl, yl = (_text(common.axis_label(surface, a)) for a in ("x", "y"))
    return f"{xl} %{{x:.4g}}<br>{yl} %{{y:.4g}}<br>{label} %{{{value}:.4g}}<extra></extra>"


def _contour_levels(rng: common.Range, scale: str, n: int) -> dict:
    f = _scale_fn(scale)
    if scale == LINEAR:
        lv = rng.levels(n)
        if lv.size >= 2:
            return {"start": float(lv[0]), "end": float(lv[-1]), "size": float(lv[1] - lv[0])}
    lo, hi = float(f(rng.low)), float(f(rng.high))
    size = (hi - lo) / n
    return {"start": lo + size / 2, "end": hi - size / 2, "size": size}


def _top(rng: common.Range, zmax: float | None) -> float:
    """Where the 3-D heights are clipped (as plot2d.surface3d)."""
    top = rng.high if zmax is None else min(zmax, rng.high)
    return rng.high if top <= rng.low else top


def _diverged_note(surfaces: list[Surface], name: str) -> str:
    n = sum(int(np.isposinf(s.values[name]).sum()) for s in surfaces)
    return f"\n{n} diverged point{'s' if n != 1 else ''}, drawn at the top of the range" if n else ""


def _file_names(surfaces: list[Surface]) -> list[str]:
    """The files' names, with their folder's where two share a name (as common.panel_titles)."""
    names = [s.path.name for s in surfaces]
    return [f"{s.path.resolve().parent.name}/{n}" if names.count(n) > 1 else n for s, n in zip(surfaces, names)]


def _figure_2d(surfaces: list[Surface], splits: list[str], values: list[str], opts: dict, hessian: bool = False):
    import plotly.graph_objects as go

    from losslandscape.render import curvature, plot2d

    series = _series_2d(surfaces, _common_series(surfaces, splits, values), opts)
    compare = len(surfaces) > 1
    maps = hessian and not compare and curvature.has_maps(surfaces[0])
    if maps:
        split = surfaces[0].eig_settings.get("split") or ""
        series += [_Series(split, value, [LINEAR]) for value in HESSIAN_MAPS]
    fig = go.Figure()
    panels = []
    w = 0.94 / len(surfaces)
    for i, (s, name) in enumerate(zip(surfaces, _file_names(surfaces))):
        suffix = "" if i == 0 else str(i + 1)
        panel = _Panel(s, f"scene{suffix}", f"x{suffix}", f"y{suffix}")
        if compare:  # a column each: 3-D above, the map below, the panel's title on top
            panel.prefix = f"{name}: "
            panel.scene_x = panel.map_x = (i * w, (i + 1) * w - 0.04)
            panel.scene_y, panel.map_y = (0.44, 0.92), (0.0, 0.38)
        panels.append(panel)
    traces = _Traces(fig, series)
    levels = opts["levels"] or CONTOUR_LEVELS
    for k, s in enumerate(series):
        if s.value in HESSIAN_MAPS:
            _add_hessian_map(traces, go, k, panels[0], opts, levels)
            continue
        for i, panel in enumerate(panels):
            surf, first = panel.surface, i == 0
            view = s.views[s.scales[0]][i]
            xy = {"xaxis": panel.xaxis, "yaxis": panel.yaxis}
            _add_paths_map(traces, go, k, panel)  # first: the marks below are drawn over them
            # Marks on the map, the same on either scale (as plot2d._mark_models).
            if surf.x.min() <= 0 <= surf.x.max() and surf.y.min() <= 0 <= surf.y.max():
                label = plot2d.centre_label(surf)
                traces.add(go.Scatter(
                    x=[0.0], y=[0.0], mode="markers", marker=TRAINED_MARKER, name=label, legendgroup="trained",
                    showlegend=first, hovertemplate=f"{label}<extra></extra>", **xy), k, part="trained")
            best = view.best()
            if best is not None:
                label = panel.prefix + best[3]
                traces.add(go.Scatter(
                    x=[best[0]], y=[best[1]], mode="markers", marker=BEST_MARKER, name=label,
                    legendgroup=f"best-{panel.scene}", hovertemplate=f"{_escape(label)}<extra></extra>", **xy),
                    k, part="best")
            if view.partial() and view.drawable:  # the lines show only whole cells: mark every computed point
                cx, cy, _ = view.computed_points()
                traces.add(go.Scatter(
                    x=cx, y=cy, mode="markers", marker=COMPUTED_MARKER, name="computed point",
                    legendgroup="computed", showlegend=first, hoverinfo="skip", **xy), k, part="computed")
            for scale in s.scales:
                _add_views(traces, go, k, scale, s.views[scale][i], panel, first, levels, opts["zmax"], compare)
        _add_paths_legend(traces, go, k, panels)
        if any(v.partial() for v in s.views[s.scales[0]]):  # a legend entry for the blank, not computed area
            traces.add(go.Scatter(
                x=[None], y=[None], mode="markers", marker=BLANK_MARKER, name="not computed yet (blank)",
                hoverinfo="skip", xaxis=panels[0].xaxis, yaxis=panels[0].yaxis), k, part="blank")
        for scale in s.scales:
            traces.layouts[(k, scale)] = _layout_2d(s, scale, panels, opts["zmax"])
    if maps:  # a Hessian map is shown alone: the 3-D view's axes hidden, the map in the middle
        for (k, _), layout in traces.layouts.items():
            alone = series[k].value in HESSIAN_MAPS
            for axis in ("xaxis", "yaxis", "zaxis"):
                layout[f"scene.{axis}.visible"] = not alone
            layout["xaxis.domain"] = list(HESSIAN_MAP_X if alone else panels[0].map_x)
    _frame_2d(fig, panels)
    traces.finish()
    return fig


def _add_hessian_map(traces: _Traces, go, k: int, panel: _Panel, opts: dict, levels: int) -> None:
    """One of the `hessian` verb's maps as a heat map (one cell per computed point, blank where
    not computed), the trained model marked; the ratio |min/max| on 0..0.5 (--vmin/--vmax) with
    the loss of the Hessian's split as contour lines over it, min_eig on a diverging scale."""
    from losslandscape.render import curvature, plot2d

    s, surf = traces.series[k], panel.surface
    xy = {"xaxis": panel.xaxis, "yaxis": panel.yaxis}
    if s.value == "ratio":
        rng = curvature.ratio_range(opts["vmin"], opts["vmax"])
        z, what, colours = surf.eig_ratio, common.RATIO_LABEL, {"colorscale": COLORSCALE}
    elif s.value == "max":
        z, what = surf.eig["max"], common.LAMBDA_MAX
        finite = z[np.isfinite(z)]
        low, high = float(finite.min()), float(finite.max())
        rng = common.Range(low, high if high > low else low + max(abs(low) * 0.1, 1e-12), False)
        colours = {"colorscale": COLORSCALE}
    else:
        z, what = surf.eig["min"], common.LAMBDA_MIN
        bound = np.abs(z[np.isfinite(z)])
        bound = float(bound.max()) if bound.size and bound.max() > 0 else 1e-12
        rng = common.Range(-bound, bound, False)
        colours = {"colorscale": MIN_EIG_COLORSCALE, "reversescale": True, "zmid": 0.0}
    z = np.where(np.isposinf(z), rng.high, np.where(np.isneginf(z), rng.low, z))
    label = _text(what)
    px, py, pz, _, _ = common.compact_grid(surf.x, surf.y, z)
    traces.add(go.Heatmap(
        x=_cells(px, surf.x), y=_cells(py, surf.y), z=_f32(pz), zmin=rng.low, zmax=rng.high, showscale=True,
        colorbar={"title": {"text": label, "side": "right"}}, hoverongaps=False, name=label,
        hovertemplate=_hover(surf, label, "z"), **colours, **xy), k, LINEAR, "map")
    if s.value == "ratio":
        view = curvature.loss_lines(surf, s.split, opts["log"])
        if view is not None and view.drawable:
            scale = LOG if view.range.log else LINEAR
            name = f"{view.split} loss (white contour lines)"
            traces.add(go.Contour(
                x=view.x, y=view.y, z=_f32(_scale_fn(scale)(view.z)),
                contours={"coloring": "none", **_contour_levels(view.range, scale, levels)},
                line={"color": "rgba(255,255,255,0.9)", "width": 0.8}, showscale=False, hoverinfo="skip",
                name=name, showlegend=True, **xy), k, LINEAR, "lines")
    if surf.x.min() <= 0 <= surf.x.max() and surf.y.min() <= 0 <= surf.y.max():
        centre = plot2d.centre_label(surf)
        traces.add(go.Scatter(
            x=[0.0], y=[0.0], mode="markers", marker=TRAINED_MARKER, name=centre, legendgroup="trained",
            hovertemplate=f"{centre}<extra></extra>", **xy), k, part="trained")
    if surf.eig_fraction_done < 1.0:
        traces.add(go.Scatter(
            x=[None], y=[None], mode="markers", marker=BLANK_MARKER, name="not computed yet (blank)",
            hoverinfo="skip", **xy), k, part="blank")
    title = common.hessian_title(surf, what if s.value == "ratio" else f"Hessian eigenvalue {what}",
                                 surf.eig_settings, surf.eig_fraction_done)
    traces.layouts[(k, LINEAR)] = {"title.text": _text(title)}


def _add_views(
    traces: _Traces, go, k: int, scale: str, view, panel: _Panel, first: bool, levels: int, zmax, compare: bool
) -> None:
    """The 3-D surface (with its marks) and the map (heat map and contour lines) of one view on one scale."""
    from losslandscape.render import plot2d

    s, rng, surf = traces.series[k], view.range, view.surface
    f = _scale_fn(scale)
    top = _top(rng, zmax)
    label = common.value_label(s.split, s.value)
    logged = scale == LOG
    # Hover shows the value itself: not its log10, nor a loss floored at the log scale's bottom
    # (a diverged point shows the top of the range, where it is drawn).
    raw = surf.values[s.name]
    value = np.where(np.isinf(raw), view.full, raw)
    shown = "customdata" if logged else "z"

    def height(v):
        return f(np.minimum(v, top))

    colours = {"cmin": float(f(rng.low)), "cmax": float(f(top)), "colorscale": COLORSCALE}
    # 3-D: the lattice of whole cells (all of the grid once complete), heights clipped at top;
    # at most SURFACE_POINTS a side (as the static view's rcount/ccount), which keeps big grids light.
    if view.drawable:
        rows, cols = common.surface_lattice(surf.x, surf.y, view.full)  # view.x, view.y, view.z's
        rows, cols = rows[_thin(rows.size)], cols[_thin(cols.size)]
        z = view.full[np.ix_(rows, cols)]
        traces.add(go.Surface(
            x=surf.x[cols], y=surf.y[rows], z=_f32(height(z)), customdata=_f32(value[np.ix_(rows, cols)]),
            showscale=False, name=label, scene=panel.scene, hovertemplate=_hover(surf, label, "customdata"),
            lighting={"ambient": 0.75, "diffuse": 0.6, "specular": 0.05}, **colours,
        ), k, scale, "surface")
    else:  # no whole cell yet: the computed points as coloured dots
        px, py, pz = view.computed_points()
        traces.add(go.Scatter3d(
            x=px, y=py, z=_f32(height(pz)), customdata=_f32(value[~np.isnan(view.full)]), mode="markers",
            scene=panel.scene,
            marker={"size": 3, "color": _f32(height(pz)), **colours}, name="computed point", showlegend=False,
            hovertemplate=_hover(surf, label, "customdata"),
        ), k, scale, "surface")
    # The trained model, where (0, 0) is a computed grid point, and the best point, on the surface.
    i, j = int(np.argmin(np.abs(surf.x))), int(np.argmin(np.abs(surf.y)))
    on_grid = abs(surf.x[i]) <= 1e-9 * np.ptp(surf.x) and abs(surf.y[j]) <= 1e-9 * np.ptp(surf.y)
    if on_grid and not np.isnan(view.full[j, i]):
        centre = plot2d.centre_label(surf)
        traces.add(go.Scatter3d(
            x=[0.0], y=[0.0], z=[float(height(view.full[j, i]))], mode="markers", marker=TRAINED_MARKER_3D,
            name=centre, legendgroup="trained", showlegend=False, scene=panel.scene,
            hovertemplate=f"{centre}<extra></extra>"), k, scale, "trained3d")
    best = view.best()
    if best is not None:
        bx, by, bv, blabel = best
        bz = common.clip_diverged(np.array([bv]), rng)[0]
        traces.add(go.Scatter3d(
            x=[bx], y=[by], z=[float(height(bz))], mode="markers", marker=BEST_MARKER_3D,
            name=panel.prefix + blabel, legendgroup=f"best-{panel.scene}", showlegend=False, scene=panel.scene,
            hovertemplate=f"{_escape(panel.prefix + blabel)}<extra></extra>"), k, scale, "best3d")
    # The paths on the surface as drawn (its thinned lattice), else on the floor of the box; lifted
    # a little (PATH_LIFT of the heights' span), as WebGL draws a cell as two flat triangles and a
    # bilinear height inside it can fall just under them.
    if surf.trajectories:
        if view.drawable:
            lift = PATH_LIFT * float(f(top) - f(rng.low))
            lattice = (surf.x[cols], surf.y[rows], height(view.full[np.ix_(rows, cols)]) + lift)
        else:
            lattice = None
        _add_paths_3d(traces, go, k, scale, panel, lattice, float(f(rng.low)))
    # The map: one cell per computed point (rows and columns with none dropped), blank where not computed.
    bar = {"title": {"text": _text(common.value_label(s.split, s.value, logged)), "side": "right"}, **_ticks(rng)}
    if compare:
        bar.update(len=0.42, y=0.0, yanchor="bottom")  # beside the maps' row
    common_args = {
        "zmin": float(f(rng.low)), "zmax": float(f(rng.high)), "colorscale": COLORSCALE, "showscale": first,
        "colorbar": bar, "name": label, "xaxis": panel.xaxis, "yaxis": panel.yaxis, "hoverongaps": False,
        "hovertemplate": _hover(surf, label, shown),
    }
    lines = {"color": "rgba(0,0,0,0.45)", "width": 0.8}
    levels_at = _contour_levels(rng, scale, levels)
    if not np.isnan(view.full).any():  # complete: one trace, heat-map cells with contour lines over them
        traces.add(go.Contour(
            x=surf.x, y=surf.y, z=_f32(f(view.full)), customdata=_f32(value) if logged else None,
            contours={"coloring": "heatmap", **levels_at}, line=lines, **common_args,
        ), k, scale, "map")
        return
    _, _, points_value, _, _ = common.compact_grid(surf.x, surf.y, value)  # the points of view.points_z
    traces.add(go.Heatmap(
        x=_cells(view.points_x, surf.x), y=_cells(view.points_y, surf.y), z=_f32(f(view.points_z)),
        customdata=_f32(points_value) if logged else None, **common_args,
    ), k, scale, "map")
    if view.drawable:  # contour lines over the whole cells
        traces.add(go.Contour(
            x=view.x, y=view.y, z=_f32(f(view.z)), contours={"coloring": "none", **levels_at}, line=lines,
            showscale=False, hoverinfo="skip", xaxis=panel.xaxis, yaxis=panel.yaxis, name=label, showlegend=False,
        ), k, scale, "lines")


# ---------------------------------------------------------------- training paths (PCA surfaces)


def _path_markers(color: str) -> tuple[dict, dict, dict]:
    """Plotly markers of a path (as paths.LINE_STYLE, START_STYLE, END_STYLE): each checkpoint,
    the start, the end."""
    return ({"size": 5, "color": color, "line": {"color": "white", "width": 0.8}},
            {"symbol": "circle", "size": 12, "color": "white", "line": {"color": color, "width": 2.5}},
            {"symbol": "square", "size": 12, "color": color, "line": {"color": "black", "width": 1}})


def _path_hover(surface: Surface, run: dict, name: str) -> tuple[list[str], list[str], str]:
    """Per checkpoint: its name and its projection error; and the hover template."""
    from losslandscape.render import paths

    n = len(run["x"])
    names = [_escape(paths.checkpoint_name(run, i)) for i in range(n)]
    errors = [common.percent(e) if np.isfinite(e) else "unknown" for e in np.asarray(run["error"], dtype=float)]
    xl, yl = (_text(common.axis_label(surface, a)) for a in ("x", "y"))
    template = (f"%{{text}}<br>{xl} %{{x:.4g}}<br>{yl} %{{y:.4g}}<br>off the plane: %{{customdata}}"
                f"<extra>{_escape(name)}</extra>")
    return names, errors, template


def _add_paths_map(traces: _Traces, go, k: int, panel: _Panel) -> None:
    """Each run's path on the panel's map (series k, either scale): the line through its
    checkpoints, named in the legend, then its start and end."""
    from losslandscape.render import paths

    surf = panel.surface
    xy = {"xaxis": panel.xaxis, "yaxis": panel.yaxis}
    for r, run in reversed(list(enumerate(surf.trajectories))):  # the run's own drawn last, on top
        if len(run["x"]) == 0:
            continue
        color, name = paths.color(r), paths.label(run, surf, panel.prefix)
        point, start, end = _path_markers(color)
        text, errors, hover = _path_hover(surf, run, name)
        x, y = np.asarray(run["x"], dtype=float).tolist(), np.asarray(run["y"], dtype=float).tolist()
        group = f"path{r}-{panel.scene}"
        traces.add(go.Scatter(
            x=x, y=y, mode="lines+markers", line={"color": color, "width": 2}, marker=point, name=_escape(name),
            legendgroup=group, legendrank=PATH_LEGEND_RANK + r, text=text, customdata=errors, hovertemplate=hover,
            **xy), k, part="path", run=r)
        for idx, marker, part in ((0, start, "path-start"), (-1, end, "path-end")):
            traces.add(go.Scatter(
                x=[x[idx]], y=[y[idx]], mode="markers", marker=marker, name=_escape(name), legendgroup=group,
                showlegend=False, text=[text[idx]], customdata=[errors[idx]], hovertemplate=hover, **xy),
                k, part=part, run=r)


def _add_paths_legend(traces: _Traces, go, k: int, panels: list[_Panel]) -> None:
    """Legend entries (series k) for the start and end markers, in grey: each run has its colour."""
    from losslandscape.render import paths

    if not any(p.surface.trajectories for p in panels):
        return
    _, start, end = _path_markers("#555555")
    for label, marker, part in ((paths.START_LABEL, start, "path-legend-start"),
                                (paths.END_LABEL, end, "path-legend-end")):
        traces.add(go.Scatter(
            x=[None], y=[None], mode="markers", marker=marker, name=label, hoverinfo="skip",
            legendrank=PATH_LEGEND_RANK + 100, xaxis=panels[0].xaxis, yaxis=panels[0].yaxis), k, part=part)


def _add_paths_3d(traces: _Traces, go, k: int, scale: str, panel: _Panel, lattice: tuple | None,
                  floor: float) -> None:
    """Each run's path on the panel's 3-D view (series k, `scale`): on the surface `lattice`
    (x, y, heights) or at `floor` (see `paths.on_surface`); in its run's legend group."""
    from losslandscape.render import paths

    surf = panel.surface
    for r, run in reversed(list(enumerate(surf.trajectories))):  # the run's own drawn last, on top
        if len(run["x"]) == 0:
            continue
        color, name = paths.color(r), paths.label(run, surf, panel.prefix)
        point, start, end = _path_markers(color)
        text, errors, hover = _path_hover(surf, run, name)
        (lx, ly, lz), (cx, cy, cz) = paths.on_surface(run, surf, lattice, floor)
        group = f"path{r}-{panel.scene}"

        def listed(a) -> list:
            return [None if not np.isfinite(v) else float(f"{v:.7g}") for v in np.asarray(a, dtype=float)]

        traces.add(go.Scatter3d(
            x=listed(lx), y=listed(ly), z=listed(lz), mode="lines", line={"color": color, "width": 5},
            name=_escape(name), legendgroup=group, showlegend=False, hoverinfo="skip", scene=panel.scene,
            connectgaps=False), k, scale, "path3d", run=r)
        on = ~np.isnan(cz)
        # The checkpoints, then the start and the end where they are on the surface.
        marks = [(np.flatnonzero(on), dict(point, size=3.5), "path3d-points")]
        if on[0]:
            marks.append((np.array([0]), dict(start, size=7), "path3d-start"))
        if on[-1]:
            marks.append((np.array([on.size - 1]), dict(end, size=7), "path3d-end"))
        for idx, marker, part in marks:
            if idx.size == 0:
                continue
            traces.add(go.Scatter3d(
                x=cx[idx].tolist(), y=cy[idx].tolist(), z=cz[idx].tolist(), mode="markers", marker=marker,
                name=_escape(name), legendgroup=group, showlegend=False, scene=panel.scene,
                text=[text[i] for i in idx], customdata=[errors[i] for i in idx], hovertemplate=hover),
                k, scale, part, run=r)


def _figure_paths_only(surface: Surface, splits: list[str], values: list[str]):
    """The page of a PCA surface with nothing computed yet: the paths alone, on the map's axes
    (the grid's extent) and on the floor of the 3-D box; the trained model marked."""
    import plotly.graph_objects as go

    from losslandscape.render import plot2d

    split = splits[0]
    value = "loss" if "loss" in values and f"{split}_loss" in surface.values else values[0]
    series = [_Series(split, value, [LINEAR])]
    fig = go.Figure()
    traces = _Traces(fig, series)
    panel = _Panel(surface, "scene", "x", "y")
    xy = {"xaxis": panel.xaxis, "yaxis": panel.yaxis}
    _add_paths_map(traces, go, 0, panel)
    if surface.x.min() <= 0 <= surface.x.max() and surface.y.min() <= 0 <= surface.y.max():
        label = plot2d.centre_label(surface)
        traces.add(go.Scatter(x=[0.0], y=[0.0], mode="markers", marker=TRAINED_MARKER, name=label,
                              legendgroup="trained", hovertemplate=f"{label}<extra></extra>", **xy), 0, part="trained")
    _add_paths_legend(traces, go, 0, [panel])
    _add_paths_3d(traces, go, 0, LINEAR, panel, None, 0.0)
    traces.add(go.Scatter(
        x=[None], y=[None], mode="markers", marker=BLANK_MARKER, name="not computed yet (blank)",
        hoverinfo="skip", **xy), 0, part="blank")
    traces.layouts[(0, LINEAR)] = {
        "title.text": _text(common.title(surface, split, value)), "scene.zaxis.range": [0.0, 1.0],
        "scene.zaxis.showticklabels": False, "scene.zaxis.title.text": "not computed yet",
    }
    _frame_2d(fig, [panel])
    traces.finish()
    return fig


def _thin(n: int) -> np.ndarray:
    """Indices of at most about SURFACE_POINTS of n, evenly strided, the last one kept."""
    stride = -(-n // SURFACE_POINTS)
    idx = np.arange(0, n, stride)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def _layout_2d(s: _Series, scale: str, panels: list[_Panel], zmax) -> dict:
    """What changes in the layout with the series and scale: the title, the panels'
    titles (compare) and the 3-D z axes' titles and ticks."""
    surfaces = [p.surface for p in panels]
    logged = scale == LOG
    if len(panels) == 1:
        title = common.title(surfaces[0], s.split, s.value) + _diverged_note(surfaces, s.name)
    else:
        title = f"{s.split} {VALUE_LABELS[s.value]}" + (" (log scale)" if logged else "")
        title += _diverged_note(surfaces, s.name).replace("\n", ": ")
    layout = {"title.text": _text(title)}
    ztitle = _text(common.value_label(None, s.value, logged))
    f = _scale_fn(scale)
    for i, panel in enumerate(panels):
        rng = s.views[scale][i].range
        top = _top(rng, zmax)
        ticks = _ticks(rng, top)
        layout[f"{panel.scene}.zaxis.title.text"] = ztitle
        # The same heights in every panel (the colour range's, clipped at zmax).
        layout[f"{panel.scene}.zaxis.range"] = [float(f(rng.low)), float(f(top))]
        layout[f"{panel.scene}.zaxis.tickvals"] = ticks.get("tickvals")
        layout[f"{panel.scene}.zaxis.ticktext"] = ticks.get("ticktext")
    if len(panels) > 1:
        titles = common.panel_titles(surfaces, s.split)
        layout["annotations"] = [_panel_title(p, t) for p, t in zip(panels, titles)]
    return layout


def _panel_title(panel: _Panel, text: str) -> dict:
    return {
        "text": _text(text), "x": sum(panel.scene_x) / 2, "y": 0.99, "xref": "paper", "yref": "paper",
        "xanchor": "center", "yanchor": "top", "showarrow": False, "font": {"size": 12},
    }


def _frame_2d(fig, panels: list[_Panel]) -> None:
    """Places the scenes and maps: one file, 3-D left and map right; several, one column
    each, 3-D above the map."""
    layout: dict = {}
    for panel in panels:
        s = panel.surface
        hx, hy = _half_step(s.x), _half_step(s.y)
        xl, yl = (_text(common.axis_label(s, a)) for a in ("x", "y"))
        wx, wy = float(np.ptp(s.x)), float(np.ptp(s.y))
        ratio = wy / wx if common.equal_aspect(s.x, s.y) else 1.0
        layout[panel.scene] = {
            "domain": {"x": list(panel.scene_x), "y": list(panel.scene_y)},
            "xaxis": {"title": {"text": xl}, "range": [float(s.x.min()), float(s.x.max())]},
            "yaxis": {"title": {"text": yl}, "range": [float(s.y.min()), float(s.y.max())]},
            "aspectmode": "manual", "aspectratio": {"x": 1.0, "y": ratio, "z": 0.75},
            "camera": {"eye": CAMERA_EYE},
        }
        xk, yk = _axis_key(panel.xaxis), _axis_key(panel.yaxis)
        layout[xk] = {
            "domain": list(panel.map_x), "anchor": panel.yaxis, "title": {"text": xl},
            "range": _padded(s.x, hx), "showline": True, "mirror": True, "linecolor": "#444", "zeroline": False,
        }
        layout[yk] = {
            "domain": list(panel.map_y), "anchor": panel.xaxis, "title": {"text": yl}, "range": _padded(s.y, hy),
            "showline": True, "mirror": True, "linecolor": "#444", "zeroline": False,
        }
        if common.equal_aspect(s.x, s.y):
            layout[yk].update(scaleanchor=panel.xaxis, scaleratio=1.0, constrain="domain")
            layout[xk]["constrain"] = "domain"
    fig.update_layout(
        template="plotly_white",
        margin=MARGIN,
        title=TITLE,
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.1, "yanchor": "top"},
        hovermode="closest",
        **layout,
    )


def _cells(points: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Heat-map coordinates: the points (Plotly puts the cell edges halfway between them),
    or for a single point its cell's edges, half a grid step either side (Plotly's default is 1)."""
    if points.size > 1:
        return points
    half = _half_step(axis)
    return np.array([points[0] - half, points[0] + half])


def _half_step(a: np.ndarray) -> float:
    return float(np.min(np.abs(np.diff(a)))) / 2 if a.size > 1 else 0.5


def _padded(a: np.ndarray, half: float) -> list[float]:
    """The full grid's extent, half a step out: the map spans the whole grid however little is computed."""
    return [float(a.min()) - half, float(a.max()) + half]


# ---------------------------------------------------------------- 1-D


def _figure_1d(surfaces: list[Surface], splits: list[str], values: list[str], opts: dict):
    """Loss (left axis) and accuracy (right axis) against x; one file, or several
    (a colour each). The scale buttons switch the loss axis between linear and log."""
    import plotly.graph_objects as go
    from losslandscape.render import plot1d

    pairs = _common_series(surfaces, splits, values)
    compare = len(surfaces) > 1
    vmin, vmax, log = opts["vmin"], opts["vmax"], opts["log"]
    has = {v for _, v in pairs}
    series = [_Series(sp, v, [LINEAR]) for sp, v in pairs]
    fig = go.Figure()
    traces = _Traces(fig, series)
    names = _file_names(surfaces)
    loss_rng = acc_rng = None
    if "loss" in has:
        arrays = [s.values[f"{sp}_loss"] for sp, v in pairs if v == "loss" for s in surfaces]
        loss_rng = common.value_range(arrays, "loss", vmin, vmax, bool(log))
    if "acc" in has:
        arrays = [s.values[f"{sp}_acc"] for sp, v in pairs if v == "acc" for s in surfaces]
        acc_rng = common.value_range(arrays, "accuracy")
    marked = set()
    for k, (split, value) in enumerate(pairs):
        rng = loss_rng if value == "loss" else acc_rng
        for i, surf in enumerate(surfaces):
            z = surf.values[f"{split}_{value}"]
            diverged = plot1d.diverged_points(surf, split)
            clipped = common.clip_diverged(z, rng)
            computed = ~np.isnan(clipped)
            keep = computed | diverged
            y = np.where(diverged, np.nan, clipped)[keep]  # None in the JSON: the line breaks there
            sparse = computed.sum() < 0.5 * z.size
            if compare:
                color = FILE_COLORS[i % len(FILE_COLORS)]
                name = f"{names[i]}: {split} {VALUE_LABELS[value]}" + common.done_note(surf, split)
            else:
                color = LOSS_COLOR if value == "loss" else ACC_COLOR
                name = f"{split} {VALUE_LABELS[value]}" + common.done_note(surf, split)
            hover = f"{_text(common.axis_label(surf, 'x'))} %{{x:.4g}}<br>{common.value_label(split, value)} %{{y:.4g}}"
            traces.add(go.Scatter(
                x=surf.x[keep], y=y, mode="lines+markers" if sparse else "lines", name=name,
                line={"color": color, "dash": SPLIT_DASH[split], "width": 1.8}, marker={"size": 5},
                yaxis="y" if value == "loss" else "y2", connectgaps=False,
                hovertemplate=f"{hover}<extra>{_escape(name)}</extra>",
            ), k, part="line")
            # Diverged points: marked at the top of the axis (once per x, on the loss if drawn).
            if diverged.any() and (value == "loss" or "loss" not in has):
                top = rng.high
                traces.add(go.Scatter(
                    x=surf.x[diverged], y=np.full(int(diverged.sum()), top), mode="markers", name="diverged",
                    marker={"symbol": "triangle-up", "size": 9, "color": color}, legendgroup="diverged",
                    showlegend="diverged" not in marked, yaxis="y" if value == "loss" else "y2",
                    hovertemplate="diverged at x = %{x:.4g}<extra></extra>",
                ), k, part="diverged")
                marked.add("diverged")

    # A fixed loss axis where --vmin or --vmax is given (as the curve), else Plotly's autorange.
    fixed = loss_rng is not None and (vmin is not None or vmax is not None)
    _frame_1d(fig, surfaces, pairs, loss_rng if fixed else None, bool(log), compare)
    # The selector: one file's every series at once first (the curve's picture), then each
    # alone; compared files one series at a time (as the static compare).
    menus = []
    if len(pairs) > 1:
        buttons = [] if compare else [{"label": "all", "method": "update", "args": [
            {"visible": [True] * len(fig.data)}, {"yaxis.visible": "loss" in has, "yaxis2.visible": "acc" in has}]}]
        for k, s in enumerate(series):
            vis = traces.visible(k, None)
            buttons.append({"label": s.label, "method": "update", "args": [{"visible": vis}, {
                "yaxis.visible": s.value == "loss", "yaxis2.visible": s.value == "acc"}]})
        menus.append(_menu(buttons, 0, x=0.0, xanchor="left", name="series"))
        if compare:
            for trace, shown in zip(fig.data, traces.visible(0, None)):
                trace.visible = shown
            fig.layout["yaxis.visible"] = pairs[0][1] == "loss"
            fig.layout["yaxis2.visible"] = pairs[0][1] == "acc"
    if loss_rng is not None:
        buttons = []
        for scale in SCALE_BUTTONS:
            change = {"yaxis.type": scale, "yaxis.title.text": _text(
                "loss" + (" (log scale)" if scale == LOG else ""))}
            if fixed:
                lo, hi = loss_rng.low, loss_rng.high
                change["yaxis.range"] = [float(np.log10(lo)), float(np.log10(hi))] if scale == LOG else [lo, hi]
            else:
                change["yaxis.autorange"] = True
            label = "log scale" if scale == LOG else "linear scale"
            buttons.append({"label": label, "method": "relayout", "args": [change]})
        menus.append(_menu(buttons, _scale_index(LOG if log else LINEAR), x=1.0, xanchor="right", name="scale"))
    fig.update_layout(updatemenus=menus)
    scales = [LOG, LINEAR] if log else [LINEAR, LOG]  # the loss's, the first at the start
    fig.layout.meta = {
        "series": [{"name": s.name, "label": s.label, "scales": scales if s.value == "loss" else [LINEAR]}
                   for s in series],
    }
    return fig


def _frame_1d(fig, surfaces: list[Surface], pairs, fixed: common.Range | None, log: bool, compare: bool) -> None:
    """Title, axes (loss left, accuracy right), legend; `fixed` the loss axis's range, if not automatic."""
    from losslandscape.render import plot1d

    s = surfaces[0]
    has = {v for _, v in pairs}
    if compare:
        what = " and ".join(dict.fromkeys(VALUE_LABELS[v] for _, v in pairs))
        title = f"{what}: " + ", ".join(t.split("\n")[0] for t in common.panel_titles(surfaces, pairs[0][0]))
    else:
        title = plot1d._title(s, list(dict.fromkeys(sp for sp, _ in pairs)), list(dict.fromkeys(v for _, v in pairs)))
    yaxis = {"title": {"text": "loss" + (" (log scale)" if log else ""), "font": {"color": LOSS_COLOR}},
             "type": LOG if log else LINEAR, "visible": "loss" in has, "tickfont": {"color": LOSS_COLOR}}
    if fixed is not None:
        lo, hi = fixed.low, fixed.high
        yaxis["range"] = [float(np.log10(lo)), float(np.log10(hi))] if log else [lo, hi]
    xs = np.concatenate([f.x for f in surfaces])
    annotations = []
    if not compare and common.spec_part(s, "directions").get("kind") == "interpolate":
        # An interpolation's ends, x = 0 and x = 1, named by their checkpoints (as plot1d._name_ends).
        for x, key in ((0.0, "checkpoint"), (1.0, "checkpoint2")):
            name = common.checkpoint_name(s, key)
            if name and s.x.min() <= x <= s.x.max():
                annotations.append({"text": _escape(name), "x": x, "xref": "x", "y": 1.0, "yref": "paper",
                                    "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
    fig.update_layout(
        template="plotly_white",
        title={**TITLE, "text": _text(title)},
        margin={**MARGIN, "l": 70, "r": 70},
        xaxis={"title": {"text": _text(common.axis_label(s, "x"))}, "range": [float(xs.min()), float(xs.max())],
               "showline": True, "mirror": True, "linecolor": "#444", "zeroline": False},
        yaxis=yaxis,
        yaxis2={"title": {"text": "accuracy (%)", "font": {"color": ACC_COLOR}}, "overlaying": "y", "side": "right",
                "visible": "acc" in has, "showgrid": "loss" not in has, "tickfont": {"color": ACC_COLOR},
                "tickmode": "auto", "zeroline": False},
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.12, "yanchor": "top"},
        hovermode="closest",
        annotations=annotations,
    )
