"""The `render` and `summary` verbs: arguments and the calls behind them.

The main CLI adds a subparser per verb and calls these; UserError propagates
to it, which prints the one-line message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from losslandscape.errors import UserError

from losslandscape.render.kinds import KINDS
from losslandscape.render.mplfigure import FORMATS
from losslandscape.render.output import render
from losslandscape.render.summary import format_summary, summarize
from losslandscape.surfacefile.read import SPLITS, VALUES

log = logging.getLogger(__name__)


def _kinds(text: str) -> list[str]:
    """`--kind contour,heatmap` -> ["contour", "heatmap"], each checked."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}, expected one of {', '.join(KINDS)}")
    if not kinds:
        raise argparse.ArgumentTypeError(f"empty kind, expected one of {', '.join(KINDS)}")
    return kinds


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("surfaces", nargs="+", metavar="SURFACE", help="surface file(s) (.h5)")
    parser.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        type=_kinds,
        metavar="KIND",
        help=f"view to draw, one of {', '.join(KINDS)}; repeat the flag or separate by commas "
        "(default: every view that fits the file, its html page too, 1-D or 2-D; compare when several files "
        "are given)",
    )
    parser.add_argument("--split", choices=SPLITS, help="data split (default: each split computed)")
    parser.add_argument(
        "--value", choices=VALUES,
        help="value to draw (default: loss; curve and html also show accuracy where the file holds it)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: the first surface file's folder)"
    )
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="png", help="picture format (default png)")
    parser.add_argument("--vmin", type=float, help="lowest value of the colour scale and contour levels")
    parser.add_argument("--vmax", type=float, help="highest value of the colour scale and contour levels")
    parser.add_argument("--levels", type=int, help="number of contour levels between vmin and vmax")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--log",
        dest="log",
        action="store_const",
        const=True,
        default=None,
        help="logarithmic value scale (default: log for a loss spanning more than two decades, "
        "unless --vmin or --vmax is given; linear for accuracy, curve and vtp)",
    )
    scale.add_argument(
        "--linear",
        "--no-log",
        dest="log",
        action="store_const",
        const=False,
        help="linear value scale, even for a loss spanning many decades",
    )
    parser.add_argument("--zmax", type=float, help="clip heights above this value (surface3d, vtp, html)")


def run_render(args: argparse.Namespace) -> int:
    out_dir = args.out if args.out is not None else Path(args.surfaces[0]).parent
    check_names(args.surfaces, out_dir, "--out" if args.out is not None else "SURFACE")
    written = render(
        args.surfaces,
        out_dir,
        kinds=None if not args.kinds else [k for group in args.kinds for k in group],
        split=args.split,
        value=args.value,
        fmt=args.fmt,
        vmin=args.vmin,
        vmax=args.vmax,
        levels=args.levels,
        log=args.log,
        zmax=args.zmax,
    )
    log.info("wrote %d file(s) to %s", len(written), out_dir)
    for path in written:
        print(path)
    return 0


NAME_ROOM = 32  # bytes of a name kept for what is added to it while it is written (a temporary's prefix and suffix)


def check_names(surfaces: list, out_dir: Path, key: str) -> None:
    """Before anything is drawn: one line unless the output folder and every output name
    (`<stem>_<split>_<value>_<kind>.<fmt>`, `<stem>_vs_<stem>_..._compare.html`) fit the file
    system's limits (spec.check_path), with NAME_ROOM bytes to spare."""
    from losslandscape.spec import path_limits, check_path, shown  # noqa: PLC0415 (the paths' one check)

    check_path(str(out_dir), key)
    for surface in surfaces:
        check_path(str(surface), "SURFACE")
    name_max = path_limits(str(out_dir / "x"))[1]
    longest = max(len(f"_{split}_{value}_{kind}.{fmt}") for split in SPLITS for value in VALUES
                  for kind in KINDS for fmt in (*FORMATS, "html", "vtp"))
    paths = [Path(p) for p in surfaces]
    stems = [len(os.fsencode(p.stem)) + (len(os.fsencode(p.resolve().parent.name)) + 1
                                          if [q.stem for q in paths].count(p.stem) > 1 else 0) for p in paths]
    for path, size in zip(paths, stems):
        if size + longest > name_max - NAME_ROOM:
            raise UserError(f"SURFACE: {shown(str(path))}: its name is too long to draw ({size} bytes before the "
                            f"views' suffixes, up to {longest}); expected a file name of at most "
                            f"{name_max - NAME_ROOM - longest} bytes (rename or link it)")
    if len(paths) > 1:
        joined = sum(stems[:3]) + 4 * (min(len(stems), 3) - 1) if len(stems) <= 3 else stems[0] + 12
        if joined + longest > name_max - NAME_ROOM:
            raise UserError(f"SURFACE: the comparison's name joins the files' names ({joined} bytes) beyond the "
                            f"file system's {name_max} bytes; expected shorter file names (rename or link them), "
                            "or draw them one at a time")


def add_summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("surface", metavar="SURFACE", help="surface file (.h5)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--threshold",
        type=float,
        default=1.0,
        help="basin radius: where the loss first exceeds the centre's by this much (default 1.0)",
    )


def run_summary(args: argparse.Namespace) -> int:
    summary = summarize(args.surface, threshold=args.threshold)
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))  # standard JSON: null, never Infinity
    else:
        print(format_summary(summary))
    return 0
