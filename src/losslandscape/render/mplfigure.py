"""What the matplotlib views share: paper-sized figures without pyplot's global state, the
paper's style (scoped, restored on exit), saving, colour bars, the one legend under a
figure, and the marks of the trained model, the best point and the computed points.
matplotlib itself is imported inside the functions, so that importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from losslandscape.render import files, labels, ranges, view
from losslandscape.surfacefile.read import Surface

# Paper figure: 4-5 inch wide, 9 pt text (fits one column of a two-column paper
# at full size, or a 2-column figure at about 0.5 textwidth).
PAPER_RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 9,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in PDFs, so journals' font checks pass
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "image.cmap": "viridis",
}


WIDTH_IN = 4.5
HEIGHT_IN = 3.6
CMAP = "viridis"
FORMATS = ("png", "pdf", "svg")

# The marks every 2-D view shares, kept apart from the colour map's colours.
TRAINED_STYLE = dict(ls="none", marker="P", ms=7, mfc="white", mec="black", mew=0.7)
BEST_STYLE = dict(ls="none", marker="*", ms=10, mfc="tab:red", mec="white", mew=0.6)
COMPUTED_STYLE = dict(ls="none", marker=".", color="0.4", ms=1.5)


def paper_style():
    """Context manager: matplotlib's rc set for paper figures, restored on exit."""
    import matplotlib

    return matplotlib.rc_context(PAPER_RC)


def new_figure(width: float = WIDTH_IN, height: float = HEIGHT_IN):
    """A Figure on its own Agg canvas: nothing registered with pyplot, so
    nothing leaks between figures and the caller's backend is untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path, fmt: str, keep: bool = False) -> Path:
    """Write `fig` (in the paper style: dpi and font types are read at saving), through
    files.write_file; then free it, unless `keep`."""
    with paper_style():
        # never clip a label
        files.write_file(path, lambda f: fig.savefig(f, format=fmt, bbox_inches="tight", pad_inches=0.03))
    if not keep:
        fig.clear()
    return path


def mark_centre(ax, surface: Surface) -> None:
    """The trained model at (0, 0), where the grid reaches it, for the legend."""
    if view.centre_inside(surface):
        ax.plot([0.0], [0.0], label=labels.centre_label(surface), zorder=5, clip_on=False, **TRAINED_STYLE)


def not_computed_handle():
    """Legend entry for the blank area of a partial surface."""
    from matplotlib.patches import Patch

    return Patch(facecolor="white", edgecolor="0.5", linewidth=0.6, label="not computed yet (blank)")


def legend(fig, axes, extra: list = ()) -> None:
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


def colorbar(fig, mappable, ax, rng: ranges.Range, label: str, **kwargs):
    """A colour bar with round ticks, written plainly (0.05, not 5e-2)."""
    from matplotlib.ticker import FuncFormatter

    cbar = fig.colorbar(mappable, ax=ax, **kwargs)
    cbar.set_label(label)
    cbar.set_ticks(rng.ticks())
    if rng.log:
        cbar.minorticks_off()
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return cbar


def scalar_mappable(rng: ranges.Range):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=rng.norm(), cmap=CMAP)
