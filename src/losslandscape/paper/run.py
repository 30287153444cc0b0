"""Run every experiment of `plan` at one scale with the tool's own verbs, then write the report.

Each step is a command line of the `losslandscape` CLI on a spec in jobs/paper with the scale's
overrides, run in this process by `verbs.run`; with `mpi` > 1 the surface, trajectory and
Hessian steps run under `mpirun -n mpi` instead, unless their file is complete already. A
trained model (its last checkpoint exists) is reused; surfaces, Hessian maps and the
trajectory resume on their own (a finished file costs a second in this process, where the
verb still checks that the file is the step's), so an interrupted `make paper` continues
where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from losslandscape.frontends import verbs
from losslandscape.errors import EXIT_INTERRUPTED, EXIT_STOPPED, UserError
from losslandscape.paper.plan import SCALES, SPEC_DIR, Experiment, commands
from losslandscape.paper.steps import add_time, step_times

log = logging.getLogger(__name__)


def work_dir(out: Path, scale: str) -> Path:
    """Models and surface files of one scale (a rerun at another scale does not collide)."""
    return out / f"work-{scale}"


def _mpirun_env() -> dict[str, str]:
    """This environment without the variables an MPI singleton in this process may have left
    (with them, a child mpirun exits without a word)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}


def run_step(argv: list[str], mpi: int) -> int:
    """One verb: in this process, or under mpirun for the per-point verbs."""
    if mpi > 1 and argv[0] in ("surface", "trajectory", "hessian"):
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise UserError("--mpi: mpirun is not on PATH; install MPI or leave --mpi out")
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []  # containers and test machines run as root
        cmd = [mpirun, *root, "-n", str(mpi), "--oversubscribe", sys.executable, "-m", "losslandscape", *argv]
        log.info("under %s -n %d", mpirun, mpi)
        return subprocess.run(cmd, env=_mpirun_env()).returncode
    return verbs.run(verbs.build_parser(), argv)


def finished(e: Experiment) -> bool:
    """Whether the file a surface, trajectory or Hessian step writes is complete: every point of
    each split it asked for (of the maps, for a Hessian step). A file that is not one of ours
    counts as unfinished: the step itself says what is wrong with it."""
    from losslandscape.surfacefile.read import read_progress  # h5py: not for `losslandscape --help`

    path = Path(e.output())
    if e.verb == "train" or not path.exists():
        return False
    try:
        p = read_progress(path, verb=e.verb)
    except UserError:
        return False
    if e.verb == "hessian":
        return p.eig_done is not None and bool(p.eig_done.all())
    return bool(p.splits) and all(p.done[s].all() for s in p.splits)


def run(scale_name: str, out: str | Path, mpi: int = 1, report: bool = True) -> int:
    """Every step of the paper at `scale_name`, outputs under `out`; returns an exit code."""
    if scale_name not in SCALES:
        raise UserError(f"--scale: {scale_name!r} is not valid; expected one of {', '.join(SCALES)}")
    if scale_name == "full":
        raise UserError("--scale: full is the CIFAR-10 run of a cluster: submit the specs in jobs/paper "
                        "(see their first lines); `paper` runs small or quick")
    if mpi < 1:
        raise UserError(f"--mpi: {mpi} is not valid; expected an integer >= 1")
    if not Path(SPEC_DIR).is_dir():
        raise UserError(f"paper: no {SPEC_DIR} folder here ({Path.cwd()}); run it from the repository root "
                        "(make paper)")
    scale = SCALES[scale_name]
    out = Path(out)
    work = work_dir(out, scale_name)
    work.mkdir(parents=True, exist_ok=True)
    steps = commands(scale, str(work))
    t0 = time.perf_counter()
    log.info("paper, %s scale (%s): %d steps, outputs in %s", scale_name, scale.about, len(steps), work)
    for k, (e, argv) in enumerate(steps, 1):
        label = f"[{k}/{len(steps)}] claim {e.claim}: {e.verb} {e.name}"
        if e.verb == "train" and Path(e.output()).exists():
            log.info("%s: reused %s", label, e.output())
            continue
        log.info("%s: losslandscape %s", label, " ".join(argv))
        started = time.perf_counter()
        # a finished file is checked in this process: not worth mpirun's start-up of every rank
        code = run_step(argv, 1 if finished(e) else mpi)
        add_time(work, e.name + ("/hessian" if e.verb == "hessian" else ""), time.perf_counter() - started)
        if code in (EXIT_STOPPED, EXIT_INTERRUPTED):
            log.warning("paper: stopped at %s; run the same command again to continue", e.name)
            return code
        if code != 0:
            raise UserError(f"paper: step {e.name} ({e.verb}) failed with exit code {code}; the line above says why")
    wall = time.perf_counter() - t0
    log.info("paper: every step done in %.0f s (this run); %.0f s of compute in all runs", wall,
             sum(step_times(work).values()))
    if not report:
        return 0
    from losslandscape.paper.report import write_report  # torch and matplotlib: not for `losslandscape --help`, which imports this

    results = write_report(scale, work, out, mpi)
    for c in results["claims"]:
        print(f"claim {c['claim']}: {'HELD' if c['held'] else 'did not hold'} - {c['title']}")
    print(f"report: {out / 'index.html'}")
    return 0
