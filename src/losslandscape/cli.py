"""`losslandscape VERB ...`: parse, call one library function per verb, report.

User errors (`UserError`) become one line on stderr and exit 1; anything else
is a bug and keeps its traceback. Exit codes: 0 done, 1 error, 3 stopped early
but resumable, 4 finished with missing points.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import UserError
from . import spec as specs
from .render import cli as render_cli  # light: no torch, no matplotlib until it renders

log = logging.getLogger("losslandscape")


def _spec_from_args(args: argparse.Namespace) -> specs.Spec:
    overrides = specs.overrides_from_args(args)
    if getattr(args, "trust_checkpoint", False):
        overrides["model.trust_checkpoint"] = "true"
    return specs.load(args.spec, overrides)


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    for name, count in list_models():
        print(f"{name:<20} {count / 1e6:8.2f}M  ({count:,} parameters)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    paths = train(_spec_from_args(args))
    log.info("checkpoints in %s", paths[-1].parent)
    return 0


def cmd_surface(args: argparse.Namespace) -> int:
    from .distributed import QuietExit, run
    from .environment import mpi_environment

    spec = _spec_from_args(args)
    env = mpi_environment()
    if env.comm is not None:
        setup_logging(args.verbose, env.rank)
    try:
        return run(spec, env.comm)
    except QuietExit as exc:
        return exc.code


def cmd_directions(args: argparse.Namespace) -> int:
    from .job import prepare

    prep = prepare(_spec_from_args(args))
    log.info("%s %s (directions stored)", "created" if prep.created else "checked", prep.path)
    return 0


def _add_spec_verb(sub, name: str, help: str, func, sections=None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("spec", nargs="?", help="job spec (TOML); omitted = all defaults")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints that need full unpickling (runs code from the file: trusted files only)")
    specs.add_override_arguments(p, sections)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losslandscape",
        description="Loss landscapes of neural networks (Li et al., NeurIPS 2018) as an HPC batch tool.")
    parser.add_argument("--version", action="version", version=f"losslandscape {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.set_defaults(func=cmd_models)
    _add_spec_verb(sub, "train", "train a model and write checkpoints", cmd_train,
                   ("model", "data", "evaluation", "train"))
    _add_spec_verb(sub, "surface", "compute (or resume) a loss surface; under mpirun -n N: distributed",
                   cmd_surface)
    _add_spec_verb(sub, "directions", "only create the surface file and store its directions", cmd_directions)
    p = sub.add_parser("render", help="plots of a finished or partial surface file")
    render_cli.add_render_arguments(p)
    p.set_defaults(func=render_cli.run_render)
    p = sub.add_parser("summary", help="the numbers a paper cites: centre, minimum, rings, basin radius")
    render_cli.add_summary_arguments(p)
    p.set_defaults(func=render_cli.run_summary)
    return parser


def setup_logging(verbose: bool, rank: int | None = None) -> None:
    where = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {where}%(message)s", datefmt="%H:%M:%S", stream=sys.stderr,
        force=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"losslandscape: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("losslandscape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
