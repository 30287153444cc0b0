"""README claims about real `mpirun` jobs and SLURM merges, each checked by what it promises.

The model is a linear classifier of the 8x8 digits (`probe:build`, written beside the job
spec) that counts its forward passes per rank in files and, as the test's plan.json says,
sleeps on a rank or stops inside a chosen pass: so a test can signal a job at a known
moment and know which points were evaluated. With one split and fewer samples than a batch,
one forward pass is one grid point (the model has no BatchNorm to fold, so the fold check
runs no pass).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape import spec as specs

from helpers import ctrl_c_as_at_a_terminal, mpirun

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out

PROBE = '''
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.passes = 0

    def forward(self, x):
        out = self.body(x)
        if isinstance(x, torch.Tensor):  # a real pass, not torch.fx tracing the model
            plan = json.loads((HERE / "plan.json").read_text()) if (HERE / "plan.json").exists() else {}
            rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
            self.passes += 1
            time.sleep(plan.get("sleep", {}).get(rank, 0.0))
            if plan.get("pause") == [rank, self.passes]:
                (HERE / f"paused.{rank}").write_text(str(os.getpid()))
                time.sleep(600)
            with open(HERE / f"passes.{rank}", "a") as f:
                f.write("1\\n")
            clock(rank)
        return out


def clock(rank):
    """This rank's wall clock and CPU time, a line a forward pass (and one when it is built)."""
    with open(HERE / f"clock.{rank}", "a") as f:
        f.write(f"{time.monotonic()} {time.process_time()}\\n")


def build():
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")  # called after the evaluator set its threads
    (HERE / f"threads.{rank}").write_text(json.dumps({"threads": torch.get_num_threads(),
                                                      "cores": len(os.sched_getaffinity(0))}))
    plan = json.loads((HERE / "plan.json").read_text()) if (HERE / "plan.json").exists() else {}
    time.sleep(plan.get("build_sleep", {}).get(rank, 0.0))
    clock(rank)
    return Probe()
'''
SAMPLES = 48
PROBED = 1  # passes each worker makes before its first point: the first batch at the centre (evaluate.probe)


def write_probe_job(d: Path, grid: tuple[str, str] = ("-1:1:3", "-1:1:3"), unit: int = 2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "probe.py").write_text(PROBE)
    (d / "job.toml").write_text(f'''
