"""`render`: the surface files drawn into a folder, every view that fits or the ones asked for,
each under a short name, `<stem>_<split>_<value>_<kind>.<fmt>`. Which function draws a kind
is `kinds.FIGURES`'; this module checks the request, names the files and writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losslandscape.errors import UserError
from losslandscape.render import html, labels, mplfigure, plot1d, plot2d, vtp
from losslandscape.render.kinds import (
    FIGURES, HESSIAN_KINDS, KINDS, check_fits, check_hessian, default_kinds, hessian_kinds,
)
from losslandscape.surfacefile.read import SPLITS, VALUES, Surface, load_surface
from losslandscape.render.view import Options, check_value, compare_splits, held_values, splits_to_draw, value_for


def _check_choice(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        raise UserError(f"{name} is {value!r}, expected one of {', '.join(allowed)}")


def _check_compare(surfaces: list[Surface]) -> None:
    if len(surfaces) < 2:
        raise UserError("--kind compare needs at least two surface files")
    if len({s.ndim for s in surfaces}) > 1:
        raise UserError("--kind compare needs surfaces of the same kind: these mix 1-D and 2-D files")


def _default_compare(surfaces: list[Surface]) -> bool:
    """Whether the default views include compare: several files of one kind sharing a computed split."""
    return len(surfaces) >= 2 and len({s.ndim for s in surfaces}) == 1 and bool(compare_splits(surfaces))


class _Writer:
    """Where and how the files go: the folder, the picture format, the options, and the dict
    that keeps each matplotlib Figure (by path) when the caller asked for them."""

    def __init__(self, out_dir: Path, fmt: str, opts: Options, figures: dict | None):
        self.out_dir, self.fmt, self.opts, self.figures = out_dir, fmt, opts, figures

    def path(self, stem: str, *parts: str | None, ext: str | None = None) -> Path:
        return labels.output_path(self.out_dir, stem, *parts, ext=ext or self.fmt)

    def save(self, fig, out: Path) -> Path:
        """Write a picture; keep its Figure in `figures` when asked, else free it."""
        mplfigure.save(fig, out, self.fmt, keep=self.figures is not None)
        if self.figures is not None:
            self.figures[out] = fig
        return out

    def one_file(self, surface: Surface, stem: str, kind: str, split, value) -> list[Path]:
        """The files of one kind of view of one surface file."""
        check_fits(surface, kind)
        if kind in HESSIAN_KINDS:
            check_hessian(surface, kind, split)
            splits = []
        else:
            splits = splits_to_draw(surface, split)
        if kind == "html":
            values = held_values([surface], value)
            maps = "ratio" in hessian_kinds(surface, split)  # the page offers them too
            out = self.path(stem, split, value, ext="html")
            return [html.write_html(surface, out, splits, values, self.opts, hessian=maps)]
        if kind == "vtp":
            written = []
            for sp in splits:
                v = value_for(surface, sp, value)
                out = self.path(stem, sp, v, ext="vtp")
                written.append(vtp.write_vtp(surface, out, sp, v, log=bool(self.opts.log), zmax=self.opts.zmax))
            return written
        written = []
        for sp, v, fig in FIGURES[kind](surface, splits, value, self.opts):
            # The curve shows every split and value asked for: named by the request.
            parts = (split, value) if kind == "curve" else (sp, v)
            written.append(self.save(fig, self.path(stem, *parts, kind)))
        return written

    def compare(self, surfaces: list[Surface], stems: list[str], split, value) -> list[Path]:
        _check_compare(surfaces)
        if split is not None:
            splits = [split]
        else:
            splits = compare_splits(surfaces)
            if not splits:
                raise UserError("--kind compare: no split (train, test) is computed in every file")
        written = []
        v = value or "loss"
        for sp in splits:
            for s in surfaces:
                if f"{sp}_{v}" not in s.values:
                    raise UserError(f"{s.path} has no {sp}_{v} dataset, needed by --kind compare")
                if np.all(np.isnan(s.values[f"{sp}_{v}"])):
                    raise UserError(f"{s.path}: nothing is computed yet for {sp}_{v}")
            draw = plot1d.compare_curves if surfaces[0].ndim == 1 else plot2d.compare
            out = self.path(labels.compare_stem(stems), sp, v, "compare")
            written.append(self.save(draw(surfaces, sp, v, self.opts), out))
        return written

    def compare_html(self, surfaces: list[Surface], stems: list[str], split, value) -> list[Path]:
        """One page with every file side by side, `<stem>_vs_<stem>_compare.html`, if some
        split and value is computed in every file; else none."""
        splits = [split] if split else [sp for sp in SPLITS if all(s.fraction_done.get(sp, 0) > 0 for s in surfaces)]
        values = held_values(surfaces, value)
        names = [f"{sp}_{v}" for sp in splits for v in values]
        if not any(all(n in s.values and not np.all(np.isnan(s.values[n])) for s in surfaces) for n in names):
            return []
        out = self.path(labels.compare_stem(stems), split, value, "compare", ext="html")
        return [html.write_compare_html(surfaces, out, splits, values, self.opts)]


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

    kinds None draws every view that fits each file (1-D: curve, html; 2-D: contour,
    filled, heatmap, surface3d, vtp, html, and ratio, eigenvalues, spectrum where the
    file has the `hessian` verb's results), plus compare when there are several
    files: every file gets its interactive page, 1-D and 2-D alike. html (asked for,
    or by default) with several files of one kind sharing a computed value also
    writes one page comparing them, `<stem>_vs_<stem>_compare.html`. split None draws each split with points
    computed; value None draws the loss (and the accuracy too in curve and html, where the file
    holds one: a file whose loss defines no accuracy has no accuracy views, and value "acc"
    for it is a UserError). vmin/vmax/levels set the
    colour range and contour levels (vmin/vmax also the ratio map's colour range, 0 to
    0.5 by default; its loss lines ignore them); log True a logarithmic value scale, False
    a linear one, None (default) log for a loss spanning more than two decades
    (see `ranges.auto_log`) in contour, filled, heatmap, surface3d, compare
    and html (2-D), linear elsewhere; zmax clips
    the height of surface3d, vtp and html's 3-D view. Output names are
    `<stem>_<split>_<value>_<kind>.<fmt>` (vtp and html drop the kind).
    figures, a dict, receives each matplotlib picture's Figure by the path it
    was saved to, kept open (to inspect or change); by default they are freed.
    """
    asked = kinds
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no surface file given")
    _check_choice("--format", fmt, mplfigure.FORMATS)
    _check_choice("--split", split, SPLITS)
    _check_choice("--value", value, VALUES)
    for kind in asked or ():
        _check_choice("--kind", kind, KINDS)
    opts = Options(vmin, vmax, levels, log, zmax)
    opts.check()

    surfaces = [load_surface(p) for p in paths]
    check_value(surfaces, value)
    if asked is not None and "compare" in asked:
        _check_compare(surfaces)  # before drawing anything else, so that a refused compare writes nothing
    stems = labels.stems(surfaces)
    writer = _Writer(Path(out_dir), fmt, opts, figures)
    written: list[Path] = []
    for surface, stem in zip(surfaces, stems):
        chosen = default_kinds(surface, split) if asked is None else list(dict.fromkeys(asked))
        for kind in chosen:
            if kind != "compare":
                written += writer.one_file(surface, stem, kind, split, value)
    if (asked is None and _default_compare(surfaces)) or (asked is not None and "compare" in asked):
        written += writer.compare(surfaces, stems, split, value)
    html_asked = asked is None or "html" in asked
    if html_asked and _default_compare(surfaces):
        written += writer.compare_html(surfaces, stems, split, value)
    return written

