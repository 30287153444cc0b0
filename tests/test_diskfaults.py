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

import os
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import (BIN, PAGE, Namespace, assert_values, done_count, in_process, mpirun, one_error_line, sha,
                     tiny_job, tiny_values)

pytestmark = pytest.mark.slow

@pytest.fixture
def ns():
    n = Namespace()
    yield n
    n.close()


def ll(*args) -> list[str]:
    return [str(BIN / "losslandscape"), *map(str, args)]


def partial_sparse_file(folder: Path, pending: slice) -> tuple[Path, dict]:
    """A 1-D surface of 1,025 points, all done with the independent values except `pending`,
    its run notes written, and every point's timing 0 (a run of zeros `cp --sparse` makes holes
    of). Returns (the file, the independent values)."""
    base = folder / "base.h5"
    spec = tiny_job(folder, base, "-1:1:1025", unit=4, name="base.toml")
    in_process(spec, run=False)
    want = tiny_values(base)
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
    spec = tiny_job(tmp_path, mnt / "out" / "s.h5", "-1:1:9", "-1:1:9")
    proc = ns.run(ll("surface", spec), tmp_path)
    line = one_error_line(proc)
    assert f"no room for the new file {mnt / 'out' / 's.h5'}" in line and "No space left on device" in line, line
    assert "it needs about" in line and "free in" in line, line
    # nothing left: no temporary or lock file, and not the folder the run made for the file
    assert not ns.outside(mnt / "out").exists(), sorted(p.name for p in ns.outside(mnt / "out").iterdir())
    print(line)


def test_a_read_only_file_system_is_one_line(ns, tmp_path):
    mnt = tmp_path / "ro"
    ns.mount(mnt, 1024, ro=True)
    spec = tiny_job(tmp_path, mnt / "s.h5", "-1:1:5")
    line = one_error_line(ns.run(ll("surface", spec), tmp_path))
    assert str(mnt / "s.h5") in line and "Read-only file system" in line, line
    print(line)


# --- while writing points --------------------------------------------------------------------

def test_a_disk_that_fills_during_a_run_loses_nothing(ns, tmp_path):
    """The file holds its room from creation: filled to the last page mid-run, the job finishes."""
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 512)
    surf = mnt / "s.h5"
    spec = tiny_job(tmp_path, surf, "-1:1:301", unit=4)
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
    assert_values(seen, tiny_values(seen))


def test_a_failed_write_of_points_is_one_line_and_the_file_resumes(ns, tmp_path):
    """A sparse copy of a partial file on a full disk: writing a point fails, one line, the points
    done before are kept, and the same command finishes the surface once there is room."""
    base, want = partial_sparse_file(tmp_path / "base", slice(500, 508))
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp --sparse=always {base} {surf}")
    ns.fill(mnt, leave_pages=1)  # room for the lock file only
    spec = tiny_job(tmp_path, surf, "-1:1:1025", unit=4)
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
    spec = tiny_job(tmp_path, surf, "-1:1:1025", unit=4)
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
    spec = tiny_job(work, work / "s.h5", "-0.5:0.5:3", "-0.5:0.5:3", module="dfhess")
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


def test_the_centre_spectrum_on_a_full_disk_is_one_line_and_leaves_the_file(ns, tmp_path):
    """README: the room of a "centre spectrum is reserved ... before HDF5 writes anything":
    `hessian --centre` on a full disk is one line naming the file, the surface byte for byte as
    it was; once there is room the same command stores the spectrum."""
    work = tmp_path / "w"
    spec = tiny_job(work, work / "s.h5", "-0.5:0.5:3", "-0.5:0.5:3", module="dfcentre")
    assert in_process(spec) == 0
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp {work / 's.h5'} {surf}")
    ns.fill(mnt, leave_pages=1)
    before = sha(ns.outside(surf))
    centre = ("hessian", surf, "--centre", "--top-k", "2", "--samples", "16")
    line = one_error_line(ns.run(ll(*centre), work))
    assert f"no room for the new part of {surf}: No space left on device" in line, line
    assert sha(ns.outside(surf)) == before
    assert sorted(p.name for p in ns.outside(mnt).iterdir()) == ["fill", "s.h5"]
    ns.sh(f"rm {mnt}/fill")
    proc = ns.run(ll(*centre), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(ns.outside(surf), "r", locking=False) as f:
        assert len(f["hessian_centre/top_eigenvalues"]) == 2
    print(line)


def test_no_room_for_a_shard_is_one_line_before_anything_is_submitted(ns, tmp_path):
    """README: the room of a "shard" is reserved before HDF5 writes anything: `submit` on a disk
    with room for the surface but not for a task's shard file is one line naming it, before
    sbatch is called (there is none here), and leaves no shard behind."""
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    spec = tiny_job(tmp_path / "w", surf, "-1:1:9", "-1:1:9", module="dfshard")
    for first in (("directions", spec), ("submit", spec, "--tasks", "2", "--dry-run")):  # the file and its notes
        proc = ns.run(ll(*first), tmp_path / "w")
        assert proc.returncode == 0, proc.stderr[-3000:]
    before = sha(ns.outside(surf))
    ns.fill(mnt, leave_pages=16)  # 64 KiB: less than a shard's room (its grid's values and 128 KiB)
    line = one_error_line(ns.run(ll("submit", spec, "--tasks", "2"), tmp_path / "w"))
    assert "no room for the shard file" in line and "No space left on device" in line, line
    assert "it needs about" in line, line
    assert sha(ns.outside(surf)) == before
    shards = ns.outside(mnt / "s.h5.shards")
    assert not shards.exists() or not [p.name for p in shards.iterdir() if p.name.endswith(".h5")]
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
    spec = tiny_job(tmp_path, orig, "-1:1:301", extra=f'[directions]\nkind = "file"\nfile = "{dirs}"\n')
    line = one_error_line(ns.run(ll("surface", spec), tmp_path))
    assert f"no room for the converted file {orig}: No space left on device" in line and "needs about" in line, line
    assert sha(ns.outside(orig)) == before
    assert sorted(p.name for p in ns.outside(mnt).iterdir()) == ["dirs.h5", "fill", "orig.h5"]
    print(line)
