"""Full disks and read-only file systems, for real: a small tmpfs mounted in a private mount
namespace (`unshare --mount`, kept by a sleeping process; commands enter it with `nsenter`),
filled with a file of zeros by the test.

Every refusal must be exit 1 with one `losslandscape: error:` line naming the path and the cause
(and the room needed where known), no traceback, no segfault, no temporary file left; points
written before stay in the file, which resumes once there is room, to the values of a plain
forward pass written here.

A write of points into a file made by the tool needs no room (its datasets are allocated and
filled at creation): a disk that fills during a run does not stop it. A write fails where the
file is sparse: `cp --sparse=always` of a partial file leaves holes in its runs of zeros (here
the `point_seconds` of a file whose timings are 0), and filling a hole on a full disk fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import BIN
from test_mpi import mpirun

pytestmark = pytest.mark.slow

PAGE = 4096
SAMPLES = 32
TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''
CLEAN = {k: "" for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE",
                         "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")}


class Namespace:
    """A private mount namespace kept by a sleeping process; its files seen from here through
    /proc/<pid>/root."""

    def __init__(self):
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            pytest.fail("unshare and nsenter (util-linux) are needed to mount a tmpfs", pytrace=False)
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
        deadline = time.monotonic() + 10
        mine = os.readlink("/proc/self/ns/mnt")
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            assert time.monotonic() < deadline, "unshare --mount did not start"
            time.sleep(0.01)

    def cmd(self, *args: str, cwd: Path | None = None) -> list[str]:
        # entering a mount namespace moves the working directory to its root: --wd sets it back
        return ["nsenter", "-t", str(self.holder.pid), "-m", *([f"--wd={cwd}"] if cwd else []), "--", *args]

    def sh(self, script: str) -> str:
        proc = subprocess.run(self.cmd("sh", "-c", script), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def mount(self, folder: Path, kib: int, ro: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.sh(f"mount -t tmpfs -o size={kib}k{',ro' if ro else ''} tmpfs {folder}")

    def fill(self, folder: Path, leave_pages: int = 0) -> None:
        """Fill the file system with zeros, then give back `leave_pages` pages."""
        self.sh(f"dd if=/dev/zero of={folder}/fill bs=4k 2>/dev/null; truncate -s -{leave_pages * PAGE} {folder}/fill")

    def free(self, folder: Path) -> int:
        return int(self.sh(f"df -k --output=avail {folder} | tail -1").strip()) * 1024

    def outside(self, path: Path) -> Path:
        return Path(f"/proc/{self.holder.pid}/root") / Path(path).relative_to("/")

    def run(self, args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args, cwd=cwd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **CLEAN, "OMP_NUM_THREADS": "1"})

    def popen(self, args: list[str], cwd: Path) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args, cwd=cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **CLEAN, "OMP_NUM_THREADS": "1"})

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def ns():
    n = Namespace()
    yield n
    n.close()


def job(folder: Path, surface: Path, x: str, y: str = "", unit: int = 8, name: str = "job.toml",
        extra: str = "", module: str = "dftiny") -> Path:
    """A job spec for the linear model (module `module`, beside the spec) on 32 digits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(TINY)
    spec = folder / name
    spec.write_text(f'''
[model]
name = "{module}:build"
[data]
name = "digits"
splits = ["train"]
max_samples = {SAMPLES}
[grid]
x = "{x}"
y = "{y}"
[evaluation]
device = "cpu"
threads = 1
unit_size = {unit}
[output]
surface = "{surface}"
{extra}''')
    return spec


