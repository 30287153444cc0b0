"""A full disk under the Python interface, for real: `ll.compute_surface` whose write of points
the file system refuses raises `UserError` (one line naming the file and the cause), and the
same Python process lives on and does more work; the command line ends its process as before
(tests/test_diskfaults.py). A small tmpfs in a private mount namespace (test_diskfaults'
`Namespace`): a sparse copy of a partial surface on a full disk, whose holes cannot be filled.

Library code raises and never exits: before, the failed write ended the process with
os._exit(1), which in a notebook ends the kernel. HDF5 1.10 segfaults when a file is closed
after a failed write, so the file stays open in that process; the process still ends cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import Namespace

pytestmark = pytest.mark.slow

POINTS = 1025
PENDING = slice(500, 508)

# the notebook's cells as one script (see `script`)
SCRIPT_TEXT = f'''
import json, os, sys
import torch
import torch.nn.functional as F
import losslandscape as ll

torch.manual_seed(0)
model = torch.nn.Linear(64, 10)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
out = {{"pid": os.getpid(), "runs": []}}
for path in sys.argv[1:-1]:
    try:
        ll.compute_surface(model, train=(x, y), x="-1:1:{POINTS}", out=path,
                           evaluation={{"device": "cpu", "threads": 1}})
        out["runs"].append("done")
    except ll.UserError as exc:
        out["runs"].append(f"{{type(exc).__name__}}: {{exc}}")

# more work in the same process, on a disk with room, against a plain forward pass
s = ll.compute_surface(model, train=(x, y), x="-1:1:5", out=sys.argv[-1], evaluation={{"device": "cpu"}})
dx = {{}}
import h5py
with h5py.File(sys.argv[-1], "r") as f:
    dx = {{k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}}
want = []
with torch.no_grad():
    for a in s.x:
        w = model.weight + float(a) * dx["weight"]
        b = model.bias + float(a) * dx.get("bias", torch.zeros(10))
        want.append(F.cross_entropy(x @ w.T + b, y).item())
out["more_work"] = [float(v) for v in s.train_loss.ravel()]
out["plain"] = want
print(json.dumps(out))
'''


def script(folder: Path) -> Path:
    """The notebook's cells as one script: compute (or resume) each surface named, catching
    UserError, then a small surface elsewhere checked against a plain forward pass."""
    path = folder / "notebook.py"
    path.write_text(SCRIPT_TEXT)
    return path


def loss_done(path: Path) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return int(f["train_done"][...].sum())


@pytest.fixture
def ns():
    n = Namespace()
    yield n
    n.close()


def test_a_full_disk_raises_user_error_and_the_process_lives_on(ns, tmp_path):
    py = script(tmp_path)
    notebook = [sys.executable, str(py)]
    # a complete surface on a disk with room, then its points PENDING undone, their timings 0
    base = tmp_path / "base" / "s.h5"
    base.parent.mkdir()
    proc = subprocess.run([*notebook, str(base), str(tmp_path / "warm.h5")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["runs"] == ["done"]
    with h5py.File(base, "r+") as f:
        want = f["train_loss"][...].copy()
        f["train_loss"][PENDING] = np.nan
        f["train_acc"][PENDING] = np.nan
        f["train_done"][PENDING] = 0
        f["point_seconds"][...] = 0.0  # a run of zeros: `cp --sparse=always` leaves holes there

    # its sparse copy (and the weights beside it) on a tmpfs filled to the last page
    mnt = tmp_path / "mnt"
    ns.mount(mnt, 1024)
    surf = mnt / "s.h5"
    ns.sh(f"cp --sparse=always {base} {surf} && cp {base}.model.pt {surf}.model.pt")
    ns.fill(mnt, leave_pages=1)  # room for the lock file only
    more = tmp_path / "more.h5"
    proc = ns.run([*notebook, str(surf), str(more)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # no os._exit(1), no segfault, not even at exit
    assert "Segmentation" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    (line,) = out["runs"]
    assert line.startswith(f"WriteFailed: output.surface: cannot write {surf}: No space left on device"), line
    assert "points written before are kept" in line and "\n" not in line, line
    np.testing.assert_allclose(out["more_work"], out["plain"], rtol=1e-5)  # the same process did more work
    assert loss_done(ns.outside(surf)) == POINTS - 8

    # room again: the same call finishes the surface (a new process), to the values computed before
    ns.sh(f"rm {mnt}/fill")
    proc = ns.run([*notebook, str(surf), str(tmp_path / "again.h5")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["runs"] == ["done"]
    with h5py.File(ns.outside(surf), "r", locking=False) as f:
        assert f["train_done"][...].all()
        np.testing.assert_allclose(f["train_loss"][...], want, rtol=1e-6)
