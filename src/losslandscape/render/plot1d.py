"""1-D views: loss and accuracy along one direction (the paper's Figures 2-3).

Loss on the left axis, accuracy on a twin right axis; train solid, test dashed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common
from losslandscape.render.surfacefile import VALUE_LABELS, Surface

LOSS_COLOR = "tab:blue"
ACC_COLOR = "tab:red"
SPLIT_STYLE = {"train": "-", "test": "--"}


def _series(surface: Surface, splits: list[str], values: list[str]) -> list[tuple[str, str, np.ndarray]]:
    series = []
    for split in splits:
        for value in values:
            name = f"{split}_{value}"
            data = surface.values.get(name)
            if data is not None and not np.all(np.isnan(data)):
                series.append((split, value, data))
    if not series:
        asked = ", ".join(f"{s}_{v}" for s in splits for v in values)
        raise UserError(f"{surface.path}: nothing is computed yet for {asked}")
    return series


def _draw_line(ax, x: np.ndarray, z: np.ndarray, rng: common.Range, color: str, style: str, label: str) -> list:
    """Draw one series; returns its legend handles (the line, and a marker for diverged points)."""
    diverged = np.isposinf(z)
    z = common.clip_diverged(z, rng)
    computed = ~np.isnan(z)
    # Partial files: join the computed points (coarse-to-fine order leaves a
    # regular subset), and mark them so the sparse sampling is visible.
    marker = "o" if computed.sum() < 0.5 * z.size else None
    handles = ax.plot(x[computed], z[computed], style, color=color, label=label, lw=1.2, marker=marker, ms=2.5)
    if diverged.any():  # clipped to the top: say so with an arrowhead
        handles += ax.plot(x[diverged], z[diverged], "^", color=color, ms=4, clip_on=False, label="diverged")
    return handles


def _title(surface: Surface, splits: list[str], values: list[str]) -> str:
    what = " and ".join(VALUE_LABELS[v] for v in values)
    if len(splits) == 1:
        what = f"{splits[0]} {what}"
    partial = [f"{s} {common.done_note(surface, s).strip(' ()')}" for s in splits if common.done_note(surface, s)]
    return f"{surface.model_name}: {what}" + (f" ({', '.join(partial)})" if partial else "")


def draw_curve(
    ax,
    surface: Surface,
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    loss_range: common.Range | None = None,
) -> list:
    """Draw loss (left axis) and accuracy (right, twin axis) curves into `ax`.
    Returns the line handles, for a legend."""
    series = _series(surface, splits, values)
    loss = [(s, z) for s, v, z in series if v == "loss"]
    acc = [(s, z) for s, v, z in series if v == "acc"]
    handles = []
    ax.set_xlabel(common.axis_label(surface, "x"))
    ax.set_xlim(surface.x.min(), surface.x.max())
    if loss:
        rng = loss_range or common.value_range(
            [z for _, z in loss], f"{surface.path} loss", vmin, vmax, log
        )
        for split, z in loss:
            handles += _draw_line(ax, surface.x, z, rng, LOSS_COLOR, SPLIT_STYLE[split], f"{split} loss")
        if log:
            ax.set_yscale("log")
        if vmin is not None or vmax is not None or loss_range is not None:
            ax.set_ylim(rng.low, rng.high)
        ax.set_ylabel("loss" + (" (log scale)" if log else ""), color=LOSS_COLOR)
        ax.tick_params(axis="y", colors=LOSS_COLOR)
    twin = None
    if acc:
        twin = ax.twinx() if loss else ax
        rng = common.value_range([z for _, z in acc], f"{surface.path} accuracy")
        for split, z in acc:
            label = f"{split} {VALUE_LABELS['acc']}"
            handles += _draw_line(twin, surface.x, z, rng, ACC_COLOR, SPLIT_STYLE[split], label)
        twin.set_ylabel("accuracy (%)", color=ACC_COLOR)
        twin.tick_params(axis="y", colors=ACC_COLOR)
    return handles


def curve(
    surface: Surface,
    out: Path,
    fmt: str,
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
) -> Path:
    """One picture of the 1-D surface: every requested split and value."""
    with common.paper_style():
        fig = common.new_figure(common.WIDTH_IN, 3.2)
        ax = fig.add_subplot()
        handles = draw_curve(ax, surface, splits, values, vmin, vmax, log)
        unique: dict = {}
        for h in handles:  # one "diverged" entry however many series have them
            unique.setdefault(h.get_label(), h)
        handles = list(unique.values())
        ax.set_title(_title(surface, splits, values))
        if len(handles) > 1:
            # Below the axes: inside, it would hide the curves somewhere.
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
        return common.save(fig, out, fmt)


def compare_curves(
    surfaces: list[Surface],
    out: Path,
    fmt: str,
    split: str,
    value: str,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
) -> Path:
    """1-D surfaces side by side, sharing the value axis."""
    name = f"{split}_{value}"
    arrays = [s.values[name] for s in surfaces]
    rng = common.value_range(arrays, name, vmin, vmax, log)
    with common.paper_style():
        fig = common.new_figure(min(2.4 * len(surfaces) + 0.4, 10.0), 2.8)
        axes = fig.subplots(1, len(surfaces), sharey=True, squeeze=False)[0]
        color = LOSS_COLOR if value == "loss" else ACC_COLOR
        for i, (ax, surface) in enumerate(zip(axes, surfaces)):
            _draw_line(ax, surface.x, surface.values[name], rng, color, "-", name)
            ax.set_title(f"{surface.model_name}{common.done_note(surface, split)}")
            ax.set_xlabel(common.axis_label(surface, "x"))
            if log:
                ax.set_yscale("log")
            ax.set_ylim(rng.low, rng.high)
            if i == 0:
                ax.set_ylabel(common.value_label(split, value, log))
        fig.suptitle(f"{split} {VALUE_LABELS[value]}")
        return common.save(fig, out, fmt)
