"""The interactive page of 1-D surfaces (`html.figure` of a 1-D file, `html.compare_figure` of
several): loss (left axis) and accuracy (right axis) against x, train solid and test dashed,
as the static curve; several files on one chart, a colour each. Buttons above choose the
series (one file: all of them at once first, as the curve) and switch the loss axis between
linear and log (linear first, unless --log). Diverged points break the line and are marked at
the top of the axis; an interpolation's ends are named as the user named the models.
"""

from __future__ import annotations

import numpy as np

from losslandscape.render import labels, ranges
from losslandscape.render.htmlparts import (
    LINEAR, LOG, MARGIN, SCALE_BUTTONS, TITLE, Series, Traces, escape, menu, scale_label, text,
)
from losslandscape.surfacefile.read import VALUE_LABELS, Surface
from losslandscape.render.view import Options, computed_pairs, diverged_points

LOSS_COLOR, ACC_COLOR = "#1f77b4", "#d62728"  # matplotlib's tab:blue and tab:red, as plot1d
SPLIT_DASH = {"train": "solid", "test": "dash"}
FILE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def figure(surfaces: list[Surface], splits: list[str], values: list[str], opts: Options):
    """Loss and accuracy against x of one file, or of several (a colour each)."""
    import plotly.graph_objects as go

    pairs = computed_pairs(surfaces, splits, values)
    has = {v for _, v in pairs}
    series = [Series(sp, v, [LINEAR]) for sp, v in pairs]
    fig = go.Figure()
    traces = Traces(fig, series)
    rngs = {}
    if "loss" in has:
        arrays = [s.values[f"{sp}_loss"] for sp, v in pairs if v == "loss" for s in surfaces]
        rngs["loss"] = ranges.value_range(arrays, "loss", opts.vmin, opts.vmax, bool(opts.log))
    if "acc" in has:
        arrays = [s.values[f"{sp}_acc"] for sp, v in pairs if v == "acc" for s in surfaces]
        rngs["acc"] = ranges.value_range(arrays, "accuracy")
    _add_lines(traces, go, pairs, surfaces, rngs)
    # A fixed loss axis where --vmin or --vmax is given (as the curve), else Plotly's autorange.
    fixed = rngs["loss"] if "loss" in has and (opts.vmin is not None or opts.vmax is not None) else None
    _frame(fig, surfaces, pairs, fixed, bool(opts.log))
    menus = _series_menu(traces, pairs, len(surfaces) > 1) if len(pairs) > 1 else []
    if "loss" in has:
        menus.append(_scale_menu(fixed, bool(opts.log)))
    fig.update_layout(updatemenus=menus)
    scales = [LOG, LINEAR] if opts.log else [LINEAR, LOG]  # the loss's, the first at the start
    fig.layout.meta = {
        "series": [{"name": s.name, "label": s.label, "scales": scales if s.value == "loss" else [LINEAR]}
                   for s in series],
    }
    return fig


def _add_lines(traces: Traces, go, pairs, surfaces: list[Surface], rngs: dict) -> None:
    """A line per series and file, broken at the diverged points, which are marked at the top of
    the axis (once per x, on the loss where it is drawn)."""
    compare = len(surfaces) > 1
    names = labels.file_names(surfaces)
    has = {v for _, v in pairs}
    marked = False
    for k, (split, value) in enumerate(pairs):
        rng, axis = rngs[value], "y" if value == "loss" else "y2"
        for i, surf in enumerate(surfaces):
            z = surf.values[f"{split}_{value}"]
            diverged = diverged_points(surf, split)
            clipped = ranges.clip_diverged(z, rng)
            computed = ~np.isnan(clipped)
            keep = computed | diverged
            y = np.where(diverged, np.nan, clipped)[keep]  # None in the JSON: the line breaks there
            sparse = computed.sum() < 0.5 * z.size
            name = f"{split} {VALUE_LABELS[value]}" + labels.done_note(surf, split)
            if compare:
                color, name = FILE_COLORS[i % len(FILE_COLORS)], f"{names[i]}: {name}"
            else:
                color = LOSS_COLOR if value == "loss" else ACC_COLOR
            hover = (f"{text(labels.axis_label(surf, 'x'))} %{{x:.4g}}<br>"
                     f"{labels.value_label(split, value)} %{{y:.4g}}")
            traces.add(go.Scatter(
                x=surf.x[keep], y=y, mode="lines+markers" if sparse else "lines", name=name,
                line={"color": color, "dash": SPLIT_DASH[split], "width": 1.8}, marker={"size": 5},
                yaxis=axis, connectgaps=False, hovertemplate=f"{hover}<extra>{escape(name)}</extra>",
            ), k, part="line")
            if diverged.any() and (value == "loss" or "loss" not in has):
                traces.add(go.Scatter(
                    x=surf.x[diverged], y=np.full(int(diverged.sum()), rng.high), mode="markers", name="diverged",
                    marker={"symbol": "triangle-up", "size": 9, "color": color}, legendgroup="diverged",
                    showlegend=not marked, yaxis=axis, hovertemplate="diverged at x = %{x:.4g}<extra></extra>",
                ), k, part="diverged")
                marked = True


