"""Pictures and numbers from surface files.

    load_surface(path)            -> Surface (NaN where not computed)
    render(paths, out_dir, ...)   -> files written (PNG/PDF/SVG, VTP, HTML)
    summarize(path)               -> dict of summary numbers (JSON-serialisable)

Kinds of view (`KINDS`):
  curve      1-D: loss and accuracy, train and test, on twin axes (Li et al., Figs. 2-3)
  contour    2-D: labelled contour lines (the original code's vmin/vmax/vlevel)
  filled     2-D: filled contours
  heatmap    2-D: one cell per grid point
  surface3d  2-D: shaded 3-D surface
  compare    several files side by side, same levels and colour scale
  vtp        2-D: ParaView XML PolyData, any nx x ny grid
  html       one self-contained interactive page (Plotly, nothing loaded from the network):
             2-D: 3-D surface and heat map with contours; 1-D: loss and accuracy curves;
             with several files, also one page comparing them side by side; a file with
             Hessian eigenvalue maps also offers them, as heat maps
  ratio      2-D, with the `hessian` verb's maps: |min_eig / max_eig| (Li et al., Fig. 8),
             colour scale 0 to 0.5, loss contours over it
  eigenvalues  2-D, with the maps: max_eig and min_eig side by side
  spectrum   with `hessian --centre`: the spectral density at the centre, top and min
             eigenvalues marked, the trace

Partial surfaces draw what is computed and say how much in the title;
diverged points (+inf) are clipped to the top of the colour range (and break
the 1-D curve). Titles say what the surface was made from (checkpoint, kind
of directions); 2-D views mark the trained model (0, 0) and the best point,
with a legend; a file's train and test views share levels and colours.

A PCA surface (directions.kind = "pca") has training paths on its plane: contour,
filled, heatmap, surface3d, compare and html draw each run's path through its
checkpoints, start and end marked, one colour per run, named with its mean projection
error in the legend; the axes are labelled PC1 and PC2 with their share of the
variance and stay at the grid (a path leaving it is cut at the edge, and its legend
entry counts the checkpoints outside). Such a file with nothing computed yet still
draws these views (html included), with the paths alone (see `paths`).

Value scale: `log` True (--log) or False (--linear) forces it; None, the
default, draws a loss whose finite positive values span more than two decades
on a log scale (levels, colours, and log10 heights in surface3d), as a trained
net's surface does (~1e-3 at the minimum, ~1e2 at the corners); accuracy, a
loss in a narrower range, or a given vmin/vmax stays linear. curve and vtp
stay linear unless log is True. The html page starts on the same scale and
has buttons to switch a loss between log and linear.
This package needs numpy, h5py, matplotlib and plotly (html) only: no torch, no MPI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import common
from losslandscape.render.summary import summarize
from losslandscape.render.surfacefile import SPLITS, VALUES, Surface, load_surface

__all__ = ["KINDS", "Surface", "load_surface", "render", "summarize"]

KINDS = ("curve", "contour", "filled", "heatmap", "surface3d", "compare", "vtp", "html", "ratio", "eigenvalues",
         "spectrum")
HESSIAN_KINDS = ("ratio", "eigenvalues", "spectrum")  # of the `hessian` verb's results, where a file has them
KINDS_1D = ("curve", "compare", "html")
KINDS_2D = ("contour", "filled", "heatmap", "surface3d", "compare", "vtp", "html", *HESSIAN_KINDS)
DEFAULT_1D = ("curve",)
DEFAULT_2D = ("contour", "filled", "heatmap", "surface3d", "vtp", "html")
MATPLOTLIB_2D = ("contour", "filled", "heatmap", "surface3d")


def _check_choice(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        raise UserError(f"{name} is {value!r}, expected one of {', '.join(allowed)}")


def _stems(surfaces: list[Surface]) -> list[str]:
    """Output name stems: the file stem, with its folder's name where two files share a stem."""
    stems = [s.stem for s in surfaces]
    return [
        st if stems.count(st) == 1 else f"{s.path.resolve().parent.name}_{st}" for st, s in zip(stems, surfaces)
    ]


def _nothing_computed(surface: Surface) -> bool:
    return all(f == 0 for f in surface.fraction_done.values())


def _paths_only(surface: Surface) -> bool:
    """A 2-D file with training paths and nothing computed yet: its views draw the paths alone."""
    return surface.ndim == 2 and bool(surface.trajectories) and _nothing_computed(surface)