def ll(*args) -> list[str]:
    return [str(BIN / "losslandscape"), *map(str, args)]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `losslandscape: error:` line of a refused run: exit 1, no traceback, no segfault."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def independent(surface: Path) -> dict[str, np.ndarray]:
    """Loss and accuracy at every grid point, by a plain forward pass of the moved linear model
    (the directions read from the file), the whole grid at once in float64."""
    from losslandscape.inputs import data as datasets

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 10)
    datasets._load.cache_clear()
    x, y = datasets._load("digits", "", "train", SAMPLES, 0)
    with h5py.File(surface, "r", locking=False) as f:
        xs = torch.from_numpy(f["xcoordinates"][...])
        ys = torch.from_numpy(f["ycoordinates"][...]) if "ycoordinates" in f else torch.zeros(1, dtype=torch.float64)
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).double() for k in f["directions/x"]}
        dy = ({k: torch.from_numpy(f["directions/y"][k][...]).double() for k in f["directions/y"]}
              if "y" in f["directions"] else {k: torch.zeros_like(v) for k, v in dx.items()})
        shape = f["train_done"].shape
    a, b = torch.meshgrid(xs, ys, indexing="xy")
    w0, b0 = lin.weight.detach().double(), lin.bias.detach().double()  # (ny, nx): row j is y[j]
    a, b = a.reshape(-1, 1, 1), b.reshape(-1, 1, 1)
    w = w0 + a * dx["1.weight"] + b * dy["1.weight"]  # (P, 10, 64)
    bias = b0 + a[:, 0] * dx["1.bias"] + b[:, 0] * dy["1.bias"]  # (P, 10)
    logits = torch.einsum("pij,sj->psi", w, x.flatten(1).double()) + bias[:, None, :]  # (P, S, 10)
    loss = torch.stack([F.cross_entropy(z, y) for z in logits])
    acc = 100.0 * (logits.argmax(-1) == y).double().mean(-1)
    return {"train_loss": loss.numpy().reshape(shape), "train_acc": acc.numpy().reshape(shape)}


def assert_values(surface: Path, want: dict[str, np.ndarray]) -> None:
    with h5py.File(surface, "r", locking=False) as f:
        assert f["train_done"][...].all()
        for k, v in want.items():
            np.testing.assert_allclose(f[k][...], v, rtol=2e-5, atol=1e-6)


def done_count(surface: Path) -> int:
    with h5py.File(surface, "r", locking=False) as f:
        return int(f["train_done"][...].sum())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def in_process(spec_path: Path, run: bool = True):
    """Make (and with `run`, compute or just annotate) a surface in this process: cheap set-up."""
    from losslandscape import spec as specs
    from losslandscape.run.driver import run_serial
    from losslandscape.run.work import SurfaceWork, prepare

    from losslandscape.surfacefile import lock as writelock

    spec = specs.load(spec_path)
    try:
        return run_serial(SurfaceWork(spec)) if run else prepare(spec)
    finally:
        writelock.release_all()  # prepare's lock lasts as long as its process (the `directions` verb's)


def partial_sparse_file(folder: Path, pending: slice) -> tuple[Path, dict]:
    """A 1-D surface of 1,025 points, all done with the independent values except `pending`,
    its run notes written, and every point's timing 0 (a run of zeros `cp --sparse` makes holes
    of). Returns (the file, the independent values)."""
    base = folder / "base.h5"
    spec = job(folder, base, "-1:1:1025", unit=4, name="base.toml")
    in_process(spec, run=False)
    want = independent(base)
    with h5py.File(base, "r+") as f:
        for k, v in want.items():
            f[k][...] = v
        f["train_done"][...] = 1
    in_process(spec)  # nothing to compute: records how the run evaluates (the notes), as a run would
    with h5py.File(base, "r+") as f:
        for k in want:
            f[k][pending] = np.nan
        f["train_done"][pending] = 0
        f["point_seconds"][...] = 0.0
    return base, want


# --- at creation -----------------------------------------------------------------------------

