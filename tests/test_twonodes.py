"""Two SLURM nodes on this machine: array tasks on both, and one MPI job over both writing one file.

The cluster (tests/slurmcluster.py `TwoNodeSlurm`) runs each slurmd in its own network and UTS
namespace (host names node1 and node2, addresses on a bridge), shares the file system, and is
started once for this module and stopped by pid at its end. A tiny model (a factory beside the
job spec) marks where it ran forward passes at moved weights (grid points, not the start-up probe):
its host name and the rank and node-local rank its launcher (srun or mpirun) gave it, the
independent account the job's own log lines are checked against.
When the cluster cannot be started, the tests fail with the reason: they are never skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape import spec as specs
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork

from slurmcluster import TwoNodeSlurm

pytestmark = pytest.mark.slow

VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")
GRID = ("-1:1:7", "-1:1:5")  # 35 points; (0, 0) is column 3 of row 2
SAMPLES = 200

# A module name of its own: an in-process import must not find another test's `tiny`.
MODEL = '''
import os
import socket
import time
from pathlib import Path

import torch
from torch import nn

MARKS = Path(__file__).resolve().parent / "marks"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.start = self.body[1].weight.detach().clone()  # not a parameter: directions leave it
        self.moved = 0

    def forward(self, x):
        if not torch.equal(self.body[1].weight, self.start):  # a grid point's pass, not the start-up probe
            self.moved += 1
            MARKS.mkdir(exist_ok=True)  # where it ran, by the launchers' account, and how many such passes
            keys = ("SLURM_PROCID", "SLURM_LOCALID", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
            (MARKS / f"{socket.gethostname()}.{os.getpid()}").write_text(
                " ".join(os.environ.get(k, "-") for k in keys) + f" {self.moved}")
        time.sleep(0.02)  # a point takes long enough that every worker gets units
        return self.body(x)


def build():
    torch.manual_seed(0)
    return Tiny()
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = TwoNodeSlurm(tmp_path_factory.mktemp("twonodes"))
    try:
        nodes.start()
    except RuntimeError as err:
        pytest.fail(f"could not start a two-node SLURM cluster: {err}", pytrace=False)
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """The job's folder, spec and the values of one process (checked at the centre against a plain
    forward pass of the model written here)."""
    d = tmp_path_factory.mktemp("twonodes-job")
    (d / "twonodes_tiny.py").write_text(MODEL)
    toml = d / "job.toml"
    toml.write_text(f'''
[model]
name = "twonodes_tiny:build"
[data]
name = "digits"
splits = ["train", "test"]
max_samples = {SAMPLES}
[grid]
x = "{GRID[0]}"
y = "{GRID[1]}"
[evaluation]
device = "cpu"
threads = 1
unit_size = 1
fold_batchnorm = false
[output]
surface = "{d / 'ref.h5'}"
''')
    sys.path.insert(0, str(d))
    try:
        import twonodes_tiny

        assert run_serial(SurfaceWork(specs.load(toml))) == 0
        model = twonodes_tiny.build().eval()
    finally:
        sys.path.remove(str(d))
    with h5py.File(d / "ref.h5", "r") as f:
        ref = {k: f[k][...] for k in VALUES}
    for split in ("train", "test"):
        x, y = datasets.load_split(specs.from_dict({"data": {"name": "digits", "max_samples": SAMPLES}}).data, split)
        with torch.no_grad():
            out = model(x)
        assert ref[f"{split}_loss"][2, 3] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)
        assert ref[f"{split}_acc"][2, 3] == pytest.approx(100 * (out.argmax(1) == y).float().mean().item())
    for mark in (d / "marks").iterdir():  # this process's
        mark.unlink()
    return {"dir": d, "toml": toml, "ref": ref}


def assert_equals_reference(path: Path, ref: dict) -> None:
    with h5py.File(path, "r") as f:
        assert f["train_done"][...].all() and f["test_done"][...].all()
        for k in VALUES:
            np.testing.assert_allclose(f[k][...], ref[k], rtol=1e-6, atol=0)


def finished(cluster: TwoNodeSlurm, jobs: list, timeout: float = 150) -> None:
    try:
        cluster.wait(jobs, timeout)
    except TimeoutError as err:
        pytest.fail(f"{err}\n{cluster.logs()}")


def test_each_node_has_its_own_host_name_and_network(cluster):
    out = cluster.run(["srun", "-N2", "-n2", "sh", "-c",
                       "echo $(hostname) $SLURMD_NODENAME $(readlink /proc/self/ns/net) $(readlink /proc/self/ns/uts)"])
    rows = sorted(line.split() for line in out.splitlines())
    assert [r[:2] for r in rows] == [["node1", "node1"], ["node2", "node2"]]
    ours = {os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/uts")}
    namespaces = [r[2] for r in rows] + [r[3] for r in rows]
    assert len(set(namespaces)) == 4 and not ours & set(namespaces)


def test_array_tasks_land_on_both_nodes_and_the_merge_equals_one_process(cluster, job):
    d = job["dir"]
    surf = d / "array.h5"
    proc = subprocess.run([sys.executable, "-m", "losslandscape", "submit", str(job["toml"]), "--tasks", "2",
                           "--ranks-per-task", "1", f"--output.surface={surf}"],
                          capture_output=True, text=True, env=cluster.env, cwd=d, timeout=120)
    assert proc.returncode == 0, proc.stderr + cluster.logs()
    m = re.search(r"array job (\d+) \((\d+) tasks\), merge job (\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    array, merge = m.group(1), m.group(3)
    finished(cluster, [array, merge])
    shards = d / "array.h5.shards"
    logs = {p.name: p.read_text() for p in shards.glob("*.log")}
    tasks = cluster.jobs(array)
    assert [t["JobState"] for t in tasks] == ["COMPLETED"] * 2, logs
    assert sorted(t["NodeList"] for t in tasks) == ["node1", "node2"], tasks
    for t in tasks:  # the task's shell saw the host name of the node SLURM says it ran on
        assert f" on {t['NodeList']} at " in logs[f"task_{t['ArrayTaskId']}.log"]
    assert cluster.state(merge) == "COMPLETED", logs
    for shard in ("task_0.h5", "task_1.h5"):  # each task computed points
        with h5py.File(shards / shard, "r") as f:
            assert f["test_done"][...].sum() > 0
    assert_equals_reference(surf, job["ref"])


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_one_mpi_job_over_both_nodes_writes_one_file(cluster, job, launcher):
    """One job over 2 nodes x 2 ranks (`srun --mpi=pmix`, or Open MPI's mpirun in the allocation):
    rank 0 coordinates on node1, worker 0 of 1 beside it, workers 0 and 1 of 2 on node2; each
    worker evaluates and writes its points through parallel HDF5 into the one file, equal to one
    process."""
    d = job["dir"]
    if launcher == "srun":
        plugins = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, env=cluster.env)
        assert "pmix" in plugins.stdout + plugins.stderr, f"this Slurm has no PMIx plugin: {plugins.stdout}"
        start = "srun --mpi=pmix"
    else:
        start = "mpirun --allow-run-as-root -n 4"  # 4 slots: the allocation's, 2 per node
    surf, out = d / f"{launcher}.h5", d / f"{launcher}.out"
    script = d / f"{launcher}.sh"
    script.write_text(f"#!/bin/bash\n{start} {sys.executable} -m losslandscape surface {job['toml']} "
                      f"--output.surface={surf}\n")
    before = set((d / "marks").iterdir()) if (d / "marks").exists() else set()
    run = cluster.sbatch(["--nodes=2", "--ntasks-per-node=2", "-o", str(out), str(script)], cwd=d)
    finished(cluster, [run])
    text = out.read_text()
    assert cluster.state(run) == "COMPLETED", text + cluster.logs()
    assert cluster.jobs(run)[0]["NodeList"] == "node[1-2]"
    places = {int(r): (node, what) for r, node, what in re.findall(r"\[rank (\d)\] on node (\S+): (.*)", text)}
    assert places == {0: ("node1", "coordinator"), 1: ("node1", "worker 0 of 1 on this node"),
                      2: ("node2", "worker 0 of 2 on this node"), 3: ("node2", "worker 1 of 2 on this node")}, text
    assert "3 workers; workers write through parallel HDF5" in text
    # the launcher's account of where each process that evaluated grid points ran (the model's marks)
    marks = {}
    for mark in set((d / "marks").iterdir()) - before:
        slurm_rank, slurm_local, mpi_rank, mpi_local, passes = mark.read_text().split()
        # under mpirun, SLURM's ids are those of the per-node daemon srun started, not the ranks'
        rank, local = (slurm_rank, slurm_local) if launcher == "srun" else (mpi_rank, mpi_local)
        marks[int(rank)] = (mark.name.split(".")[0], int(local))
        assert int(passes) > 0
    assert sorted(marks) == [1, 2, 3], marks  # every worker evaluated (and wrote) points; rank 0 none
    for rank, (node, local) in marks.items():
        assert places[rank][0] == node
        index = local - (1 if node == places[0][0] else 0)  # the coordinator's node: it is not a worker
        assert places[rank][1].startswith(f"worker {index} of ")
    assert_equals_reference(surf, job["ref"])