def _splits(surface: Surface, split: str | None) -> list[str]:
    """Splits to draw: the one asked for, or every split with something computed (with nothing
    computed in a file with paths: the splits it was asked for, to draw the paths)."""
    if _paths_only(surface):
        if split is not None and split not in surface.splits:
            present = ", ".join(surface.values)
            raise UserError(f"{surface.path} has no {split}_loss or {split}_acc dataset (present: {present})")
        asked = surface.attrs.get("splits")
        try:
            asked = json.loads(asked) if isinstance(asked, str) else common.spec_part(surface, "data").get("splits")
        except ValueError:
            asked = None
        asked = [sp for sp in surface.splits if isinstance(asked, list) and sp in asked]
        return [split] if split is not None else asked or surface.splits
    if split is not None:
        if split not in surface.splits:
            present = ", ".join(surface.values)
            raise UserError(f"{surface.path} has no {split}_loss or {split}_acc dataset (present: {present})")
        if surface.fraction_done[split] == 0:
            raise UserError(f"{surface.path}: nothing is computed yet for split {split} (0 points done)")
        return [split]
    splits = [s for s in surface.splits if surface.fraction_done[s] > 0]
    if not splits:
        raise UserError(f"{surface.path}: nothing is computed yet (0 points done)")
    return splits


def hessian_kinds(surface: Surface, split: str | None = None) -> list[str]:
    """The Hessian views this file can draw (of `split`, when given): ratio and eigenvalues
    where its maps have a computed point, spectrum where it has the centre's spectrum."""
    from losslandscape.render import curvature

    kinds = []
    if surface.ndim == 2 and curvature.has_maps(surface) and split in (None, surface.eig_settings.get("split")):
        kinds += ["ratio", "eigenvalues"]
    spectrum = surface.centre_spectrum
    if spectrum is not None and split in (None, spectrum.get("split")):
        kinds.append("spectrum")
    return kinds


def _default_kinds(surface: Surface, split: str | None) -> list[str]:
    if surface.ndim == 1:
        return list(DEFAULT_1D)
    if _paths_only(surface):  # no surface yet, so no vtp
        return [*MATPLOTLIB_2D, "html"]
    extra = hessian_kinds(surface, split)
    return [*MATPLOTLIB_2D, *extra, "vtp", "html"]


def _check_hessian_split(surface: Surface, kind: str, split: str | None) -> str | None:
    """The split of the Hessian a view draws; UserError where --split asks for another."""
    if kind == "spectrum":
        have, what = surface.centre_spectrum.get("split"), "Hessian spectrum at the centre"
    else:
        have, what = surface.eig_settings.get("split"), "Hessian eigenvalue maps"
    if split is not None and have is not None and split != have:
        raise UserError(f"--kind {kind} --split {split}: the {what} of {surface.path} are of the {have} split")
    return have


def _value_for(surface: Surface, split: str, value: str | None) -> str:
    """The value a single-value view draws: the one asked for, else loss (acc if no loss)."""
    if value is not None:
        return value
    return "loss" if f"{split}_loss" in surface.values else "acc"


def _save(fig, out: Path, fmt: str, figures: dict | None) -> Path:
    """Write a picture; keep its Figure in `figures` (by path) when asked, else free it."""
    common.save(fig, out, fmt, keep=figures is not None)
    if figures is not None:
        figures[out] = fig
    return out


