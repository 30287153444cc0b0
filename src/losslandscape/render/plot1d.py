"""1-D views: loss and accuracy along one direction (the paper's Figures 2-3).

Loss on the left axis, accuracy on a twin right axis; train solid, test dashed.
A diverged point (loss +inf, or NaN where computed) breaks the lines of its
split, loss and accuracy alike, and gets a "diverged" marker at the top edge
instead of a clipped value. An interpolation's ends, x = 0 and x = 1, are
named on a top axis: by their checkpoints' file names, or "model A" and "model B"
for the models given to `ll.interpolate`. Each drawing function returns its
Figure; `render` saves it.
"""

from __future__ import annotations

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import labels, mplfigure, ranges
from losslandscape.surfacefile.read import VALUE_LABELS, Surface
from losslandscape.render.view import Options, computed_pairs, diverged_points

LOSS_COLOR = "tab:blue"
ACC_COLOR = "tab:red"
SPLIT_STYLE = {"train": "-", "test": "--"}


def _draw_line(
    ax, x: np.ndarray, z: np.ndarray, rng: ranges.Range, color: str, style: str, label: str,
    diverged: np.ndarray, mark: bool = True,
) -> list:
    """Draw one series; returns its legend handles (the line, and with `mark` a
    "diverged" marker). The line joins the computed points and breaks at the
    `diverged` ones, which are marked at the top edge of the axes instead."""
    z = ranges.clip_diverged(z, rng)
    computed = ~np.isnan(z)
    # Partial files: join the computed points (coarse-to-fine order leaves a
    # regular subset), and mark them so the sparse sampling is visible.
    marker = "o" if computed.sum() < 0.5 * z.size else None
    keep = computed | diverged
    broken = np.where(diverged, np.nan, z)[keep]  # NaN: matplotlib leaves a gap
    handles = ax.plot(x[keep], broken, style, color=color, label=label, lw=1.2, marker=marker, ms=2.5)
    if mark and diverged.any():
        # x in data, y in axes coordinates: on the top edge, whatever the limits.
        handles += ax.plot(
            x[diverged], np.ones(int(diverged.sum())), "^", color=color, ms=4, clip_on=False,
            transform=ax.get_xaxis_transform(), label="diverged",
        )
    return handles


def _name_ends(ax, surface: Surface) -> None:
    """An interpolation's ends, x = 0 and x = 1, named on a top axis as the user named the models:
    their checkpoints' file names, or "model A" and "model B" (labels.model_end)."""
    if labels.spec_part(surface, "directions").get("kind") != "interpolate":
        return
    names = [labels.model_end(surface, key) for key in ("checkpoint", "checkpoint2")]
    ends = [(x, n) for x, n in zip((0.0, 1.0), names) if n and surface.x.min() <= x <= surface.x.max()]
    if ends:
        top = ax.secondary_xaxis("top")
        top.set_xticks([x for x, _ in ends], labels=[n for _, n in ends], fontsize=7)


def draw_curve(
    ax,
    surface: Surface,
    splits: list[str],
    values: list[str],
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    loss_range: ranges.Range | None = None,
) -> list:
    """Draw loss (left axis) and accuracy (right, twin axis) curves into `ax`.
    Returns the line handles, for a legend."""
    series = [(sp, v, surface.values[f"{sp}_{v}"]) for sp, v in computed_pairs([surface], splits, values)]
    loss = [(s, z) for s, v, z in series if v == "loss"]
    acc = [(s, z) for s, v, z in series if v == "acc"]
    handles = []
    ax.set_xlabel(labels.axis_label(surface, "x"))
    ax.set_xlim(surface.x.min(), surface.x.max())
    if loss:
        rng = loss_range or ranges.value_range(
            [z for _, z in loss], f"{surface.path} loss", vmin, vmax, log
        )
        for split, z in loss:
            style = SPLIT_STYLE[split]
            handles += _draw_line(
                ax, surface.x, z, rng, LOSS_COLOR, style, f"{split} loss", diverged_points(surface, split)
            )
        if log:
            ax.set_yscale("log")
        if vmin is not None or vmax is not None or loss_range is not None:
            ax.set_ylim(rng.low, rng.high)
        ax.set_ylabel("loss" + (" (log scale)" if log else ""), color=LOSS_COLOR)
        ax.tick_params(axis="y", colors=LOSS_COLOR)
    twin = None
    if acc:
        twin = ax.twinx() if loss else ax
        rng = ranges.value_range([z for _, z in acc], f"{surface.path} accuracy")
        for split, z in acc:
            label = f"{split} {VALUE_LABELS['acc']}"
            # No accuracy where the loss diverged; marked there already if the loss is drawn.
            diverged = diverged_points(surface, split)
            handles += _draw_line(twin, surface.x, z, rng, ACC_COLOR, SPLIT_STYLE[split], label, diverged, not loss)
        twin.set_ylabel("accuracy (%)", color=ACC_COLOR)
        twin.tick_params(axis="y", colors=ACC_COLOR)
    _name_ends(ax, surface)
    return handles


def curve(surface: Surface, splits: list[str], values: list[str], opts: Options = Options()):
    """One picture of the 1-D surface: every requested split and value (linear unless opts.log);
    returns the Figure."""
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(mplfigure.WIDTH_IN, 3.2)
        ax = fig.add_subplot()
        handles = draw_curve(ax, surface, splits, values, opts.vmin, opts.vmax, bool(opts.log))
        unique: dict = {}
        for h in handles:  # one "diverged" entry however many series have them
            unique.setdefault(h.get_label(), h)
        handles = list(unique.values())
        ax.set_title(labels.curve_title(surface, splits, values))
        if len(handles) > 1:
            # Below the axes: inside, it would hide the curves somewhere.
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
        return fig


def compare_curves(surfaces: list[Surface], split: str, value: str, opts: Options = Options()):
    """1-D surfaces side by side, sharing the value axis, each panel titled by its file; returns the Figure."""
    name = f"{split}_{value}"
    arrays = [s.values[name] for s in surfaces]
    log = bool(opts.log)
    rng = ranges.value_range(arrays, name, opts.vmin, opts.vmax, log)
    with mplfigure.paper_style():
        fig = mplfigure.new_figure(min(2.4 * len(surfaces) + 0.4, 10.0), 3.2)
        axes = fig.subplots(1, len(surfaces), sharey=True, squeeze=False)[0]
        color = LOSS_COLOR if value == "loss" else ACC_COLOR
        handles = []
        for i, (ax, surface, head) in enumerate(zip(axes, surfaces, labels.panel_titles(surfaces, split))):
            diverged = diverged_points(surface, split)
            handles += _draw_line(ax, surface.x, surface.values[name], rng, color, "-", name, diverged)
            _name_ends(ax, surface)
            ax.set_title(head, fontsize=8)
            ax.set_xlabel(labels.axis_label(surface, "x"))
            if log:
                ax.set_yscale("log")
            ax.set_ylim(rng.low, rng.high)
            if i == 0:
                ax.set_ylabel(labels.value_label(split, value, log))
        fig.suptitle(f"{split} {VALUE_LABELS[value]}")
        marks = [h for h in handles if h.get_label() == "diverged"]
        if marks:
            fig.legend(handles=marks[:1], loc="outside lower center", frameon=False)
        return fig
