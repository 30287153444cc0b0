"""What every view shares: value ranges, clipping, titles (with what the surface
was made from), axis labels, file names, and (for the matplotlib views)
paper-sized figures without pyplot's global state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from losslandscape.errors import UserError
from losslandscape.grid import axis_levels
from losslandscape.render.surfacefile import VALUE_LABELS, Surface

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


@dataclass(frozen=True)
class Range:
    """Colour / level range of one picture; `log` means a logarithmic scale,
    `exact` that the user fixed both ends (then levels are evenly spaced, as
    in the original code, rather than rounded)."""

    low: float
    high: float
    log: bool
    exact: bool = False

    def levels(self, n: int, cover: bool = False) -> np.ndarray:
        """About n contour levels inside [low, high] at round numbers; with
        `cover` the ends are included, so filled contours span the whole range."""
        if self.exact:
            return np.geomspace(self.low, self.high, n) if self.log else np.linspace(self.low, self.high, n)
        from matplotlib.ticker import LogLocator, MaxNLocator

        if self.log:
            decades = np.log10(self.high / self.low)
            per_decade = n / max(decades, 1e-12)
            subs = (1.0,) if per_decade < 2 else (1.0, 2.0, 5.0) if per_decade < 7 else np.arange(1.0, 10.0)
            lv = LogLocator(subs=subs, numticks=4 * n).tick_values(self.low, self.high)
            if np.count_nonzero((lv >= self.low) & (lv <= self.high)) < 3:
                lv = np.geomspace(self.low, self.high, n)
        else:
            lv = MaxNLocator(nbins=max(n - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(self.low, self.high)
        tol = 1e-9 * (self.high - self.low)
        lv = lv[(lv >= self.low - tol) & (lv <= self.high + tol)]
        if cover:
            lv = np.unique(np.concatenate([[self.low], lv, [self.high]]))
            # Drop a sliver band next to an end.
            if lv.size > 3 and (lv[1] - lv[0]) < 0.05 * (lv[2] - lv[1]):
                lv = np.delete(lv, 1)
            if lv.size > 3 and (lv[-1] - lv[-2]) < 0.05 * (lv[-2] - lv[-3]):
                lv = np.delete(lv, -2)
        return lv

    def ticks(self) -> np.ndarray:
        """Round-number colour-bar ticks inside the range (1-2-5 steps on a log scale)."""
        from matplotlib.ticker import LogLocator, MaxNLocator

        if self.log:
            subs = (1.0, 2.0, 5.0) if np.log10(self.high / self.low) < 3 else (1.0,)
            loc = LogLocator(subs=subs, numticks=30)
        else:
            loc = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
        t = loc.tick_values(self.low, self.high)
        tol = 1e-9 * (self.high - self.low)
        t = t[(t >= self.low - tol) & (t <= self.high + tol)]
        if t.size < 2:
            t = np.unique(np.concatenate([[self.low], t, [self.high]]))
        return t

    def norm(self):
        from matplotlib.colors import LogNorm, Normalize

        return LogNorm(self.low, self.high) if self.log else Normalize(self.low, self.high)


# A loss whose finite positive values span more than this ratio gets a log
# scale unless the user asks otherwise: a trained net's loss is ~1e-3 at the
# minimum and ~1e2 at the grid's corners, and linear levels leave the basin blank.
AUTO_LOG_RATIO = 100.0


def auto_log(
    arrays: list[np.ndarray],
    value: str,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool | None = None,
) -> bool:
    """Whether to draw on a log scale. `log` True or False is the user's choice
    (--log, --linear); None picks: log for a loss whose finite positive values
    span more than two decades (max/min > AUTO_LOG_RATIO), when neither vmin
    nor vmax is given; linear otherwise (and always for accuracy)."""
    if log is not None:
        return bool(log)
    if value != "loss" or vmin is not None or vmax is not None:
        return False
    finite = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    positive = finite[np.isfinite(finite) & (finite > 0)]
    if positive.size < 2:
        return False
    return bool(positive.max() > AUTO_LOG_RATIO * positive.min())


def value_range(
    arrays: list[np.ndarray],
    where: str,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
) -> Range:
    """The range that a picture of `arrays` spans: vmin/vmax where given, else the
    finite data's extremes (smallest positive value with `log`). `where` names
    the data in error messages."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if finite.size == 0:
        raise UserError(f"{where}: every computed point diverged (+inf); nothing to draw")
    if log:
        if vmin is not None and vmin <= 0:
            raise UserError(f"--vmin is {vmin}, expected a value > 0 with --log")
        if vmax is not None and vmax <= 0:
            raise UserError(f"--vmax is {vmax}, expected a value > 0 with --log")
        positive = finite[finite > 0]
        if positive.size == 0 and vmin is None:
            raise UserError(f"{where}: no value is > 0, so it cannot be drawn with --log")
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise UserError(f"--vmin {vmin} is not below --vmax {vmax}")
    low = vmin if vmin is not None else float(positive.min() if log else finite.min())
    high = vmax if vmax is not None else float(finite.max())
    if vmin is None and vmax is not None and low >= high:
        low = high / 10 if log else high - 1.0
    if high <= low:  # a flat surface, or vmin above every value
        high = low * 10 if log else low + max(abs(low) * 0.1, 1e-12)
    return Range(float(low), float(high), log, exact=vmin is not None and vmax is not None)