def _render_one(
    surface: Surface, stem: str, out_dir: Path, kinds: list[str], split, value, fmt, opts, figures
) -> list[Path]:
    written: list[Path] = []
    vmin, vmax, levels, log, zmax = (opts[k] for k in ("vmin", "vmax", "levels", "log", "zmax"))
    for kind in kinds:
        if kind == "compare":
            continue
        allowed = KINDS_1D if surface.ndim == 1 else KINDS_2D
        if kind not in allowed:
            fits = [k for k in allowed if k != "compare" and (k not in HESSIAN_KINDS or k in hessian_kinds(surface))]
            raise UserError(
                f"--kind {kind} does not fit {surface.path} ({surface.shape_text()}); "
                f"for this file use one of {', '.join(fits)}"
            )
        if kind in HESSIAN_KINDS:
            from losslandscape.render import curvature

            if kind == "spectrum":
                curvature.check_spectrum(surface)
            else:
                curvature.check_maps(surface, kind)
            hsplit = _check_hessian_split(surface, kind, split)
            out = common.output_path(out_dir, stem, hsplit, kind, ext=fmt)
            if kind == "ratio":
                fig = curvature.ratio(surface, vmin, vmax, levels, log)
            elif kind == "eigenvalues":
                fig = curvature.eigenvalues(surface)
            else:
                fig = curvature.spectrum(surface)
            written.append(_save(fig, out, fmt, figures))
            continue
        splits = _splits(surface, split)
        if kind == "curve":
            from losslandscape.render import plot1d

            values = [value] if value else list(VALUES)
            out = common.output_path(out_dir, stem, split, value, "curve", ext=fmt)
            written.append(_save(plot1d.curve(surface, splits, values, vmin, vmax, bool(log)), out, fmt, figures))
        elif kind == "html":
            from losslandscape.render import html

            values = [value] if value else list(VALUES)
            out = common.output_path(out_dir, stem, split, value, ext="html")
            maps = "ratio" in hessian_kinds(surface, split)  # the page offers them too
            written.append(html.write_html(surface, out, splits, values, hessian=maps, **opts))
        elif kind == "vtp":
            from losslandscape.render import vtp

            for sp in splits:
                v = _value_for(surface, sp, value)
                out = common.output_path(out_dir, stem, sp, v, ext="vtp")
                written.append(vtp.write_vtp(surface, out, sp, v, log=bool(log), zmax=zmax))
        else:
            from losslandscape.render import plot2d

            pairs = [(sp, _value_for(surface, sp, value)) for sp in splits]
            for view in plot2d.split_views(surface, pairs, vmin, vmax, log):
                out = common.output_path(out_dir, stem, view.split, view.value, kind, ext=fmt)
                if kind == "contour":
                    fig = plot2d.contour(view, levels)
                elif kind == "filled":
                    fig = plot2d.filled(view, levels)
                elif kind == "heatmap":
                    fig = plot2d.heatmap(view)
                else:
                    fig = plot2d.surface3d(view, zmax)
                written.append(_save(fig, out, fmt, figures))
    return written


def _default_compare(surfaces: list[Surface]) -> bool:
    """Whether the default views include compare: several files of one kind sharing a computed split."""
    if len(surfaces) < 2 or len({s.ndim for s in surfaces}) > 1:
        return False
    return any(all(sp in s.splits and s.fraction_done[sp] > 0 for s in surfaces) for sp in SPLITS)


def _render_compare(
    surfaces: list[Surface], stems: list[str], out_dir: Path, split, value, fmt, opts, figures
) -> list[Path]:
    if len(surfaces) < 2:
        raise UserError("--kind compare needs at least two surface files")
    dims = {s.ndim for s in surfaces}
    if len(dims) > 1:
        raise UserError("--kind compare needs surfaces of the same kind: these mix 1-D and 2-D files")
    if split is not None:
        splits = [split]
    else:
        splits = [sp for sp in SPLITS if all(sp in s.splits and s.fraction_done[sp] > 0 for s in surfaces)]
        if not splits:
            raise UserError("--kind compare: no split (train, test) is computed in every file")
    name_stem = "_vs_".join(stems) if len(stems) <= 3 else f"{stems[0]}_vs_{len(stems) - 1}_more"
    written = []
    for sp in splits:
        v = value or "loss"
        for s in surfaces:
            if f"{sp}_{v}" not in s.values:
                raise UserError(f"{s.path} has no {sp}_{v} dataset, needed by --kind compare")
            if np.all(np.isnan(s.values[f"{sp}_{v}"])):
                raise UserError(f"{s.path}: nothing is computed yet for {sp}_{v}")
        out = common.output_path(out_dir, name_stem, sp, v, "compare", ext=fmt)
        if dims == {1}:
            from losslandscape.render import plot1d

            fig = plot1d.compare_curves(surfaces, sp, v, opts["vmin"], opts["vmax"], bool(opts["log"]))
        else:
            from losslandscape.render import plot2d

            fig = plot2d.compare(surfaces, sp, v, opts["vmin"], opts["vmax"], opts["levels"], opts["log"])
        written.append(_save(fig, out, fmt, figures))
    return written


