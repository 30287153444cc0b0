"""The kinds of view, and the one table from a kind to the function that draws it
(`FIGURES`), used by `render` (files) and by `losslandscape.plot` (a Figure in a notebook).

Each entry takes (surface, splits, value, opts) and returns [(split, value, Figure)]: the
splits to draw (already checked), the value asked for (None: each view's default), the
`view.Options`; each Figure with the split and value it shows (None where it shows every
one asked for: the 1-D curve; the Hessian views give the Hessian's split). vtp and html
write files themselves (`output`).
"""

from __future__ import annotations

from typing import Callable

from losslandscape.errors import UserError
from losslandscape.render import curvature, plot1d, plot2d
from losslandscape.surfacefile.read import Surface
from losslandscape.render.view import Options, has_maps, held_values, paths_only, split_views, value_for

KINDS = ("curve", "contour", "filled", "heatmap", "surface3d", "compare", "vtp", "html", "ratio", "eigenvalues",
         "spectrum")
HESSIAN_KINDS = ("ratio", "eigenvalues", "spectrum")  # of the `hessian` verb's results, where a file has them
KINDS_1D = ("curve", "compare", "html")
KINDS_2D = ("contour", "filled", "heatmap", "surface3d", "compare", "vtp", "html", *HESSIAN_KINDS)
DEFAULT_1D = ("curve", "html")  # every file gets its page by default, 1-D as 2-D
MATPLOTLIB_2D = ("contour", "filled", "heatmap", "surface3d")

Drawn = tuple[str | None, str | None, object]  # split, value, matplotlib Figure


def _curve(surface: Surface, splits: list[str], value: str | None, opts: Options) -> list[Drawn]:
    return [(None, None, plot1d.curve(surface, splits, held_values([surface], value), opts))]


def _per_view(draw: Callable) -> Callable:
    """A 2-D view drawn once per split, the splits of one value on one range (`split_views`)."""

    def figures(surface: Surface, splits: list[str], value: str | None, opts: Options) -> list[Drawn]:
        pairs = [(sp, value_for(surface, sp, value)) for sp in splits]
        views = split_views(surface, pairs, opts.vmin, opts.vmax, opts.log)
        return [(v.split, v.value, draw(v, opts)) for v in views]

    return figures


def _of_hessian(draw: Callable, split_of: Callable) -> Callable:
    """A view of the `hessian` verb's results: one figure, of the Hessian's split."""

    def figures(surface: Surface, splits: list[str], value: str | None, opts: Options) -> list[Drawn]:
        return [(split_of(surface), None, draw(surface, opts))]

    return figures


def _maps_split(surface: Surface) -> str | None:
    return surface.eig_settings.get("split")


def _spectrum_split(surface: Surface) -> str | None:
    return surface.centre_spectrum.get("split")


FIGURES: dict[str, Callable[..., list[Drawn]]] = {
    "curve": _curve,
    "contour": _per_view(plot2d.contour),
    "filled": _per_view(plot2d.filled),
    "heatmap": _per_view(plot2d.heatmap),
    "surface3d": _per_view(plot2d.surface3d),
    "ratio": _of_hessian(curvature.ratio, _maps_split),
    "eigenvalues": _of_hessian(curvature.eigenvalues, _maps_split),
    "spectrum": _of_hessian(curvature.spectrum, _spectrum_split),
}


def hessian_kinds(surface: Surface, split: str | None = None) -> list[str]:
    """The Hessian views this file can draw (of `split`, when given): ratio and eigenvalues
    where its maps have a computed point, spectrum where it has the centre's spectrum."""
    kinds = []
    if surface.ndim == 2 and has_maps(surface) and split in (None, _maps_split(surface)):
        kinds += ["ratio", "eigenvalues"]
    spectrum = surface.centre_spectrum
    if spectrum is not None and split in (None, spectrum.get("split")):
        kinds.append("spectrum")
    return kinds


def default_kinds(surface: Surface, split: str | None) -> list[str]:
    if surface.ndim == 1:
        return list(DEFAULT_1D)
    if paths_only(surface):  # no surface yet, so no vtp
        return [*MATPLOTLIB_2D, "html"]
    return [*MATPLOTLIB_2D, *hessian_kinds(surface, split), "vtp", "html"]


def check_fits(surface: Surface, kind: str) -> None:
    """UserError naming the kinds that fit, where `kind` does not fit the file's dimensions."""
    allowed = KINDS_1D if surface.ndim == 1 else KINDS_2D
    if kind not in allowed:
        fits = [k for k in allowed if k != "compare" and (k not in HESSIAN_KINDS or k in hessian_kinds(surface))]
        raise UserError(
            f"--kind {kind} does not fit {surface.path} ({surface.shape_text()}); "
            f"for this file use one of {', '.join(fits)}"
        )


def check_hessian(surface: Surface, kind: str, split: str | None) -> None:
    """UserError where the file lacks the Hessian view's results, or --split asks for another
    split than the Hessian's."""
    if kind == "spectrum":
        curvature.check_spectrum(surface)
        have, what = _spectrum_split(surface), "Hessian spectrum at the centre"
    else:
        curvature.check_maps(surface, kind)
        have, what = _maps_split(surface), "Hessian eigenvalue maps"
    if split is not None and have is not None and split != have:
        raise UserError(f"--kind {kind} --split {split}: the {what} of {surface.path} are of the {have} split")