def test_no_room_for_a_new_file_is_one_line_and_leaves_nothing(ns, tmp_path):
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 64)
    spec = job(tmp_path, mnt / "out" / "s.h5", "-1:1:9", "-1:1:9")
    proc = ns.run(ll("surface", spec), tmp_path)
    line = one_error_line(proc)
    assert f"no room for the new file {mnt / 'out' / 's.h5'}" in line and "No space left on device" in line, line
    assert "it needs about" in line and "free in" in line, line
    assert sorted(p.name for p in ns.outside(mnt / "out").iterdir()) == [], "a temporary or lock file was left"
    print(line)


def test_a_read_only_file_system_is_one_line(ns, tmp_path):
    mnt = tmp_path / "ro"
    ns.mount(mnt, 1024, ro=True)
    spec = job(tmp_path, mnt / "s.h5", "-1:1:5")
    line = one_error_line(ns.run(ll("surface", spec), tmp_path))
    assert str(mnt / "s.h5") in line and "Read-only file system" in line, line
    print(line)


# --- while writing points --------------------------------------------------------------------

def test_a_disk_that_fills_during_a_run_loses_nothing(ns, tmp_path):
    """The file holds its room from creation: filled to the last page mid-run, the job finishes."""
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 512)
    surf = mnt / "s.h5"
    spec = job(tmp_path, surf, "-1:1:301", unit=4)
    proc = ns.popen(ll("surface", spec), tmp_path)
    seen = ns.outside(surf)
    deadline = time.monotonic() + 120
    while not (seen.exists() and done_count(seen) > 0):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    ns.fill(mnt)
    assert ns.free(mnt) == 0
    done_then = done_count(seen)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert done_then < 301, "the run ended before the disk was full: nothing was shown"
    assert_values(seen, independent(seen))