def _series_menu(traces: Traces, pairs, compare: bool) -> list[dict]:
    """The selector: one file's every series at once first (the curve's picture), then each
    alone; compared files one series at a time (as the static compare), the first shown."""
    fig, has = traces.fig, {v for _, v in pairs}

    def axes(loss: bool, acc: bool) -> dict:  # the accuracy axis exists only where a file holds accuracy
        return {"yaxis.visible": loss, **({"yaxis2.visible": acc} if "acc" in has else {})}

    buttons = [] if compare else [{"label": "all", "method": "update", "args": [
        {"visible": [True] * len(fig.data)}, axes("loss" in has, "acc" in has)]}]
    for k, s in enumerate(traces.series):
        buttons.append({"label": s.label, "method": "update", "args": [{"visible": traces.visible(k, None)},
                                                                       axes(s.value == "loss", s.value == "acc")]})
    if compare:
        for trace, shown in zip(fig.data, traces.visible(0, None)):
            trace.visible = shown
        for key, shown in axes(pairs[0][1] == "loss", pairs[0][1] == "acc").items():
            fig.layout[key] = shown
    return [menu(buttons, 0, x=0.0, xanchor="left", name="series")]


def _loss_axis(scale: str, fixed: ranges.Range | None) -> dict:
    """The loss axis on `scale`: its title, and its range where fixed (else Plotly's autorange)."""
    axis = {"yaxis.type": scale, "yaxis.title.text": text("loss" + (" (log scale)" if scale == LOG else ""))}
    if fixed is None:
        return {**axis, "yaxis.autorange": True}
    lo, hi = fixed.low, fixed.high
    return {**axis, "yaxis.range": [float(np.log10(lo)), float(np.log10(hi))] if scale == LOG else [lo, hi]}


def _scale_menu(fixed: ranges.Range | None, log: bool) -> dict:
    buttons = [{"label": scale_label(scale), "method": "relayout", "args": [_loss_axis(scale, fixed)]}
               for scale in SCALE_BUTTONS]
    return menu(buttons, SCALE_BUTTONS.index(LOG if log else LINEAR), x=1.0, xanchor="right", name="scale")


def _ends(surface: Surface) -> list[dict]:
    """An interpolation's ends, x = 0 and x = 1, named as the user named the models (as plot1d._name_ends)."""
    if labels.spec_part(surface, "directions").get("kind") != "interpolate":
        return []
    ends = []
    for x, key in ((0.0, "checkpoint"), (1.0, "checkpoint2")):
        name = labels.model_end(surface, key)
        if name and surface.x.min() <= x <= surface.x.max():
            ends.append({"text": text(name), "x": x, "xref": "x", "y": 1.0, "yref": "paper",
                         "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
    return ends


def _frame(fig, surfaces: list[Surface], pairs, fixed: ranges.Range | None, log: bool) -> None:
    """Title, axes (loss left, accuracy right), legend; `fixed` the loss axis's range, if not automatic."""
    s, has = surfaces[0], {v for _, v in pairs}
    if len(surfaces) > 1:
        what = " and ".join(dict.fromkeys(VALUE_LABELS[v] for _, v in pairs))
        title = f"{what}: " + ", ".join(t.split("\n")[0] for t in labels.panel_titles(surfaces, pairs[0][0]))
    else:
        title = labels.curve_title(s, list(dict.fromkeys(sp for sp, _ in pairs)), list(dict.fromkeys(v for _, v in pairs)))
    yaxis = {"title": {"text": "loss" + (" (log scale)" if log else ""), "font": {"color": LOSS_COLOR}},
             "type": LOG if log else LINEAR, "visible": "loss" in has, "tickfont": {"color": LOSS_COLOR}}
    if fixed is not None:
        yaxis["range"] = _loss_axis(LOG if log else LINEAR, fixed)["yaxis.range"]
    xs = np.concatenate([f.x for f in surfaces])
    if "acc" in has:  # no accuracy axis at all where no file holds an accuracy
        fig.update_layout(yaxis2={
            "title": {"text": "accuracy (%)", "font": {"color": ACC_COLOR}}, "overlaying": "y", "side": "right",
            "visible": True, "showgrid": "loss" not in has, "tickfont": {"color": ACC_COLOR}, "tickmode": "auto",
            "zeroline": False})
    fig.update_layout(
        template="plotly_white",
        title={**TITLE, "text": text(title)},
        margin={**MARGIN, "l": 70, "r": 70},
        xaxis={"title": {"text": text(labels.axis_label(s, "x"))}, "range": [float(xs.min()), float(xs.max())],
               "showline": True, "mirror": True, "linecolor": "#444", "zeroline": False},
        yaxis=yaxis,
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.12, "yanchor": "top"},
        hovermode="closest",
        annotations=[] if len(surfaces) > 1 else _ends(s),
    )
