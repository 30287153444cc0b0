"""Chaos: the whole MPI job SIGKILLed at random moments, round after round, then resumed.

`mpirun -n 3 losslandscape surface` of a tiny model on a 7x7 grid is started ROUNDS times and each
time SIGKILLed whole (mpirun and every rank: Open MPI puts each rank in a process group of its own,
so the session the test started is killed, process by process) at a moment drawn from a seeded
RNG: a random time after the launch (while Python starts), a random instant after the temporary
`.s.h5.creating` appears (while the ranks create the file together through parallel HDF5), after
it is renamed (the run records, the collective open), and after a random number of new points
(while workers write). The moments are anchored to these events so that every stage is hit on a
fast machine and on a loaded one. A final uninterrupted run then resumes the file: it must equal
one clean process at every point, with nothing left beside it.
"""

from __future__ import annotations

import logging
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

from losslandscape import spec as specs
from losslandscape.run.driver import run_serial
from losslandscape.run.work import SurfaceWork

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SEED = 22
# the stage each round's kill is anchored to; the moment within it is drawn from the RNG
SCHEDULE = ("start", "creating", "creating", "created", "writing", "start", "writing")
VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")
N = 7 * 7

# Its own module name: an in-process import must not find another test's model module.
MODEL = '''
import time

import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return Slow()


class Slow(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x):
        time.sleep(0.02)  # a point takes long enough to be killed while it is written
        return super().forward(x)


def data(split):
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    x = torch.randn(64, 16, generator=g)
    return x, (x[:, :4].argmax(1) + (torch.rand(64, generator=g) < 0.2).long()) % 4
'''


def mpirun_env() -> dict[str, str]:
    """Python's copy of the environment without what an in-process MPI singleton set in the C
    environment: an mpirun that inherits OMPI_/PMIX_ variables believes it is inside that job."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(name))
    return found


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL mpirun and every rank (the session started for it), until none of them is left."""
    deadline = time.monotonic() + 20
    while True:
        pids = session_pids(proc.pid)
        if not pids:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"processes of the killed job still alive: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    proc.wait(timeout=20)


def stat_of(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def done_points(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int((f["train_done"][...] & f["test_done"][...]).sum())
    except (OSError, KeyError):
        return -1


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in VALUES}
        out["done"] = f["train_done"][...] & f["test_done"][...]
    return out


def test_sigkilled_at_random_moments_then_resumed_equals_a_clean_run(tmp_path):
    d = tmp_path
    (d / "chaos_tiny.py").write_text(MODEL)
    surf = d / "s.h5"
    creating = d / ".s.h5.creating"
    toml = d / "job.toml"
    toml.write_text(f'''
[model]
name = "chaos_tiny:build"
[data]
name = "chaos_tiny:data"
splits = ["train", "test"]
[grid]
x = "-1:1:7"
y = "-1:1:7"
[evaluation]
device = "cpu"
threads = 1
unit_size = 1
fold_batchnorm = false
[output]
surface = "{surf}"
''')
    # one clean process, checked at the centre against a plain forward pass
    sys.path.insert(0, str(d))
    try:
        import chaos_tiny

        assert run_serial(SurfaceWork(specs.load(toml, {"output.surface": str(d / "clean.h5")}))) == 0
        model = chaos_tiny.build().eval()
        with torch.no_grad():
            centre = {split: F.cross_entropy(model(x), y).item()
                      for split, (x, y) in ((s, chaos_tiny.data(s)) for s in ("train", "test"))}
    finally:
        sys.path.remove(str(d))
    clean = read(d / "clean.h5")
    for split in ("train", "test"):
        assert clean[f"{split}_loss"][3, 3] == pytest.approx(centre[split], rel=1e-5)

    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", sys.executable, "-m",
               "losslandscape", "surface", str(toml)]
    rng = np.random.default_rng(SEED)
    seen = []  # per round: (stage, what the file was at the kill: "none", "creating", or points done)
    schedule, retries = list(SCHEDULE), 5
    while schedule:
        stage = schedule.pop(0)
        if stage == "creating" and surf.exists():  # an earlier kill came after the rename
            stage = "start"
        before, left_over = done_points(surf), stat_of(creating)  # a killed creation's file may be there
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=d, env=mpirun_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        if stage == "start":
            time.sleep(rng.uniform(0.05, 1.0))
        else:
            at_least = (max(before, 0) + int(rng.integers(1, max(2, (N - before) // 4)))) if stage == "writing" else 0

            def reached() -> bool:
                if stage == "creating":
                    return stat_of(creating) not in (None, left_over)
                if stage == "created":
                    return surf.exists()
                return done_points(surf) >= at_least

            while not reached():
                if proc.poll() is not None or time.monotonic() > deadline:
                    kill_job(proc)
                    pytest.fail(f"round {len(seen)} ({stage}) ended before its moment: exit {proc.returncode}\n"
                                + proc.stderr.read()[-3000:])
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, {"creating": 0.005, "created": 0.05}.get(stage, 0.2)))
        kill_job(proc)
        # what the kill left: no file, the temporary one only, or the file with its points done
        state = "creating" if creating.exists() and not surf.exists() else (
            "none" if not surf.exists() else done_points(surf))
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode != 0, f"round {len(seen)} ({stage}) finished before it was killed:\n{err[-2000:]}"
        seen.append((stage, state))
        beside = sorted(p.name for p in d.iterdir() if p.name.startswith((".", "s.h5.")))
        log.info("round %d: %s, killed after %.2f s, left %s; beside the surface: %s", len(seen), stage,
                 time.monotonic() - started, state, beside)
        if stage == "creating" and state != "creating" and done_points(surf) <= 0 and retries:
            # the creation ended before the kill reached it (a loaded machine): the file holds no point
            # yet, so it is removed and the creation killed again
            retries -= 1
            surf.unlink(missing_ok=True)
            schedule.insert(0, "creating")
    log.info("chaos rounds (stage, file at the kill): %s", seen)
    assert ("creating", "creating") in seen, f"no kill landed while the file was being created: {seen}"
    assert any(isinstance(s, int) and 0 < s < N for _, s in seen), f"no kill while points were written: {seen}"

    partial = done_points(surf)
    final = subprocess.run(command, cwd=d, env=mpirun_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    if partial >= 0:
        assert re.search(rf"resuming .*: {partial} of {N} points done", final.stderr), final.stderr[-3000:]
    got = read(surf)
    assert got["done"].all()
    for k in VALUES:
        np.testing.assert_allclose(got[k], clean[k], rtol=1e-6, atol=1e-6)
    # nothing a killed run made is left beside the surface (temporary files, probes, write locks)
    assert sorted(p.name for p in d.iterdir() if p.name != "__pycache__") == [
        "chaos_tiny.py", "clean.h5", "job.toml", "s.h5"]