def test_a_failed_write_of_points_is_one_line_and_the_file_resumes(ns, tmp_path):
    """A sparse copy of a partial file on a full disk: writing a point fails, one line, the points
    done before are kept, and the same command finishes the surface once there is room."""
    base, want = partial_sparse_file(tmp_path / "base", slice(500, 508))
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp --sparse=always {base} {surf}")
    ns.fill(mnt, leave_pages=1)  # room for the lock file only
    spec = job(tmp_path, surf, "-1:1:1025", unit=4)
    line = one_error_line(ns.run(ll("surface", spec), tmp_path))
    assert f"cannot write {surf}: No space left on device" in line and "points written before are kept" in line, line
    assert done_count(ns.outside(surf)) == 1017
    assert sorted(p.name for p in ns.outside(mnt).iterdir()) == ["fill", "s.h5"]
    ns.sh(f"rm {mnt}/fill")
    proc = ns.run(ll("surface", spec), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1017 of 1025 points done" in proc.stderr
    assert_values(ns.outside(surf), want)
    print(line)


def test_a_failed_write_under_mpirun_ends_the_job_with_one_line(ns, tmp_path):
    """The same under mpirun -n 3: a worker's write through parallel HDF5 fails; the job ends
    within seconds with one line naming the rank, the points before kept; a resume finishes it."""
    base, want = partial_sparse_file(tmp_path / "base", slice(500, 508))
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp --sparse=always {base} {surf}")
    ns.fill(mnt, leave_pages=1)
    spec = job(tmp_path, surf, "-1:1:1025", unit=4)
    start = time.monotonic()
    proc = ns.run(mpirun(3) + ll("surface", spec), tmp_path)
    line = one_error_line(proc)
    assert line.startswith("losslandscape: error: rank ") and f"cannot write {surf}: No space left" in line, line
    assert time.monotonic() - start < 60
    assert done_count(ns.outside(surf)) == 1017
    ns.sh(f"rm {mnt}/fill")
    proc = ns.run(ll("surface", spec), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_values(ns.outside(surf), want)
    print(line, f"({time.monotonic() - start:.0f} s with the resume)")


# --- merge, the Hessian maps, a conversion ---------------------------------------------------

def test_merge_on_a_full_disk_is_one_line_and_merges_later(ns, tmp_path):
    """Shard points merged into a sparse copy on a full disk: one line, the surface as it was;
    the same merge finishes it once there is room."""
    from losslandscape.surfacefile import write as surfaces
    from losslandscape.run.slurm import run_task

    base, want = partial_sparse_file(tmp_path / "base", slice(500, 508))
    shards = base.with_name(base.name + ".shards")
    shards.mkdir()
    with h5py.File(base, "r") as f:
        spec_json = f.attrs["spec"]
    surfaces.create_shard(shards / "task_0.h5", base, np.arange(500, 508), 0, 1, spec_json, [str(tmp_path / "base")])
    assert run_task(shards, 0) == 0
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "base.h5"
    ns.sh(f"cp --sparse=always {base} {surf} && cp -r {shards} {mnt}/")
    ns.fill(mnt, leave_pages=1)
    line = one_error_line(ns.run(ll("merge", surf), tmp_path))
    assert f"cannot write {surf}: No space left on device" in line, line
    assert done_count(ns.outside(surf)) == 1017
    ns.sh(f"rm {mnt}/fill")
    proc = ns.run(ll("merge", surf), tmp_path)
    assert proc.returncode == 0 and "complete" in proc.stdout, proc.stderr[-3000:]
    assert_values(ns.outside(surf), want)
    print(line)


def test_hessian_maps_on_a_full_disk_are_one_line_and_leave_the_file(ns, tmp_path):
    work = tmp_path / "w"
    # a module name of its own: this process has imported dftiny from another test's folder
    spec = job(work, work / "s.h5", "-0.5:0.5:3", "-0.5:0.5:3", module="dfhess")
    assert in_process(spec) == 0
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp {work / 's.h5'} {surf}")
    ns.fill(mnt, leave_pages=1)
    before = sha(ns.outside(surf))
    line = one_error_line(ns.run(ll("hessian", surf, "--samples", "16"), work))
    assert f"no room for the eigenvalue maps of {surf}: No space left on device" in line, line
    assert sha(ns.outside(surf)) == before
    assert sorted(p.name for p in ns.outside(mnt).iterdir()) == ["fill", "s.h5"]
    print(line)


def test_converting_an_original_file_on_a_full_disk_is_one_line_and_keeps_it(ns, tmp_path):
    """An original loss-landscape surface file (written here as that code does) adopted where the
    converted file has no room: one line with the room it needs, the original byte for byte."""
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 256)
    orig, dirs = mnt / "orig.h5", mnt / "dirs.h5"
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(1)
    local = tmp_path / "orig"
    local.mkdir()
    with h5py.File(local / "dirs.h5", "w") as f:  # the original code's direction file: xdirection/0, 1, ...
        for i, p in enumerate(lin.parameters()):
            f.create_dataset(f"xdirection/{i}", data=torch.randn(p.shape, generator=gen).numpy())
    xs = np.linspace(-1, 1, 301)
    with h5py.File(local / "orig.h5", "w") as f:
        f["dir_file"] = str(dirs)
        f["xcoordinates"] = xs
        f["train_loss"] = np.where(np.arange(301) < 100, 1.0, -1.0)
        f["train_acc"] = np.where(np.arange(301) < 100, 50.0, -1.0)
    ns.sh(f"cp {local / 'dirs.h5'} {dirs} && cp {local / 'orig.h5'} {orig}")
    ns.fill(mnt, leave_pages=1)
    before = sha(ns.outside(orig))
    spec = job(tmp_path, orig, "-1:1:301", extra=f'[directions]\nkind = "file"\nfile = "{dirs}"\n')
    line = one_error_line(ns.run(ll("surface", spec), tmp_path))
    assert f"no room for the converted file {orig}: No space left on device" in line and "needs about" in line, line
    assert sha(ns.outside(orig)) == before
    assert sorted(p.name for p in ns.outside(mnt).iterdir()) == ["dirs.h5", "fill", "orig.h5"]
    print(line)
