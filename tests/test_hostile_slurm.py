"""Hostile values for `submit`'s batch scripts, and hostile files beside a submission (issue 29).

The scripts are made by the real `submit` (in this process, with `--dry-run` or with a stand-in
`sbatch` on PATH), checked with `bash -n`, read by the real `sbatch` (its -vvv log lists what
it takes from the #SBATCH lines; a configuration naming no reachable controller, so it is
stopped once it has read them) and run by bash with stand-in `mpirun`, `srun` and Python
executables that record the arguments they get. A value must arrive as one argument, exactly,
and nothing it spells may run. Values a script cannot carry are refused with one line, before
anything is written. `merge` stops when squeue fails; a `submission.json` of the wrong types
and files in `.shards` that are not shards are one line or a warning, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from losslandscape.frontends import cli

from helpers import REPO, tiny_job

# everything the shell would act on outside quotes, in one path component (no "/", "%" or "\")
H = "a b $(touch PWNED) `touch PWNED`;touch PWNED;'q' \"d\" #c *{x,y}! ~ &|<>"


@pytest.fixture(scope="module")
def sbatch() -> str:
    """The real sbatch, installed by scripts/ensure-slurm.sh where it is missing (as the SLURM
    cluster's tests do): on a fresh machine this test runs, whichever test asked first."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "ensure-slurm.sh")], capture_output=True, text=True)
    found = shutil.which("sbatch") or shutil.which("sbatch", path="/usr/bin:/usr/sbin")
    if done.returncode != 0 or not found:
        pytest.fail(f"sbatch is needed: {(done.stderr.strip().splitlines() or ['not found'])[-1]}", pytrace=False)
    return found

STUB = """#!/bin/bash
# a stand-in: records the folder it ran in and its arguments, NUL-separated, one file a call
n=$(ls "$STUB_LOG" | wc -l)
printf '%s\\0' "$PWD" "$@" > "$STUB_LOG/$(printf %03d "$n").NAME"
case NAME in
  sbatch) echo $((1000 + n)) ;;
  squeue) [ -n "${SQUEUE_SAYS:-}" ] && echo "$SQUEUE_SAYS" >&2; exit "${SQUEUE_EXIT:-0}" ;;
esac
"""


def stub(path: Path, name: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB.replace("NAME", name or path.name))
    path.chmod(0o755)
    return path


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    """tmp_path/bin first on PATH with stand-ins for sbatch, squeue, mpirun and srun; the
    Python executable the scripts name is a stand-in in a hostile folder. Returns the log folder."""
    bin_ = tmp_path / "bin"
    for name in ("sbatch", "squeue", "mpirun", "srun"):
        stub(bin_ / name)
    log = tmp_path / "calls"
    log.mkdir()
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setattr(sys, "executable", str(stub(tmp_path / f"py {H}" / "python", "python")))
    return log


def calls(log: Path) -> list[tuple[str, str, list[str]]]:
    """(program, folder it ran in, arguments) of each recorded call, in order."""
    out = []
    for f in sorted(log.iterdir()):
        cwd, *args = f.read_bytes().decode().split("\0")[:-1]
        out.append((f.suffix[1:], cwd, args))
    return out


def dry_run_scripts(capsys, *args: str) -> dict[str, str]:
    """{"array": ..., "merge": ...}: the scripts `submit --dry-run` prints."""
    assert cli.main(["submit", "--tasks", "2", "--dry-run", "--grid.x=-1:1:5", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    parts = re.split(r"^# --- .*/(array|merge)\.sbatch ---\n", out, flags=re.M)
    return {parts[1]: parts[2], parts[3]: parts[4]}


def check_script(script: str, path: Path, values: list[str]) -> None:
    """`bash -n` accepts it, and no comment line holds any of `values` (nor a newline-split part)."""
    path.write_text(script)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    for line in script.splitlines():
        if line.startswith("#") and not line.startswith(("#!", "#SBATCH ")):
            assert "PWNED" not in line and not any(v in line for v in values), line
    head = script.split("\nset -u\n", 1)[0].splitlines()
    first = next(i for i, line in enumerate(head) if line.startswith("#SBATCH"))
    # one block up to the first command: sbatch reads every #SBATCH line
    assert all(line.startswith("#SBATCH ") or not line for line in head[first:]), head
    assert not any(line.startswith("#SBATCH") for line in script.split("\nset -u\n", 1)[1].splitlines())


def run_script(path: Path, cwd: Path) -> None:
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_JOB_ID": "77",
           "SLURM_NTASKS": "2"}
    done = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, cwd=cwd, timeout=30)
    assert done.returncode == 0, done.stderr


def sbatch_reads(sbatch: str, script: Path, tmp_path: Path) -> list[str]:
    """The arguments the real sbatch takes from the script's #SBATCH lines."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=hostile\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n")
    env = {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(conf), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sbatch, "-vvv", "--test-only", str(script)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    found, log = [], []
    try:
        for line in proc.stderr:
            log.append(line)
            m = re.fullmatch(r'sbatch: debug2: Found in script, argument "(.*)"', line.rstrip("\n"))
            if m:
                found.append(m.group(1))
            if "end of defined options" in line:
                break
    finally:
        proc.kill()
        proc.wait()
    assert found, "".join(log)
    return found


def hostile_submit_args(launcher: str) -> tuple[list[str], dict[str, str]]:
    values = {"surface": f"out {H}/s {H}.h5", "partition": f"gpu {H}", "account": f"acct {H}",
              "time": "1:00:00", "comment": f"--comment={H}"}
    args = [f"--output.surface={values['surface']}", "--partition", values["partition"], "--account",
            values["account"], "--time", values["time"], f"--sbatch-arg={values['comment']}", "--sbatch-arg=--qos=low",
            "--launcher", launcher]
    return args, values


@pytest.mark.parametrize("launcher", ["mpirun", "srun"], ids=["launcher-mpi", "launcher-srun"])
def test_hostile_values_reach_each_command_as_one_argument(launcher, tmp_path, monkeypatch, capsys, stubs):
    work = tmp_path / f"work {H}"
    work.mkdir()
    monkeypatch.chdir(work)
    args, v = hostile_submit_args(launcher)
    scripts = dry_run_scripts(capsys, *args)
    values = [v["surface"], v["partition"], v["account"], H, str(work), sys.executable]
    for name, script in scripts.items():
        check_script(script, tmp_path / f"{name}.sh", values)
        run_script(tmp_path / f"{name}.sh", tmp_path)
    assert not list(tmp_path.rglob("PWNED")), "a value ran as a command"
    (task, task_cwd, task_args), (merge, merge_cwd, merge_args) = calls(stubs)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    launch = ["--mpi=pmix"] if launcher == "srun" else [*root, "-n", "2"]
    assert (task, task_cwd) == (launcher, str(work))
    assert task_args == [*launch, sys.executable, "-m", "losslandscape", "task", v["surface"] + ".shards"]
    assert (merge, merge_cwd) == ("python", str(work))
    assert merge_args == ["-m", "losslandscape", "merge", v["surface"], "--force"]


@pytest.mark.slow  # installs slurm-client where it is missing
def test_sbatch_reads_each_hostile_value_as_one_option(sbatch, tmp_path, monkeypatch, capsys, stubs):
    monkeypatch.chdir(tmp_path)
    args, v = hostile_submit_args("mpirun")
    scripts = dry_run_scripts(capsys, *args)
    stem = Path(v["surface"]).stem
    (tmp_path / "array.sh").write_text(scripts["array"])
    (tmp_path / "merge.sh").write_text(scripts["merge"])
    assert sbatch_reads(sbatch, tmp_path / "array.sh", tmp_path) == [
        f"--job-name=ll-{stem}", "--array=0-1", "--nodes=1", "--ntasks=2",
        f"--output={v['surface']}.shards/task_%a.log", "--open-mode=append", "--requeue",
        f"--partition={v['partition']}", "--time=1:00:00", f"--account={v['account']}", v["comment"], "--qos=low"]
    assert sbatch_reads(sbatch, tmp_path / "merge.sh", tmp_path) == [
        f"--job-name=ll-{stem}-merge", "--ntasks=1", f"--output={v['surface']}.shards/merge.log",
        "--open-mode=append", "--dependency=afterany:ARRAY_JOB_ID", f"--partition={v['partition']}",
        f"--account={v['account']}"]


def submit_tiny(tmp_path: Path, surface: str, tasks: int = 1) -> Path:
    """A real `submit` of the tiny linear model (stand-in sbatch): the surface, its shards, the
    scripts and submission.json. Returns the surface path."""
    spec = tiny_job(tmp_path / "job", tmp_path / "unused.h5", "-1:1:3")
    assert cli.main(["submit", str(spec), "--tasks", str(tasks), "--ranks-per-task", "2",
                     f"--output.surface={surface}"]) == 0
    return Path(surface)


def test_submit_writes_and_sbatches_scripts_that_run_the_hostile_path_exactly(tmp_path, monkeypatch, capsys,
                                                                               stubs):
    monkeypatch.chdir(tmp_path)
    surface = submit_tiny(tmp_path, f"out {H}/s {H}.h5")
    shards = Path(f"{surface}.shards")
    (sb1, _, a1), (sb2, _, a2) = calls(stubs)
    assert (sb1, a1, sb2, a2) == ("sbatch", ["--parsable", str(shards / "array.sbatch")],
                                  "sbatch", ["--parsable", str(shards / "merge.sbatch")])
    assert json.loads((shards / "submission.json").read_text())["array_job"] == "1000"
    for name in ("array", "merge"):
        check_script((shards / f"{name}.sbatch").read_text(), tmp_path / f"{name}.sh", [str(surface), H])
        run_script(shards / f"{name}.sbatch", tmp_path)
    assert "#SBATCH --dependency=afterany:1000" in (shards / "merge.sbatch").read_text()
    assert not list(tmp_path.rglob("PWNED"))
    (_, cwd, task), (_, _, merge) = calls(stubs)[2:]
    assert cwd == str(tmp_path) and task[-1] == str(shards) and merge[-2] == str(surface)


def refused(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("losslandscape: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


CONTROL = [
    ("--output.surface", "--output.surface=out/x\ntouch PWNED\n#.h5", "output.surface"),
    ("--partition", ["--partition", "gpu\ntouch PWNED"], "--partition"),
    ("--account", ["--account", "a\rb"], "--account"),
    ("--time", ["--time", "1:00\t"], "--time"),
    ("--sbatch-arg", ["--sbatch-arg=--qos=low\x7f"], "--sbatch-arg"),
    ("--sbatch-arg C1", ["--sbatch-arg=--qos=\x85low"], "--sbatch-arg"),
    ("backslash", ["--partition", "gpu\\ntouch"], "--partition"),
    ("percent", "--output.surface=out/run%j.h5", "output.surface"),
    ("hetjob", ["--account", "x hetjob"], "--account"),
    ("not an option", ["--sbatch-arg=qos=low"], "--sbatch-arg"),
]


@pytest.mark.parametrize("case", CONTROL, ids=[c[0] for c in CONTROL])
def test_a_value_no_script_can_carry_is_one_line_and_nothing_is_written(case, tmp_path, monkeypatch, capsys,
                                                                        stubs):
    _, given, field = case
    monkeypatch.chdir(tmp_path)
    spec = tiny_job(tmp_path / "job", tmp_path / "s.h5", "-1:1:3")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = refused(capsys, ["submit", str(spec), "--tasks", "2", *([given] if isinstance(given, str) else given)])
    assert line.startswith(f"losslandscape: error: {field}: "), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and calls(stubs) == []


@pytest.mark.parametrize("where", ["working directory", "Python executable"])
def test_a_control_character_in_the_working_directory_or_python_path_is_refused(where, tmp_path, monkeypatch,
                                                                               capsys, stubs):
    spec = tiny_job(tmp_path / "job", tmp_path / "s.h5", "-1:1:3")
    work = tmp_path / ("w\nx" if where == "working directory" else "w")
    work.mkdir()
    monkeypatch.chdir(work)
    if where == "Python executable":
        monkeypatch.setattr(sys, "executable", str(tmp_path / "py\ntouch PWNED" / "python"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for dry in ([], ["--dry-run"]):
        line = refused(capsys, ["submit", str(spec), "--tasks", "2", *dry])
        assert line.startswith(f"losslandscape: error: the {where}: "), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and calls(stubs) == []


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_merge_stops_when_squeue_fails_and_force_merges(tmp_path, monkeypatch, capsys, stubs):
    monkeypatch.chdir(tmp_path)
    surface = submit_tiny(tmp_path, "s.h5")
    assert cli.main(["task", "s.h5.shards", "--task", "0"]) == 0
    before = sha(surface)
    monkeypatch.setenv("SQUEUE_EXIT", "1")
    monkeypatch.setenv("SQUEUE_SAYS", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")
    capsys.readouterr()
    line = refused(capsys, ["merge", "s.h5"])
    assert "cannot tell whether array job 1000 of s.h5 still runs (squeue failed with exit 1: slurm_load_jobs " \
           "error: Unable to contact slurm controller (connect failure))" in line and "--force" in line, line
    assert sha(surface) == before
    line = refused(capsys, ["submit", str(tmp_path / "job" / "job.toml"), "--tasks", "1", "--output.surface=s.h5"])
    assert "submit: cannot tell whether jobs 1000, 1001 of the previous submission" in line, line
    assert cli.main(["status", "s.h5"]) == 0
    assert "still queued: unknown (squeue failed)" in capsys.readouterr().out
    assert cli.main(["merge", "s.h5", "--force"]) == 0
    assert "s.h5: complete" in capsys.readouterr().out and sha(surface) != before
    # squeue that no longer knows the job (long finished) is no failure
    monkeypatch.setenv("SQUEUE_SAYS", "slurm_load_jobs error: Invalid job id specified")
    assert cli.main(["merge", "s.h5"]) == 0


BAD_RECORDS = [
    ("a list", b"[1, 2]", "a JSON list"),
    ("job id a number", b'{"array_job": 5, "merge_job": "6"}', "array_job: '5' is not valid; expected a SLURM job id"),
    ("job id not digits", b'{"array_job": "12; touch PWNED"}', "array_job: '12; touch PWNED' is not valid"),
    ("merge job a list", b'{"array_job": "12", "merge_job": ["x"]}', "merge_job: \"['x']\" is not valid"),
    ("ranks a string", b'{"array_job": "12", "merge_job": "13", "ranks_per_task": "two"}', "ranks_per_task: 'two'"),
    ("tasks a bool", b'{"tasks": true}', "tasks: 'True' is not valid; expected a whole number"),
    ("splits of numbers", b'{"splits": [1]}', "splits: '[1]' is not valid; expected a list of strings"),
    ("not JSON", b'{"array_job": "1', "not the JSON that `submit` writes"),
    ("not UTF-8", b"\xff\xfe\x00\xd8garbage", "not the JSON that `submit` writes"),
]


def test_a_submission_record_of_the_wrong_types_is_one_line(tmp_path, monkeypatch, capsys, stubs):
    monkeypatch.chdir(tmp_path)
    surface = submit_tiny(tmp_path, "s.h5")
    sub = Path("s.h5.shards/submission.json")
    before = sha(surface)
    for case, record, said in BAD_RECORDS:
        sub.write_bytes(record)
        for argv in (["status", "s.h5"], ["status", "s.h5", "--json"], ["merge", "s.h5"],
                     ["merge", "s.h5", "--force"],
                     ["submit", str(tmp_path / "job" / "job.toml"), "--tasks", "1", "--output.surface=s.h5"]):
            line = refused(capsys, argv)
            assert line.startswith(f"losslandscape: error: {sub}: ") and said in line, (case, argv, line)
        assert sha(surface) == before and sub.read_bytes() == record, case
    assert not list(tmp_path.rglob("PWNED"))


def test_files_in_shards_that_are_not_shards_are_ignored_with_a_warning(tmp_path, monkeypatch, capsys, stubs):
    monkeypatch.chdir(tmp_path)
    submit_tiny(tmp_path, "s.h5")
    shards = Path("s.h5.shards")
    assert cli.main(["task", str(shards), "--task", "0"]) == 0
    strays = ["task_abc.h5", "task_0.bak.h5", "task_01.h5", "task_-1.h5", "task_.h5", "task_1\nx.h5"]
    for name in strays:
        shutil.copy(shards / "task_0.h5", shards / name)
    (shards / "task_7.h5").mkdir()
    strays.append("task_7.h5")
    capsys.readouterr()
    assert cli.main(["status", "s.h5", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [s["file"] for s in json.loads(out)["shards"]] == ["task_0.h5"]
    for name in strays:
        shown = str(shards / name) if name.isprintable() else repr(str(shards / name))  # one line
        assert f"{shown}: not a shard file (a shard is a file task_<k>.h5, k = 0, 1, ...): ignored" in err
    assert "Traceback" not in err
    assert cli.main(["merge", "s.h5"]) == 0
    out, err = capsys.readouterr()
    assert "s.h5: complete" in out and "Traceback" not in err
    assert sorted(p.name for p in shards.glob("task_*.h5")) == sorted(["task_0.h5", *strays])


def test_a_dry_run_of_an_auto_axis_says_why_it_cannot(tmp_path, monkeypatch, capsys):
    """"auto" chooses its points when the file is made, which a dry run does not do: one line that says
    so (not that "auto" is not a valid axis), and nothing is written."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", "--tasks", "2", "--dry-run", "--grid.x=auto", "--output.surface=s.h5"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('losslandscape: error: grid.x: "auto" chooses its points'), lines
    assert list(tmp_path.iterdir()) == []