[model]
name = "probe:build"
[data]
name = "digits"
splits = ["train"]
max_samples = {SAMPLES}
[grid]
x = "{grid[0]}"
y = "{grid[1]}"
[evaluation]
device = "cpu"
unit_size = {unit}
[output]
surface = "{d / 's.h5'}"
''')
    return d / "job.toml"


def plan(d: Path, **what) -> None:
    (d / "plan.json").write_text(json.dumps(what))


def clean_env() -> dict:
    """This environment minus Open MPI's own variables (see test_mpi.launch), one thread a rank."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def surface_cmd(toml: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "losslandscape", "surface", str(toml), *extra]


def run(cmd: list[str], timeout: int = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env())


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
                            preexec_fn=ctrl_c_as_at_a_terminal)


def wait_for(what, proc: subprocess.Popen, timeout: float = 120.0):
    """Poll `what()` until it is truthy; fail with the job's output if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended (exit {proc.returncode}) before the test could act:\n{err[-3000:]}")
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in ranks:  # ours, by pid: a paused rank would otherwise outlive its mpirun
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    proc.kill()
    pytest.fail(f"timed out waiting:\n{proc.communicate()[1][-3000:]}")


def done_mask(path: Path) -> np.ndarray | None:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return f["train_done"][...].astype(bool)
    except (OSError, KeyError):
        return None


def read_values(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"loss": f["train_loss"][...], "acc": f["train_acc"][...], "done": f["train_done"][...].astype(bool),
                "x": f["xcoordinates"][...], "y": f["ycoordinates"][...],
                "dx": {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]},
                "dy": {k: torch.from_numpy(f["directions/y"][k][...]) for k in f["directions/y"]}}


def passes(d: Path) -> dict[str, int]:
    return {p.name.split(".")[1]: len(p.read_text().split()) for p in d.glob("passes.*")}


def plain_values(d: Path, surf: dict) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at every grid point from plain forward passes of the moved model."""
    sys.path.insert(0, str(d))
    try:
        import probe
    finally:
        sys.path.remove(str(d))
    sys.modules.pop("probe", None)
    model = probe.build().eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = datasets.load_split(specs.from_dict({"data": {"max_samples": SAMPLES}}).data, "train")
    loss = np.full((len(surf["y"]), len(surf["x"])), np.nan)
    acc = loss.copy()
    for j, b in enumerate(surf["y"]):
        for i, a in enumerate(surf["x"]):
            model.load_state_dict({k: v + a * surf["dx"][k] + b * surf["dy"][k] if k in surf["dx"] else v
                                   for k, v in base.items()})
            with torch.no_grad():
                out = model.body(x).double()
            loss[j, i] = F.cross_entropy(out, y).item()
            acc[j, i] = 100.0 * (out.argmax(1) == y).double().mean().item()
    return loss, acc


# --- 8. a SIGKILLed worker loses at most its current unit -----------------------------------

@pytest.mark.parametrize("others", ["finished", "busy"])
def test_a_sigkilled_worker_loses_at_most_its_unit_and_a_rerun_completes(tmp_path, others):
    """README (MPI, Failure behaviour): "A killed worker loses at most its current unit; run the
    same command again to finish." Strong version of
    tests/test_mpi.py::test_killed_worker_loses_at_most_its_unit_and_resume_completes, which does
    not check the bound. Rank 2 does one unit of 2 points, evaluates one point of its next unit
    and is SIGKILLed inside the second, either once rank 1 (slowed down) has finished every
    other unit ("finished": the points not done are then exactly the killed unit's) or while
    rank 1 is in the middle of its own ("busy": mpirun then ends rank 1 too). Either way every
    evaluated point but the killed unit's is in the file, and a rerun computes only the points
    not done and completes the file with plain forward passes' values."""
    unit = 2
    toml = write_probe_job(tmp_path, unit=unit)
    surf = tmp_path / "s.h5"
    # each worker's first pass is the start-up check of the first batch at the centre (PROBED)
    plan(tmp_path, sleep={"1": 0.5}, pause=["2", PROBED + unit + 2])
    proc = start(mpirun(3) + surface_cmd(toml))
    pid = int(wait_for(lambda: (tmp_path / "paused.2").exists() and (tmp_path / "paused.2").read_text(), proc))
    if others == "finished":  # rank 1 takes every other unit; kill rank 2 once they are in the file
        wait_for(lambda: (m := done_mask(surf)) is not None and m.sum() >= 9 - unit, proc, timeout=60)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    counted = passes(tmp_path)
    assert counted.get("2") == PROBED + unit + 1, counted  # one unit written, one point of the next evaluated
    done = done_mask(surf)
    assert done is not None, "the file is not readable after the kill"
    missing = 9 - int(done.sum())
    if others == "finished":
        assert 1 <= missing <= unit, (missing, err[-2000:])
    else:
        assert missing > unit, (missing, counted)  # rank 1 was ended before it had done the rest
    evaluated = sum(counted.values()) - PROBED * len(counted)  # grid points, not the start-up checks
    assert evaluated - int(done.sum()) == 1, (counted, int(done.sum()))  # only the killed unit's finished point

    plan(tmp_path)  # no pauses, no sleeps
    again = run(mpirun(3) + surface_cmd(toml))
    assert again.returncode == 0, again.stderr
    assert f"{9 - missing} of 9 points done" in again.stderr, again.stderr  # resumed, not restarted
    # only the missing points were computed (after each run's start-up checks on 2 workers)
    assert sum(passes(tmp_path).values()) == evaluated + PROBED * len(counted) + missing + PROBED * 2
    got = read_values(surf)
    assert got["done"].all()
    loss, acc = plain_values(tmp_path, got)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got["acc"], acc, rtol=0, atol=1e-9)


# --- 2. a signal to mpirun itself -------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_mpirun_exits_1_and_the_file_resumes(tmp_path, signum):
    """README (MPI): "if you signal `mpirun` itself, Open MPI's `mpirun` forwards the signal and
    exits 1, but the file is just as resumable". Both workers are slowed down so that the
    signal arrives mid-run; a rerun computes only the missing points, and the surface equals
    plain forward passes of the moved model."""
    toml = write_probe_job(tmp_path)
    surf = tmp_path / "s.h5"
    plan(tmp_path, sleep={"1": 1.5, "2": 1.5})
    proc = start(mpirun(3) + surface_cmd(toml))
    wait_for(lambda: (m := done_mask(surf)) is not None and m.sum() >= 2, proc)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]
    done = done_mask(surf)
    assert done is not None, "the file is not readable after the signal"
    assert 2 <= done.sum() < 9, done
    partial = read_values(surf)

    plan(tmp_path)
    again = run(surface_cmd(toml))  # in one process: the file does not remember how it was run
    assert again.returncode == 0, again.stderr
    assert f"{int(done.sum())} of 9 points done" in again.stderr, again.stderr
    got = read_values(surf)
    assert got["done"].all()
    np.testing.assert_array_equal(got["loss"][done], partial["loss"][done])  # kept, not recomputed
    loss, acc = plain_values(tmp_path, got)
    np.testing.assert_allclose(got["loss"], loss, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got["acc"], acc, rtol=0, atol=1e-9)


# --- 5. threads per worker ------------------------------------------------------------------------

@pytest.mark.parametrize("ranks, omp", [(2, None), (3, None), (3, "1")])
def test_each_worker_gets_cores_over_workers_threads_or_omp_num_threads(tmp_path, ranks, omp):
    """README (MPI): "On CPUs each worker uses `OMP_NUM_THREADS` threads where it is set, else
    `cores / workers`", reported in each worker's "evaluating on ... with N CPU thread(s)" line.
    Unbound ranks (--bind-to none) see every core; the coordinator is no worker, so 2 ranks give
    1 worker all of them."""
    toml = write_probe_job(tmp_path, grid=("-1:1:3", ""))
    env = {k: v for k, v in clean_env().items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    proc = run(mpirun(ranks)[:1] + ["--bind-to", "none"] + mpirun(ranks)[1:] + surface_cmd(toml), env=env)
    assert proc.returncode == 0, proc.stderr
    workers = ranks - 1
    for rank in range(1, ranks):
        seen = json.loads((tmp_path / f"threads.{rank}").read_text())
        want = int(omp) if omp else max(1, seen["cores"] // workers)
        assert seen["threads"] == want, (rank, seen)
        whence = r" \(OMP_NUM_THREADS\)" if omp else ""  # the log says where the count came from
        assert re.search(rf"\[rank {rank}\] evaluating on cpu with {want} CPU thread\(s\){whence}, batch", proc.stderr), \
            proc.stderr


def test_ranks_waiting_for_another_to_load_its_model_sleep_rather_than_spin(tmp_path):
    """Every rank waits for the slowest to load its model (a step of `agree`). Open MPI's blocking
    collectives spin a core while they wait, which on shared cores takes CPU from the ranks
    still working; the driver waits sleeping instead. Rank 1 takes 4 s to build its model
    here: rank 2, ready long before, spends almost no CPU while it waits for it."""
    toml = write_probe_job(tmp_path, grid=("-1:1:3", ""))
    plan(tmp_path, build_sleep={"1": 4.0})
    proc = run(mpirun(3) + surface_cmd(toml))
    assert proc.returncode == 0, proc.stderr
    stamps = [tuple(map(float, line.split())) for line in (tmp_path / "clock.2").read_text().split("\n") if line]
    wall, cpu = max(((b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])), key=lambda g: g[0])
    assert wall > 2.5, stamps  # rank 2 waited for rank 1 between two of its stamps
    assert cpu < 0.25 * wall, (wall, cpu)  # spinning would take about a core all along


def test_omp_num_threads_is_read_as_openmp_reads_it(monkeypatch):
    """evaluation.threads = 0 takes OMP_NUM_THREADS's first level; a value that is not a positive
    integer is ignored (the share of the cores), as OpenMP ignores it; threads > 0 wins."""
    from losslandscape.numerics import devices

    share = max(1, devices.cpu_cores() // 1)
    for value, want in (("3", 3), ("4,2", 4), (" 2 ", 2), ("0", share), ("-1", share), ("many", share), ("", share)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert devices.set_threads(0) == want == torch.get_num_threads(), value
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert devices.set_threads(1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert devices.set_threads(0, processes_on_node=2) == max(1, devices.cpu_cores() // 2)


# --- 3. merge --force -------------------------------------------------------------------------------

def test_merge_refuses_while_the_array_is_queued_and_force_merges_what_is_there(slurm, tmp_path):
    """README (SLURM): `merge` "refuses to run while the submission's array tasks are still queued
    or running (the merge job runs after them; `merge --force` merges what is there now)". On a
    real one-node cluster the array is submitted held (queued, never started); task 0 is run
    here as its array task would run it (the session's cluster; both jobs are cancelled after).
    `merge` is refused and leaves the file as it was;
    `merge --force` copies task 0's points, whose values equal plain forward passes, and exits 4
    naming the points task 1 has not computed."""
    toml = write_probe_job(tmp_path / "job", unit=1)
    surf = tmp_path / "job" / "s.h5"
    ll = [sys.executable, "-m", "losslandscape"]
    env = {**slurm.env, "OMP_NUM_THREADS": "1"}
    sub = subprocess.run([*ll, "submit", str(toml), "--tasks", "2", "--ranks-per-task", "2",
                          "--sbatch-arg=--hold"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert sub.returncode == 0, sub.stderr + slurm.logs()
    array = re.search(r"array job (\d+)", sub.stdout).group(1)
    shards = tmp_path / "job" / "s.h5.shards"
    task = subprocess.run([*ll, "task", str(shards), "--task", "0"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert task.returncode == 0, task.stderr
    with h5py.File(shards / "task_0.h5", "r") as f:
        assert f["train_done"][...].any()
    assert array in slurm.run(["squeue", "-h", "-o", "%F"])  # still queued

    before = hashlib.sha256(surf.read_bytes()).hexdigest()
    refused = subprocess.run([*ll, "merge", str(surf)], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert f"merge: array job {array} of {surf} is still queued or running" in refused.stderr
    assert "--force" in refused.stderr
    assert hashlib.sha256(surf.read_bytes()).hexdigest() == before

    forced = subprocess.run([*ll, "merge", str(surf), "--force"], capture_output=True, text=True, env=env,
                            timeout=60)
    # the held array (and the merge job after it) would stay queued on the session's cluster
    slurm.run(["scancel", array, *re.findall(r"merge job (\d+)", sub.stdout + sub.stderr)[:1]])
    with h5py.File(shards / "task_0.h5", "r") as f:
        task0 = np.sort(f["points"][...])
    got = read_values(surf)
    done = got["done"].ravel()
    np.testing.assert_array_equal(np.flatnonzero(done), task0)  # task 0's points, and only those
    assert 0 < done.sum() < 9, done
    assert forced.returncode == 4, forced.stderr
    assert f"missing points: train {9 - int(done.sum())}" in forced.stderr, forced.stderr
    loss, acc = plain_values(tmp_path / "job", got)
    np.testing.assert_allclose(got["loss"].ravel()[done], loss.ravel()[done], rtol=1e-6, atol=0)
    np.testing.assert_allclose(got["acc"].ravel()[done], acc.ravel()[done], rtol=0, atol=1e-9)
