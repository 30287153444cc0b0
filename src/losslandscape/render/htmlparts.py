"""What the Plotly pages share (`html`, `html1d`): writing a figure as one self-contained
HTML file, text in Plotly's HTML subset, compact arrays, the marks' markers, and the buttons.

How the buttons work, without any JavaScript of ours: every (split, value), on each scale it
can be drawn on, has its own traces (`Traces` records which); a button shows one set and
hides the rest (Plotly's "update" method), and sets the title and the axes. Choosing a split
and value also resets the scale buttons to that choice's first scale and points them at its
traces, so the two rows never disagree.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from losslandscape.render import files, labels
from losslandscape.surfacefile.read import Surface

COLORSCALE = "Viridis"  # plotly's viridis is matplotlib's (mplfigure.CMAP), the static views' colours
LOG, LINEAR = "log", "linear"
SCALE_BUTTONS = (LOG, LINEAR)  # the order of the scale buttons
# The marks of the static views (mplfigure.TRAINED_STYLE, BEST_STYLE, COMPUTED_STYLE).
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
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
# The `hessian` verb's maps a page offers: value -> (series name, button label).
HESSIAN_MAPS = {
    "ratio": ("hessian_ratio", "|min/max| (Hessian)"),
    "max": ("max_eig", "max eigenvalue (Hessian)"),
    "min": ("min_eig", "min eigenvalue (Hessian)"),
}


def write(fig, out: Path, title: str) -> Path:
    """The figure as one HTML file that loads nothing (plotly.js inlined, no MathJax), titled `title`."""
    import plotly.io as pio

    text = pio.to_html(
        fig, include_plotlyjs=True, include_mathjax=False, full_html=True, config=CONFIG,
        default_width="100%", default_height="100%", validate=False,
    )
    head = f'<meta charset="utf-8" />\n    <title>{escape(title)}</title>'
    text = text.replace('<meta charset="utf-8" />', head, 1)
    return files.write_text(out, text)


def escape(text: str) -> str:
    return html.escape(text)


def text(words: str) -> str:
    r"""Plotly text: lines joined by <br>; no $...$ (that would ask for MathJax, which is not there):
    the mathtext of the static views' labels becomes Greek letters and <sub> ($\lambda_{\max}$
    -> λ<sub>max</sub>); an escaped \$ (labels.literal: a file's text) is a dollar sign."""
    words = escape(words).replace("\\$", "\0")
    return re.sub(r"\$([^$]*)\$", lambda m: _math(m[1]), words).replace("\0", "$").replace("\n", "<br>")


def _math(tex: str) -> str:
    r"""A little of matplotlib's mathtext as Plotly's HTML subset: \alpha, \lambda, subscripts."""
    tex = tex.replace("\\alpha", "α").replace("\\lambda", "λ")
    tex = re.sub(r"_\{\\?([^{}]*)\}", r"<sub>\1</sub>", tex)
    tex = re.sub(r"_(\w)", r"<sub>\1</sub>", tex)
    return tex.replace("\\", "").replace(" / ", "/")


def f32(a: np.ndarray) -> np.ndarray:
    """Values as float32 (7 digits: plenty for a picture, and half the page size); NaN stays NaN.
    Plotly 6 and later store them as base64 typed arrays; older versions write JSON numbers,
    where float32's long decimals ("0.02250000089406967") would triple the size: there, the
    values rounded to 6 digits."""
    import plotly

    a = np.asarray(a, dtype=np.float32)
    if int(plotly.__version__.split(".")[0]) >= 6:
        return a
    return np.array([float(f"{v:.6g}") for v in a.ravel().tolist()]).reshape(a.shape)


def hover_xy(surface, label: str, value: str) -> str:
    """Hover text of a 2-D trace: x, y and the value (`value`: the trace's field holding it)."""
    xl, yl = (text(labels.axis_label(surface, a)) for a in ("x", "y"))
    return f"{xl} %{{x:.4g}}<br>{yl} %{{y:.4g}}<br>{label} %{{{value}:.4g}}<extra></extra>"


def menu(buttons: list[dict], active: int, x: float, xanchor: str, name: str) -> dict:
    return {
        "type": "buttons", "direction": "right", "buttons": buttons, "active": active, "name": name,
        "x": x, "xanchor": xanchor, "y": 1.0, "yanchor": "bottom",
        "pad": {"b": 26, "l": 0, "r": 0}, "showactive": True, "font": {"size": 12},
    }


def scale_label(scale: str) -> str:
    return "log scale" if scale == LOG else "linear scale"


@dataclass
class Panel:
    """One file's place on a 2-D page: its 3-D scene's and its map's (row, column) among the
    subplots (`plotly.subplots.make_subplots`)."""

    surface: Surface
    scene_cell: tuple[int, int]
    map_cell: tuple[int, int]
    scene: str  # the scene's layout key: "scene", "scene2", ...
    prefix: str = ""  # legend labels of its best point and paths, e.g. "a.h5: "
    domains: tuple = ()  # scene x, scene y, map x, map y, in the figure's fractions


@dataclass
class Series:
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
        return labels.value_label(self.split, self.value)


class Traces:
    """A figure's traces, each owned by a series (or none: always shown) and a scale
    (or none: shown on either), and the layout each (series, scale) needs."""

    def __init__(self, fig, series: list[Series]):
        self.fig, self.series = fig, series
        self.owners: list[tuple[int | None, str | None]] = []
        self.layouts: dict[tuple[int, str], dict] = {}

    def add(self, trace, series: int | None = None, scale: str | None = None, part: str = "",
            cell: tuple[int, int] | None = None, **meta) -> None:
        """Add `trace` to the subplot at `cell` (row, column), or where the trace says."""
        name = self.series[series].name if series is not None else ""
        trace.meta = {"series": name, "scale": scale or "", "part": part, **meta}
        self.fig.add_trace(trace, *(cell or ()))
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
        toggle = 1 if len(series) > 1 else 0  # the scale row's index among the menus
        if len(series) > 1:
            buttons = []
            for k, s in enumerate(series):
                args = {**self.layouts.get((k, s.scales[0]), {})}
                if toggles:
                    args[f"updatemenus[{toggle}].buttons"] = self._scale_buttons(k)
                    args[f"updatemenus[{toggle}].active"] = SCALE_BUTTONS.index(s.scales[0])
                    args[f"updatemenus[{toggle}].visible"] = len(s.scales) > 1
                buttons.append({"label": s.label, "method": "update",
                                "args": [{"visible": self.visible(k, s.scales[0])}, args]})
            menus.append(menu(buttons, 0, x=0.0, xanchor="left", name="series"))
        if toggles:
            row = menu(self._scale_buttons(0), SCALE_BUTTONS.index(series[0].scales[0]), x=1.0, xanchor="right",
                       name="scale")
            row["visible"] = len(series[0].scales) > 1
            menus.append(row)
        fig.update_layout(updatemenus=menus)
        fig.layout.meta = {
            "series": [{"name": s.name, "label": s.label, "scales": s.scales} for s in series],
        }

    def _scale_buttons(self, k: int) -> list[dict]:
        s = self.series[k]
        buttons = []
        for scale in SCALE_BUTTONS:
            if scale in s.scales:
                args = [{"visible": self.visible(k, scale)}, self.layouts.get((k, scale), {})]
                buttons.append({"label": scale_label(scale), "method": "update", "args": args})
            else:  # not offered for this series (the buttons are hidden then)
                buttons.append({"label": scale_label(scale), "method": "skip", "args": []})
        return buttons