def clip_diverged(z: np.ndarray, rng: Range, zmax: float | None = None) -> np.ndarray:
    """z with +inf clipped to the top of the range (or zmax), -inf to the bottom,
    values above zmax clipped to zmax; NaN (not computed) kept."""
    top = rng.high if zmax is None else zmax
    z = z.copy()
    z[np.isposinf(z)] = top
    z[np.isneginf(z)] = rng.low
    if zmax is not None:
        z[z > zmax] = zmax
    if rng.log:  # zero and below have no logarithm: floor them at the range's bottom
        computed = ~np.isnan(z)
        z[computed & (z < rng.low)] = rng.low
    return z


def compact_grid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop the rows and columns with no computed point.

    Returns x, y, z of the smaller grid and the kept row and column indices
    into the full grid. A partial file computed coarse to fine keeps only the
    rows and columns reached so far.
    """
    computed = ~np.isnan(z)
    rows = np.flatnonzero(computed.any(axis=1))
    cols = np.flatnonzero(computed.any(axis=0))
    return x[cols], y[rows], z[np.ix_(rows, cols)], rows, cols


def complete_cells(computed: np.ndarray) -> np.ndarray:
    """(ny-1, nx-1): cells whose four corners are computed."""
    return computed[:-1, :-1] & computed[1:, :-1] & computed[:-1, 1:] & computed[1:, 1:]


def surface_lattice(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the sub-grid that draws the most of a partial surface.

    Lines, filled contours and 3-D surfaces need cells with four computed
    corners. Halfway through a coarse-to-fine pass the finest rows and columns
    have holes everywhere, so every cell of the full grid is broken while the
    previous pass's coarser grid is whole. Candidates are the rows and columns
    with any computed point, those of them every 2nd, 4th, 8th, ... grid index
    from the first, and those of each level of the coarse-to-fine bisection
    (`grid.levels`); the one whose complete cells cover the largest area wins
    (the finest on a tie). A complete surface always gets its full grid.
    """
    computed = ~np.isnan(z)
    rows = np.flatnonzero(computed.any(axis=1))
    cols = np.flatnonzero(computed.any(axis=0))
    candidates = []
    stride = 1
    while stride < max(z.shape):  # stride-aligned passes (files of the original code, older files)
        candidates.append((rows[(rows - rows[0]) % stride == 0] if rows.size else rows,
                           cols[(cols - cols[0]) % stride == 0] if cols.size else cols))
        stride *= 2
    ry, cx = axis_levels(z.shape[0]), axis_levels(z.shape[1])
    for level in range(int(max(ry.max(), cx.max())) + 1):  # the bisection levels this tool computes in
        candidates.append((rows[ry[rows] <= level], cols[cx[cols] <= level]))
    best, best_area = (rows, cols), -1.0
    for r, c in candidates:
        if r.size < 2 or c.size < 2:
            continue
        cells = complete_cells(computed[np.ix_(r, c)])
        area = float((np.abs(np.diff(y[r]))[:, None] * np.abs(np.diff(x[c]))[None, :])[cells].sum())
        if area > best_area * (1 + 1e-6) or (area >= best_area * (1 - 1e-6) and r.size * c.size > best[0].size * best[1].size):
            best, best_area = (r, c), area
    return best


def done_note(surface: Surface, split: str) -> str:
    """'' when the split is complete, else ' (37% done)'."""
    return fraction_note(surface.fraction_done.get(split, 1.0))


