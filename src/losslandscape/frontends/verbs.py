"""The verbs of the command line: each one's arguments, and the one library call it makes.

`build_parser` makes the parser of every verb (the options of a spec's tables and of the
hessian and submit verbs are generated from spec.py); `run` parses a command line and runs its
verb in this process. User errors (`UserError`) become one line on stderr and exit 1; anything
else is a bug and keeps its traceback. Exit codes (errors.py): 0 done, 1 error, 3 stopped early
but resumable, 4 finished with missing points, 130 interrupted.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from losslandscape._version import __version__
from losslandscape import errors
from losslandscape.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_MISSING, UserError, print_error
from losslandscape import spec as specs
from losslandscape.render import cli as render_cli  # light: no torch, no matplotlib until it renders
from losslandscape.surfacefile import room

log = logging.getLogger("losslandscape")


def _spec_from_args(args: argparse.Namespace) -> specs.Spec:
    overrides = specs.overrides_from_args(args)
    if getattr(args, "trust_checkpoint", False):
        overrides["model.trust_checkpoint"] = "true"
    spec = specs.load(args.spec, overrides)
    if getattr(args, "trajectory", False) and spec.directions.kind != "pca":
        raise UserError(f'directions.kind: {spec.directions.kind!r} is not valid for `trajectory`; expected "pca" '
                        '(with directions.checkpoints, a glob of the run\'s checkpoints)')
    return spec


def cmd_models(args: argparse.Namespace) -> int:
    from losslandscape.inputs.models import list_models

    rows = list_models()
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}} {count / 1e6:8.2f}M  ({count:,} parameters)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from losslandscape.numerics.devices import pick_device
    from losslandscape.numerics.train import train
    from losslandscape.run.environment import allocated_gpus

    spec = _spec_from_args(args)
    paths = train(spec, pick_device(spec.evaluation.device, allocated=allocated_gpus()))
    log.info("checkpoints in %s", paths[-1].parent)
    return 0


def cmd_surface(args: argparse.Namespace) -> int:
    from losslandscape.run.driver import run_job
    from losslandscape.run.work import SurfaceWork

    return run_job(lambda: SurfaceWork(_spec_from_args(args)), lambda rank: setup_logging(args.verbose, rank))


def cmd_trajectory(args: argparse.Namespace) -> int:
    """`surface` for a spec whose directions are the PCA of a training run (kind = "pca")."""
    args.trajectory = True
    return cmd_surface(args)


def cmd_hessian(args: argparse.Namespace) -> int:
    import json

    from losslandscape.run.hessianmaps import HessianWork, centre_spectrum, format_centre

    settings = specs.options_from_args(specs.Hessian, args, "hessian")
    device = settings.device or None
    if settings.centre:
        result = centre_spectrum(args.surface, settings, settings.top_k, device, trust_file=settings.trust_file)
        if args.json:
            print(json.dumps(result))
        else:
            print(format_centre(result))
        return 0
    from losslandscape.run.driver import run_job

    return run_job(lambda: HessianWork(args.surface, settings, device, settings.trust_file),
                   lambda rank: setup_logging(args.verbose, rank))


def cmd_directions(args: argparse.Namespace) -> int:
    from losslandscape.run.work import prepare

    prep = prepare(_spec_from_args(args))
    log.info("%s %s (directions stored)", "created" if prep.created else "checked", prep.path)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from losslandscape.run.slurm import submit

    opts = specs.options_from_args(specs.Submit, args, "submit")
    spec = _spec_from_args(args)
    record = submit(spec, opts)
    if record.get("array_job"):
        print(f"array job {record['array_job']} ({record['tasks']} tasks), merge job {record['merge_job']}")
        print(f"watch: losslandscape status {spec.output.surface}")
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    from losslandscape.run.slurm import run_task

    return run_task(args.shards, args.task, lambda rank: setup_logging(args.verbose, rank))


def cmd_merge(args: argparse.Namespace) -> int:
    from losslandscape.run.slurm import merge
    from losslandscape.run.status import missing_points

    merge(args.surface, force=args.force)
    missing = missing_points(args.surface)
    if any(missing.values()):
        print(f"{args.surface}: missing points: " + ", ".join(f"{s} {n}" for s, n in missing.items()),
              file=sys.stderr)
        return EXIT_MISSING
    print(f"{args.surface}: complete")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from losslandscape.run.status import format_status, status

    report = status(args.surface)
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


def cmd_from_original(args: argparse.Namespace) -> int:
    from losslandscape.frontends.fromoriginal import translate

    if args.original in (["-h"], ["--help"]):
        args.verb_parser.print_help()
        return 0
    sys.stdout.write(translate(args.original))
    return 0


def _add_spec_verb(sub, name: str, help: str, func, sections=None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("spec", nargs="?", help="job spec (TOML); omitted = all defaults")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints that need full unpickling (runs code from the file: trusted files only)")
    specs.add_override_arguments(p, sections)
    p.set_defaults(func=func)
    return p


class Parser(argparse.ArgumentParser):
    """argparse with the project's errors: one line, exit 1, and a suggestion for a misspelled
    option, instead of the usage dump and exit 2."""

    verb: str | None = None  # the verb on the command line, when there is one

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        choice = re.match(r"argument VERB: invalid choice: '([^']*)'", message)
        if unknown:
            words = unknown.group(1).split()
            option = next((w for w in words if w.startswith("-")), words[0]).split("=", 1)[0]
            own = self._all_options(self.verb)
            close = difflib.get_close_matches(option, own, n=1, cutoff=0.6)
            elsewhere = [v for v in self._verbs() if option in self._all_options(v)]
            if elsewhere and option not in own:
                message = f"{option} is an option of `{elsewhere[0]}`, not of `{self.verb}`"
            else:
                message = f"unknown option {option}" + (f"; did you mean {close[0]}?" if close else
                                                        f"; see {self.prog} {self.verb or ''} --help")
        elif choice:
            close = difflib.get_close_matches(choice.group(1), self._verbs(), n=1, cutoff=0.5)
            message = (f"unknown verb {choice.group(1)!r}" + (f"; did you mean {close[0]}?" if close else "")
                       + f" (verbs: {', '.join(self._verbs())})")
        print_error(" ".join(message.split()))
        sys.exit(EXIT_ERROR)  # a command-line mistake is a user error like any other

    def _verb_parsers(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    def _verbs(self) -> list[str]:
        return list(self._verb_parsers())

    def _all_options(self, verb: str | None = None) -> list[str]:
        """The long options of `verb` (with the global ones), or of every verb."""
        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        subs = self._verb_parsers()
        for name, sub in subs.items():
            if verb is None or name == verb:
                options.extend(o for a in sub._actions for o in a.option_strings if o.startswith("--"))
        return options


def join_negative_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--grid.x -1:1:21` as `--grid.x=-1:1:21`: argparse takes a value that starts with "-"
    (and is not a plain number) for an option, so the value of an option that expects one
    is joined to it when it does not name an option itself."""
    takes_value = {o for o in parser._all_options() if "." in o}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and not argv[i + 1].startswith("--") and len(argv[i + 1]) > 1:
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def build_parser(run_paper: Callable[[argparse.Namespace], int] | None = None) -> Parser:
    """Every verb's parser, in the order `--help` lists them. `run_paper` runs the paper verb;
    without it the parser has no paper verb (the paper's own steps parse with that one)."""
    parser = Parser(
        prog="losslandscape",
        description="Loss landscapes of neural networks (Li et al., NeurIPS 2018) as an HPC batch tool.")
    parser.add_argument("--version", action="version", version=f"losslandscape {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_spec_verbs(sub)
    _add_submit_verb(sub)
    _add_file_verbs(sub)
    _add_hessian_verb(sub)
    if run_paper is not None:
        _add_paper_verb(sub, run_paper)
    _add_render_verbs(sub)
    _add_from_original_verb(sub)
    return parser


def _add_from_original_verb(sub) -> None:
    # "+" for options: every word after the verb, "--" or not, is the original's
    p = sub.add_parser("from-original", prefix_chars="+", add_help=False,
                       help="print the job spec (TOML) of a plot_surface.py command line of the original code",
                       description="Translate a command line of the original loss-landscape code's "
                       "plot_surface.py (its arguments, or the whole pasted line, e.g. mpirun -n 4 python "
                       "plot_surface.py --model resnet56 ...) into the equivalent job spec, printed as TOML with "
                       "a comment per line naming the argument it came from, and where our meaning differs. An "
                       "argument that cannot be expressed is one line on stderr (exit 1) and nothing is printed. "
                       "Save it and run: losslandscape surface job.toml.")
    p.add_argument("original", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="plot_surface.py's arguments (-h alone: this help)")
    p.set_defaults(func=cmd_from_original, verb_parser=p)


def _add_spec_verbs(sub) -> None:
    """`models`, then the verbs that run one spec: train, surface, directions, trajectory."""
    p = sub.add_parser("models", help="list the model zoo with parameter counts",
                       description="List the model zoo with parameter counts.")
    p.set_defaults(func=cmd_models)
    _add_spec_verb(sub, "train", "train a model and write checkpoints", cmd_train, specs.TRAIN_TABLES)
    _add_spec_verb(sub, "surface", "compute (or resume) a loss surface; under mpirun -n N: distributed",
                   cmd_surface, specs.SURFACE_TABLES)
    _add_spec_verb(sub, "directions", "only create the surface file and store its directions", cmd_directions,
                   specs.SURFACE_TABLES)
    _add_spec_verb(sub, "trajectory", "PCA directions of a training run's checkpoints, the run's path on their "
                   "plane, and the surface around the final model (directions.kind = \"pca\"); under mpirun -n N: "
                   "distributed", cmd_trajectory, specs.SURFACE_TABLES)


def _add_submit_verb(sub) -> None:
    p = _add_spec_verb(sub, "submit", "submit a SLURM array of K tasks plus a dependent merge job", cmd_submit,
                       specs.SURFACE_TABLES)
    specs.add_option_arguments(p, specs.Submit, "SLURM")


def _add_file_verbs(sub) -> None:
    """The verbs that work on a surface file or its shards: task, merge, status."""
    p = sub.add_parser("task", help="(run by the sbatch script) compute this array task's shard",
                       description="Run by the array script that `submit` writes: compute the points of one "
                       "shard file with the spec and overrides given to submit.")
    p.add_argument("shards", type=Path, help="the surface's .shards folder")
    p.add_argument("--task", type=int, default=None, help="task index (default: $SLURM_ARRAY_TASK_ID)")
    p.set_defaults(func=cmd_task)

    p = sub.add_parser("merge", help="fold finished shard points into the surface file (safe to run twice)",
                       description="Copy the points that SLURM array tasks finished in their shard files into the "
                       "surface file. Safe to run twice; exit 4 lists the points still missing. Refused while "
                       "the submission's array tasks are queued or running (or squeue fails, so that nobody can tell), unless "
                       "--force.")
    p.add_argument("surface", type=Path)
    p.add_argument("--force", action="store_true",
                   help="merge even while the submission's array tasks are still queued or running (or squeue "
                   "fails)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("status", help="points done / pending, shards and ETA of a surface file",
                       description="Progress of a surface file, also while a job writes it: points done and "
                       "pending per split (every split a run or submission asked for), the SLURM array's shard "
                       "files and how many of their points are not merged yet, the jobs still queued, and an "
                       "ETA from the recorded seconds per point and the workers running now. Reads the file "
                       "read-only, without locking; never changes it.")
    p.add_argument("surface", type=Path, help="the surface file (shards are found beside it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)


def _add_hessian_verb(sub) -> None:
    p = sub.add_parser("hessian", help="extreme Hessian eigenvalues at every grid point (max_eig, min_eig); "
                       "--centre: the spectrum at the trained model",
                       description="At every point of an existing 2-D surface file (same model, data, directions "
                       "and grid), the largest and the smallest eigenvalue of the Hessian of the MEAN loss over the "
                       "split (Li et al.'s convexity map: |min/max|), stored in the file as max_eig, min_eig and "
                       "eig_done; distributed under mpirun and resumable like `surface`. With --centre: at the "
                       "trained model, the top-k eigenvalues, the smallest, a Hutchinson trace estimate and the "
                       "spectral density, stored in the file's hessian_centre group.")
    p.add_argument("surface", type=Path, help="an existing 2-D surface file")
    specs.add_option_arguments(p, specs.Hessian, "hessian options (the keywords of ll.compute_hessian)")
    p.add_argument("--json", action="store_true", help="with --centre: one JSON object on stdout")
    p.set_defaults(func=cmd_hessian)


def _add_paper_verb(sub, run_paper: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("paper", help="the findings of Li et al. (2018) reproduced at small scale: train, compute, "
                       "report (out/paper/index.html, results.json)",
                       description="Train the paper's model families on the digits data, compute their landscapes, "
                       "Hessian maps and a training trajectory with the tool's own verbs (the specs of jobs/paper "
                       "with the scale's overrides), and write a report with the figures, the numbers and, for "
                       "each claim, whether it held by a stated rule. A rerun reuses trained models and finished "
                       "surfaces and resumes partial ones.")
    p.add_argument("--scale", default="small", help="small (about an hour on 2 CPU cores) or quick (minutes)")
    p.add_argument("--out", type=Path, default=Path("out/paper"), help="report folder (default out/paper)")
    p.add_argument("--mpi", type=int, default=1, metavar="N",
                   help="run the surface, trajectory and Hessian steps under mpirun -n N (default 1: in this process)")
    p.set_defaults(func=run_paper)


def _add_render_verbs(sub) -> None:
    p = sub.add_parser("render", help="plots of a finished or partial surface file",
                       description="Plots of finished or partial surface files (ours or the original code's).")
    render_cli.add_render_arguments(p)
    p.set_defaults(func=render_cli.run_render)
    p = sub.add_parser("summary", help="the numbers a paper cites: centre, minimum, rings, basin radius",
                       description="Per split: the values at the centre (the trained model at (0, 0); the "
                       "nearest point when the grid has no point at 0) and at the grid's minimum; the mean loss "
                       "on rings at about 1/4, 1/2, 3/4 and all of the largest radius inside the grid, and its "
                       "increase over the centre; the basin radius along each half-axis: the distance to the "
                       "first point whose loss exceeds the centre's by more than --threshold.")
    render_cli.add_summary_arguments(p)
    p.set_defaults(func=render_cli.run_summary)


def setup_logging(verbose: bool, rank: int | None = None) -> None:
    where = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {where}%(message)s", datefmt="%H:%M:%S", stream=sys.stderr,
        force=True)




def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` (None: this process's arguments) with `parser` and run its verb here; the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser.verb = next((w for w in argv if w in parser._verbs()), None)
    args = parser.parse_args(join_negative_values(argv, parser))
    setup_logging(args.verbose)
    try:
        for name, label in (("surface", "SURFACE"), ("surfaces", "SURFACE"), ("shards", "SHARDS")):
            given = getattr(args, name, None)  # the files named on the command line: names they can be
            for value in given if isinstance(given, list) else [given]:
                if value is not None:
                    specs.check_path(str(value), label)
        with errors.named_as_flags(OPTION_FLAGS):  # errors name --top-k, not top_k
            return int(args.func(args) or 0)
    except UserError as exc:
        print_error(exc)
        if room.left_open():  # a write failed: a normal exit would close the file and segfault (HDF5 1.10)
            room.exit_now(EXIT_ERROR)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("losslandscape: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


OPTION_FLAGS = {**specs.flags(specs.Hessian), **specs.flags(specs.Submit)}
