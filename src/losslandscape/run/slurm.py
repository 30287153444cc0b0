"""SLURM array jobs: submit, the array task itself, merge, status.

Independent MPI jobs cannot safely share one parallel-HDF5 file, so `submit`
splits the pending points over K array tasks and gives each its own shard
file beside the surface file (`<surface>.shards/task_<k>.h5`), with its
points stored in it: tasks agree without talking. Each task is itself an MPI
job over its ranks. A merge job (`--dependency=afterany:<array>`) copies
finished shard points into the surface file; `merge` is safe to run twice.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from losslandscape import spec as specs
from losslandscape.inputs import data as datasets
from losslandscape.surfacefile import format as ff
from losslandscape.surfacefile import write as surface
from losslandscape.inputs import userimport
from losslandscape.surfacefile import lock as writelock
from losslandscape.run.driver import run_job
from losslandscape.errors import UserError, option
from losslandscape.spec import Submit
from losslandscape.surfacefile.format import SUBMISSION, read_submission, shard_dir, shard_files
from losslandscape.surfacefile.read import read_shard_spec
from losslandscape.numerics.grid import GridAxes, assign_tasks, coarse_to_fine, is_auto
from losslandscape.numerics.schedule import resolve_unit_size
from losslandscape.run.work import SurfaceWork, prepare
from losslandscape.run.work import with_grid
from losslandscape.cluster import SlurmEnvironment, SqueueFailed, queued

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[3] / "slurm"


def _template(name: str) -> string.Template:
    path = Path(os.environ.get("LOSSLANDSCAPE_TEMPLATES", TEMPLATES)) / name
    if not path.is_file():
        raise UserError(f"sbatch template {path} not found (set LOSSLANDSCAPE_TEMPLATES to the slurm/ folder)")
    return string.Template(path.read_text())


def _optional_lines(opts: Submit, gpus: bool = True) -> str:
    lines = []
    if gpus and opts.gpus_per_task:
        # GPUs for the workers only: rank 0 coordinates and never touches a GPU. Every rank of
        # the task sees them all; a worker takes cuda:<node-local rank % GPUs on the node>.
        workers = max(1, opts.ranks_per_task - 1)
        lines.append(f"#SBATCH --gpus={opts.gpus_per_task * workers}")
    for flag, value in (("partition", opts.partition), ("time", opts.time), ("account", opts.account)):
        if value:
            lines.append(f"#SBATCH {shlex.quote(f'--{flag}={value}')}")
    lines.extend(f"#SBATCH {shlex.quote(arg)}" for arg in opts.sbatch_args)
    return "\n".join(lines)


def launch_command(opts: Submit, as_root: bool) -> str:
    if opts.launcher == "srun":
        # Open MPI speaks PMIx to srun; Debian's Open MPI has no PMI2 support
        return "srun --mpi=pmix"
    root = " --allow-run-as-root" if as_root else ""
    return f"mpirun{root} -n ${{SLURM_NTASKS}}"


def render_scripts(surface_path: Path, opts: Submit, array_job_id: str = "ARRAY_JOB_ID",
                   python: str | None = None, workdir: Path | None = None,
                   as_root: bool | None = None) -> tuple[str, str]:
    """The array and merge sbatch scripts for a surface (pure: tested against a recorded file).

    Every value is quoted with shlex.quote, on the command lines and on the #SBATCH lines alike
    (sbatch reads quotes as the shell does), and none is written into a comment; a value that a
    script cannot carry is refused first (check_script_values)."""
    python = python or sys.executable
    workdir = workdir or Path.cwd()
    as_root = (os.geteuid() == 0) if as_root is None else as_root
    check_script_values(surface_path, python, workdir)
    opts.check()
    shards = shard_dir(surface_path)
    common = dict(job_name=shlex.quote(f"ll-{surface_path.stem}"), shards=_word(shards),
                  surface=_word(surface_path), python=shlex.quote(python), workdir=_word(workdir))
    array = _template("array.sbatch.in").substitute(
        common, last_task=int(opts.tasks) - 1, ranks=int(opts.ranks_per_task), optional=_optional_lines(opts),
        launch=launch_command(opts, as_root))
    merge_opts = Submit(1, partition=opts.partition, time="", account=opts.account)
    dependency = shlex.quote(f"--dependency=afterany:{array_job_id}")
    merge = _template("merge.sbatch.in").substitute(
        common, optional="\n".join(filter(None, [f"#SBATCH {dependency}",
                                                  _optional_lines(merge_opts, gpus=False)])))
    return array, merge


def _word(path: Path) -> str:
    """A path as one shell word (and one sbatch word): quoted, and never taken for an option."""
    text = str(path)
    return shlex.quote("./" + text if text.startswith("-") else text)


def check_script_values(surface_path: Path, python: str, workdir: Path) -> None:
    """The values of the scripts that are not options (those are checked by Submit.check): the
    surface path (also on the #SBATCH --output line, as a log file name that SLURM expands),
    the working directory and the Python executable. One line naming the first bad one."""
    specs.check_script_value("output.surface", str(surface_path), sbatch_line=True)
    if "%" in str(surface_path):
        raise UserError(f"output.surface: {str(surface_path)!r} holds '%', which SLURM expands in the log file "
                        "names beside it (%j, %a); expected a path without '%'")
    specs.check_script_value("the working directory", str(workdir))
    specs.check_script_value("the Python executable", str(python))


def _sbatch(script: Path, env: dict | None = None) -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise UserError("submit: sbatch not found on PATH (load your cluster's slurm module, or use --dry-run)")
    proc = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise UserError(f"submit: sbatch refused {script.name}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().split(";")[0]


def submit(spec, opts: Submit) -> dict:
    """Create the surface and its directions, share out the pending points, sbatch the
    array and the merge job. Returns what was submitted (also in <shards>/submission.json)."""
    opts.check()
    k = spec.evaluation.ranks_per_model
    if k > 1 and (opts.ranks_per_task - 1) % k:
        raise UserError(f"{option('ranks_per_task')}: {opts.ranks_per_task} ranks give {opts.ranks_per_task - 1} "
                        f"worker(s), which do not form groups of evaluation.ranks_per_model = {k}; expected 1 + a "
                        f"multiple of {k}, e.g. {1 + k}")
    path = Path(spec.output.surface)
    check_script_values(path, sys.executable, Path.cwd())  # before anything is created
    shards = shard_dir(path)
    previous = read_submission(path)
    if previous and not opts.dry_run:
        jobs = [j for j in (previous.get("array_job"), previous.get("merge_job")) if j]
        try:
            busy = queued(jobs)
        except SqueueFailed as exc:
            raise UserError(f"submit: cannot tell whether jobs {', '.join(jobs)} of the previous submission for "
                            f"{path} still run ({exc}); try again when squeue answers") from None
        if busy:
            raise UserError(f"submit: jobs {', '.join(busy)} of the previous submission for {path} are still "
                            "queued or running; wait for them or scancel them first")
    if opts.dry_run and not path.exists():  # a dry run writes nothing, not even the surface file
        auto = [f"grid.{k}" for k in ("x", "y") if is_auto(getattr(spec.grid, k))]
        if auto:
            raise UserError(f"{auto[0]}: \"auto\" chooses its points when the surface file is made, which a dry "
                            f"run does not do; give lo:hi:n for a dry run, or make the file first "
                            f"(submit without --dry-run)")
        return _dry_run(path, opts, coarse_to_fine(GridAxes.from_spec(spec.grid).shape), spec)
    for split in spec.data.splits:  # data that cannot load fails here, before the file is bound to the spec
        datasets.load_source(spec.data, split)  # tensors, or a Stream (not read here)
    # the file holds accuracy only where the loss defines one; a resubmit with a loss that differs is refused
    notes = {ff.A_VALUES: json.dumps(list(run_values(spec)))}
    prep = prepare(spec, notes)  # creates the file and its directions once, before anything runs
    if shard_files(path) and not opts.dry_run:
        new = merge(path)  # earlier shards' points count before sharing out again
        if new:
            prep = prepare(spec, notes)
    pending = prep.pending
    if len(pending) == 0:
        log.info("%s is complete: nothing to submit", path)
        return {"array_job": None, "merge_job": None, "tasks": 0, "points": 0}
    tasks = min(opts.tasks, len(pending))
    if tasks < opts.tasks:
        log.info("only %d points are pending: %d tasks instead of %d", len(pending), tasks, opts.tasks)
        opts.tasks = tasks
    if opts.dry_run:
        return _dry_run(path, opts, pending, spec)
    shares = assign_tasks(pending, tasks, resolve_unit_size(spec.evaluation.unit_size))
    array_script, _ = render_scripts(path, opts)
    shards.mkdir(exist_ok=True)
    for old in shard_files(path):  # merged above; the new assignment replaces them
        old.unlink()
    task_spec_json = with_grid(spec, prep.grid).to_json()  # "auto" axes as the file has them
    for k, share in enumerate(shares):
        surface.create_shard(shards / f"task_{k}.h5", path, share, k, tasks, task_spec_json,
                             userimport.search_dirs())
    (shards / "array.sbatch").write_text(array_script)
    array_job = _sbatch(shards / "array.sbatch")
    _, merge_script = render_scripts(path, opts, array_job_id=array_job)
    (shards / "merge.sbatch").write_text(merge_script)
    merge_job = _sbatch(shards / "merge.sbatch")
    record = {"array_job": array_job, "merge_job": merge_job, "tasks": tasks, "splits": list(spec.data.splits),
              "ranks_per_task": opts.ranks_per_task, "ranks_per_model": spec.evaluation.ranks_per_model,
              "gpus_per_task": opts.gpus_per_task,
              "points": int(len(pending)), "points_per_task": [int(len(s)) for s in shares],
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (shards / SUBMISSION).write_text(json.dumps(record, indent=2) + "\n")
    log.info("submitted array job %s (%d tasks x %d ranks, %d points, splits %s) and merge job %s",
             array_job, tasks, opts.ranks_per_task, len(pending), ",".join(spec.data.splits), merge_job)
    log.info("watch: losslandscape status %s   (squeue -j %s,%s)", path, array_job, merge_job)
    return record


def run_values(spec) -> tuple[str, ...]:
    """The values the array tasks' points will have: ("loss", "acc") for cross_entropy, else as
    the loss gives them on the first batch at the centre (evaluate.PointEvaluator.probe), with
    the model and data loaded here on the CPU: the shards are made before any task runs."""
    if spec.evaluation.loss == "cross_entropy":
        return ff.VALUES
    import torch

    from losslandscape.run.loading import load_evaluator

    return tuple(load_evaluator(spec, torch.device("cpu")).values)


def _dry_run(path: Path, opts: Submit, pending: np.ndarray, spec) -> dict:
    tasks = min(opts.tasks, len(pending))
    opts.tasks = max(tasks, 1)
    shares = assign_tasks(pending, opts.tasks, resolve_unit_size(spec.evaluation.unit_size))
    array_script, merge_script = render_scripts(path, opts)
    shards = shard_dir(path)
    print(f"# dry run: {len(pending)} pending points of {path} over {tasks} array tasks "
          f"({', '.join(str(len(s)) for s in shares)} points); nothing written or submitted")
    print(f"# --- {shards / 'array.sbatch'} ---\n{array_script}")
    print(f"# --- {shards / 'merge.sbatch'} ---\n{merge_script}")
    return {"array_job": None, "merge_job": None, "tasks": tasks, "points": int(len(pending)), "dry_run": True}


def task_spec(shards: Path, task: int | None = None) -> tuple[object, Path]:
    """(the spec `submit` was given, the shard file) of one array task."""
    if task is None:
        task = SlurmEnvironment.from_environ().array_task_id
        if task is None:
            raise UserError("task: SLURM_ARRAY_TASK_ID is not set; give --task K outside an array job")
    shard = Path(shards) / f"task_{task}.h5"
    if not shard.is_file():
        raise UserError(f"task: no shard file {shard} (was `losslandscape submit` run for this folder?)")
    table, folders = read_shard_spec(shard)
    for folder in folders:  # the model and data factories findable where `submit` found them
        userimport.remember(folder)
    try:
        spec = specs.from_dict(table)
    except UserError as exc:  # the shard's spec: name the file, cut what it quotes
        raise UserError(f"task: {shard}: attribute spec: {ff.shown(exc, 2 * ff.MAX_SHOWN)}") from None
    return spec, shard  # what `submit` was given, overrides included


def run_task(shards: Path, task: int | None = None, log_rank=None) -> int:
    """One array task: compute its shard (under MPI when launched so: every rank then reads the
    shard as one agreed step, so a bad shard is one line, not a hang). `log_rank`: as run_job's."""
    return run_job(lambda: SurfaceWork(*task_spec(shards, task)), log_rank)


def merge(surface_path: Path, force: bool = False) -> int:
    """Copy finished shard points into the surface file. Returns the number of points
    copied; a second run copies nothing and leaves the file untouched.

    Refused while the submission's array tasks are still queued or running (they are still
    writing their shards; the merge job runs after them), unless `force`."""
    surface_path = Path(surface_path)
    if not surface_path.is_file():
        return _merge(surface_path, force)  # refused there, one line
    with writelock.holding(surface_path, "merging shards", "merge"):
        return _merge(surface_path, force)


def _merge(surface_path: Path, force: bool) -> int:
    shards = shard_files(surface_path)
    sub = read_submission(surface_path)
    if not force and sub.get("array_job"):
        try:
            busy = queued([sub["array_job"]])
        except SqueueFailed as exc:  # not known to have ended: its tasks may still write their shards
            raise UserError(f"merge: cannot tell whether array job {sub['array_job']} of {surface_path} still "
                            f"runs ({exc}); try again when squeue answers (--force merges what is there now)") from None
        if busy:
            raise UserError(f"merge: array job {busy[0]} of {surface_path} is still queued or running; its merge "
                            f"job {sub.get('merge_job')} merges when it ends (--force merges what is there now)")
    copied = surface.merge_shards(surface_path, shards)
    log.info("merge: %d new points from %d shard file(s) into %s", copied, len(shards), surface_path)
    return copied