def fraction_note(fraction: float) -> str:
    """'' for 1 (complete), else ' (37% done)'."""
    if fraction >= 1.0:
        return ""
    pct = 100 * fraction
    text = f"{pct:.0f}" if pct >= 1 else f"{pct:.1g}"
    return f" ({text}% done)"


def title(surface: Surface, split: str, value: str) -> str:
    """'resnet56: train loss (37% done)', and below it what the surface was made from."""
    head = f"{surface.model_name}: {split} {VALUE_LABELS[value]}{done_note(surface, split)}"
    made = "; ".join(provenance(surface))
    return f"{head}\n{made}" if made else head


def panel_titles(surfaces: list[Surface], split: str) -> list[str]:
    """Titles of side-by-side panels, told apart by their files: 'a.h5: resnet56 (37% done)'
    (the folder's name added where two files share a name), then what each was made from,
    one part a line, as panels are narrow."""
    names = [s.path.name for s in surfaces]
    titles = []
    for s, name in zip(surfaces, names):
        if names.count(name) > 1:
            name = f"{s.path.resolve().parent.name}/{name}"
        head = name if s.model_name == s.stem else f"{name}: {s.model_name}"
        titles.append("\n".join([head + done_note(s, split), *provenance(s)]))
    return titles


def value_label(split: str | None, value: str, log: bool = False) -> str:
    label = VALUE_LABELS[value] if split is None else f"{split} {VALUE_LABELS[value]}"
    if value == "acc":
        label += " (%)"
    return label + (" (log scale)" if log else "")


def spec_part(surface: Surface, part: str) -> dict:
    """One table of the file's job spec (the `spec` attribute, JSON), e.g. "model";
    {} when the file records none (the original code's files)."""
    spec = surface.attrs.get("spec")
    try:
        spec = json.loads(spec) if isinstance(spec, str) else spec
    except ValueError:
        return {}
    table = spec.get(part) if isinstance(spec, dict) else None
    return table if isinstance(table, dict) else {}


def checkpoint_name(surface: Surface, key: str = "checkpoint") -> str | None:
    """File name of `model.<key>`: "fresh initialisation" when empty, None when not recorded."""
    path = spec_part(surface, "model").get(key)
    if not isinstance(path, str):
        return None
    return Path(path).name if path else "fresh initialisation"


# How random directions were scaled (directions.norm), in words.
NORM_TEXT = {
    "filter": "filter-normalised",
    "layer": "layer-normalised",
    "weight": "weight-normalised",
    "dfilter": "unit-norm filters",
    "dlayer": "unit-norm layers",
    "none": "not normalised",
}


def provenance(surface: Surface) -> list[str]:
    """What the surface was made from, for titles: the checkpoint and the kind of
    directions, e.g. ["resnet56.pt", "random directions, filter-normalised"].
    Parts the spec does not record are left out; the original code's files
    record none, and say so."""
    if surface.original_format:
        return ["loss-landscape (original code) file"]
    parts = [checkpoint_name(surface)]
    d = spec_part(surface, "directions")
    kind = d.get("kind")
    if kind == "random":
        norm = d.get("norm")
        parts.append("random directions" + (f", {NORM_TEXT.get(norm, f'{norm} norm')}" if norm else ""))
    elif kind == "interpolate":
        parts.append(f"interpolation to {checkpoint_name(surface, 'checkpoint2') or 'checkpoint2'}")
    elif kind == "file":
        parts.append(f"directions from {Path(str(d.get('file', ''))).name or 'a file'}")
    elif kind == "hessian":
        parts.append("Hessian eigenvector directions")
    elif kind == "pca":
        glob = Path(str(d.get("checkpoints") or "")).name
        parts.append("PCA directions" + (f" of {glob}" if glob else " of a training run"))
    elif kind:
        parts.append(f"{kind} directions")
    return [p for p in parts if p]


def coord_text(v: float, axis: np.ndarray) -> str:
    """A coordinate in a label: 3 significant digits, float noise around 0 written as 0."""
    if abs(v) <= 1e-9 * float(np.ptp(axis)):
        v = 0.0
    return f"{v + 0.0:.3g}"  # + 0.0 turns -0.0 into 0.0


# Matplotlib mathtext; the HTML page writes them as λ<sub>max</sub> (html._text).
LAMBDA_MAX = r"$\lambda_{\max}$"
LAMBDA_MIN = r"$\lambda_{\min}$"
RATIO_LABEL = r"$|\lambda_{\min} / \lambda_{\max}|$"
# The Hessian's parameters (the `hessian --params` choice), in words.
PARAMS_TEXT = {"all": "all parameters", "weights": "weight tensors only"}