def render(
    paths: list[str | Path],
    out_dir: str | Path,
    kinds: list[str] | None = None,
    split: str | None = None,
    value: str | None = None,
    fmt: str = "png",
    vmin: float | None = None,
    vmax: float | None = None,
    levels: int | None = None,
    log: bool | None = None,
    zmax: float | None = None,
    figures: dict | None = None,
) -> list[Path]:
    """Draw the surface files in `paths` into `out_dir`; return the files written.

    kinds None draws every view that fits each file (1-D: curve; 2-D: contour,
    filled, heatmap, surface3d, vtp, html, and ratio, eigenvalues, spectrum where the
    file has the `hessian` verb's results), plus compare when there are several
    files; html (asked for, or by default for 2-D files) with several files of
    one kind sharing a computed value also writes one page comparing them,
    `<stem>_vs_<stem>_compare.html`. split None draws each split with points
    computed; value None draws the loss (and the accuracy too in curve and html). vmin/vmax/levels set the
    colour range and contour levels (vmin/vmax also the ratio map's colour range, 0 to
    0.5 by default; its loss lines ignore them); log True a logarithmic value scale, False
    a linear one, None (default) log for a loss spanning more than two decades
    (see `common.auto_log`) in contour, filled, heatmap, surface3d, compare
    and html (2-D), linear elsewhere; zmax clips
    the height of surface3d, vtp and html's 3-D view. Output names are
    `<stem>_<split>_<value>_<kind>.<fmt>` (vtp and html drop the kind).
    figures, a dict, receives each matplotlib picture's Figure by the path it
    was saved to, kept open (to inspect or change); by default they are freed.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no surface file given")
    _check_choice("--format", fmt, common.FORMATS)
    _check_choice("--split", split, SPLITS)
    _check_choice("--value", value, VALUES)
    for kind in kinds or ():
        _check_choice("--kind", kind, KINDS)
    if levels is not None and levels < 2:
        raise UserError(f"--levels is {levels}, expected at least 2")
    if zmax is not None and not np.isfinite(zmax):
        raise UserError(f"--zmax is {zmax}, expected a finite number")

    surfaces = [load_surface(p) for p in paths]
    if kinds is not None and "compare" in kinds:
        # Before drawing anything else, so that a refused compare writes nothing.
        if len(surfaces) < 2:
            raise UserError("--kind compare needs at least two surface files")
        if len({s.ndim for s in surfaces}) > 1:
            raise UserError("--kind compare needs surfaces of the same kind: these mix 1-D and 2-D files")
    stems = _stems(surfaces)
    out_dir = Path(out_dir)
    opts = {"vmin": vmin, "vmax": vmax, "levels": levels, "log": log, "zmax": zmax}
    written: list[Path] = []
    for surface, stem in zip(surfaces, stems):
        if kinds is None:
            chosen = _default_kinds(surface, split)
        else:
            chosen = list(dict.fromkeys(kinds))  # in order, each once
        if chosen == ["compare"]:
            continue
        written += _render_one(surface, stem, out_dir, chosen, split, value, fmt, opts, figures)
    if (kinds is None and _default_compare(surfaces)) or (kinds is not None and "compare" in kinds):
        written += _render_compare(surfaces, stems, out_dir, split, value, fmt, opts, figures)
    html_asked = "html" in kinds if kinds is not None else all(s.ndim == 2 for s in surfaces)
    if html_asked and _default_compare(surfaces):
        written += _render_compare_html(surfaces, stems, out_dir, split, value, opts)
    return written


def _render_compare_html(surfaces: list[Surface], stems: list[str], out_dir: Path, split, value, opts) -> list[Path]:
    """One page with every file side by side, `<stem>_vs_<stem>_compare.html`, if some
    split and value is computed in every file; else none."""
    from losslandscape.render import html

    splits = [split] if split else [sp for sp in SPLITS if all(s.fraction_done.get(sp, 0) > 0 for s in surfaces)]
    values = [value] if value else list(VALUES)
    names = [f"{sp}_{v}" for sp in splits for v in values]
    if not any(all(n in s.values and not np.all(np.isnan(s.values[n])) for s in surfaces) for n in names):
        return []
    name_stem = "_vs_".join(stems) if len(stems) <= 3 else f"{stems[0]}_vs_{len(stems) - 1}_more"
    out = common.output_path(out_dir, name_stem, split, value, "compare", ext="html")
    return [html.write_compare_html(surfaces, out, splits, values, **opts)]