def eigen_axis(surface: Surface, axis: str) -> str | None:
    """For a surface along Hessian eigenvectors (attribute `hessian_which`): 'eigenvector of
    λ_max = 2.9' (x) or 'of λ_min = -0.05' (y); λ_1, λ_2 for which = "top2". None otherwise."""
    which = surface.attrs.get("hessian_which")
    if which is None:
        return None
    k = 0 if axis == "x" else 1
    if which == "maxmin":
        lam = (LAMBDA_MAX, LAMBDA_MIN)[k]
    else:
        lam = rf"$\lambda_{{{k + 1}}}$"
    eigs = surface.attrs.get("hessian_eigenvalues")
    eigs = eigs if isinstance(eigs, list) else [] if eigs is None else [eigs]
    value = eigs[k] if len(eigs) > k and isinstance(eigs[k], (int, float)) else None
    return f"eigenvector of {lam}" + ("" if value is None else f" = {value:.3g}")


def hessian_setup(settings: dict, parameters: int | None = None) -> str:
    """How a Hessian was taken, for titles: 'Hessian of the mean train loss, 1,000 samples,
    all parameters' (settings: split, samples, params, as the `hessian` verb stores them)."""
    split, samples, params = (settings.get(k) for k in ("split", "samples", "params"))
    parts = [f"Hessian of the mean {split} loss" if split else "Hessian of the mean loss"]
    if samples is not None:
        parts.append(f"{samples:,} samples" if samples else "all samples")
    if params is not None or parameters:
        text = PARAMS_TEXT.get(params, f"{params} parameters") if params is not None else "parameters"
        parts.append(text + (f" ({parameters:,})" if parameters else ""))
    return ", ".join(parts)


def hessian_title(surface: Surface, what: str, settings: dict, fraction: float = 1.0,
                  parameters: int | None = None) -> str:
    """'resnet56: |λmin/λmax| (37% done)', then how the Hessian was taken, then what the
    surface was made from."""
    lines = [f"{surface.model_name}: {what}{fraction_note(fraction)}", hessian_setup(settings, parameters)]
    made = "; ".join(provenance(surface))
    return "\n".join(lines + ([made] if made else []))


def axis_label(surface: Surface, axis: str) -> str:
    """Label of the x or y axis, by how the directions were made."""
    eigen = eigen_axis(surface, axis)
    if eigen is not None:
        return eigen
    kind = spec_part(surface, "directions").get("kind")
    if kind == "interpolate" and axis == "x":
        return r"interpolation $\alpha$"
    if kind == "pca" or surface.explained_variance_ratio is not None:
        # The plane of a trajectory's principal components: "PC1 (87.2%)", its share of the variance.
        k = 0 if axis == "x" else 1
        ratio = surface.explained_variance_ratio
        return f"PC{k + 1}" + ("" if ratio is None or not np.isfinite(ratio[k]) else f" ({percent(ratio[k])})")
    return f"{axis} direction"


def percent(fraction: float) -> str:
    """A fraction as a percentage for labels: 0.872 -> '87.2%', 0.0004 -> '0.04%', 0 -> '0%'."""
    p = 100 * float(fraction)
    if p == 0:
        return "0%"
    return f"{p:.1f}%" if abs(p) >= 0.1 else f"{p:.1g}%"


def output_path(out_dir: Path, stem: str, *parts: str | None, ext: str) -> Path:
    """`<out_dir>/<stem>_<part>_..._<part>.<ext>`, skipping empty parts."""
    name = "_".join([stem, *(p for p in parts if p)])
    return out_dir / f"{name}.{ext}"


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
    """Write `fig` (in the paper style: dpi and font types are read at saving);
    then free it, unless `keep`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with paper_style():
        fig.savefig(path, format=fmt, bbox_inches="tight", pad_inches=0.03)  # never clip a label
    if not keep:
        fig.clear()
    return path


def equal_aspect(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal axis scales when both directions span comparable ranges."""
    wx, wy = np.ptp(x), np.ptp(y)
    return wx > 0 and wy > 0 and 1 / 3 <= wx / wy <= 3


def level_format(v: float) -> str:
    """Contour-label text: 3 significant digits, no trailing zeros."""
    return f"{v:.3g}"
