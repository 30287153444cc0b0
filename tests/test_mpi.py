"""MPI: real `mpirun` with several ranks against the one-process result.

Every test here starts real Open MPI jobs of the `surface` verb (coordinator +
workers, parallel HDF5 or rank-0 writing) and compares with a plain run.
"""

from __future__ import annotations

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

from helpers import mpirun, rank_pids, write_job

pytestmark = pytest.mark.slow  # real mpirun, SLURM or whole runs: `make check` leaves this file out

VALUES = ("train_loss", "train_acc", "test_loss", "test_acc")


def surface_cmd(toml: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "losslandscape", "surface", str(toml), *extra]


def write_spec(path: Path, ckpt: Path, surface: Path, x: str, y: str, samples: int, unit: int = 2) -> Path:
    return write_job(path, ckpt, surface, x, y, samples, unit)


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in VALUES}
        out["done"] = f["train_done"][...] & f["test_done"][...]
    return out


def run(cmd: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> dict:
    """One-process surfaces: a small non-square grid and a larger one."""
    work = tmp_path_factory.mktemp("mpi-ref")
    out = {}
    for name, (x, y, samples) in {"small": ("-1:1:4", "-0.5:0.5:3", 200), "large": ("-1:1:13", "-1:1:13", 60)}.items():
        toml = write_spec(work / f"{name}.toml", trained["final"], work / f"{name}.h5", x, y, samples)
        proc = run(surface_cmd(toml))
        assert proc.returncode == 0, proc.stderr
        out[name] = {"values": read(work / f"{name}.h5"), "x": x, "y": y, "samples": samples}
    return out


def assert_same(got: dict, want: dict) -> None:
    assert got["done"].all()
    for k in VALUES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=0)


# --- real mpirun ---------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_mpirun_equals_one_process(trained, reference, tmp_path, ranks):
    ref = reference["small"]
    toml = write_spec(tmp_path / "s.toml", trained["final"], tmp_path / "s.h5", ref["x"], ref["y"], ref["samples"])
    proc = run(mpirun(ranks) + surface_cmd(toml))
    assert proc.returncode == 0, proc.stderr
    assert_same(read(tmp_path / "s.h5"), ref["values"])
    if ranks > 1:
        assert "workers write through parallel HDF5" in proc.stderr
        assert f"{ranks - 1} workers" in proc.stderr


def test_without_parallel_hdf5_rank0_writes(trained, reference, tmp_path):
    ref = reference["small"]
    toml = write_spec(tmp_path / "s.toml", trained["final"], tmp_path / "s.h5", ref["x"], ref["y"], ref["samples"])
    proc = run(mpirun(3) + surface_cmd(toml), {"LOSSLANDSCAPE_SERIAL_HDF5": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 writes (no parallel HDF5)" in proc.stderr
    assert_same(read(tmp_path / "s.h5"), ref["values"])


def test_coordinator_sleeps_while_it_waits(trained, tmp_path):
    toml = write_spec(tmp_path / "s.toml", trained["final"], tmp_path / "s.h5", "-1:1:11", "-1:1:11", 200)
    proc = run(mpirun(3) + surface_cmd(toml))
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"coordinator CPU use: ([\d.]+) s in ([\d.]+) s \(([\d.]+)% of a core\)", proc.stderr)
    assert m, proc.stderr
    assert float(m.group(2)) > 2.0  # long enough to mean something
    assert float(m.group(3)) < 10.0


def _start_and_wait(cmd: list[str], surface: Path, at_least: int, env_extra: dict | None = None):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if not surface.exists():
            continue
        try:
            with h5py.File(surface, "r", locking=False) as f:
                if int(f["test_done"][...].sum()) >= at_least:
                    return proc
        except (OSError, KeyError):
            pass
    proc.kill()
    pytest.fail(f"the job ended or stalled before {at_least} points were done:\n{proc.communicate()[1]}")


# A SIGKILLed worker loses at most its unit: test_mpi_probe.py, where the bound is checked.


def test_sigterm_gives_exit_3_and_a_resumable_file(trained, reference, tmp_path):
    ref = reference["large"]
    surf = tmp_path / "s.h5"
    toml = write_spec(tmp_path / "s.toml", trained["final"], surf, ref["x"], ref["y"], ref["samples"])
    proc = _start_and_wait(mpirun(3) + surface_cmd(toml), surf, at_least=10)
    for pid in rank_pids(proc.pid):  # as SLURM signals every task of a step at its time limit
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "resumable" in err
    partial = read(surf)
    assert 0 < partial["done"].sum() < 169
    again = run(mpirun(2) + surface_cmd(toml))
    assert again.returncode == 0, again.stderr
    assert_same(read(surf), ref["values"])


def test_status_and_render_read_a_file_a_running_parallel_job_holds_open(trained, tmp_path):
    surf = tmp_path / "s.h5"
    toml = write_spec(tmp_path / "s.toml", trained["final"], surf, "-1:1:31", "-1:1:31", 60)
    proc = _start_and_wait(mpirun(3) + surface_cmd(toml), surf, at_least=10)
    try:
        status = run([sys.executable, "-m", "losslandscape", "status", str(surf)], timeout=60)
        assert status.returncode == 0 and "test " in status.stdout, status.stderr
        pictures = run([sys.executable, "-m", "losslandscape", "render", str(surf), "--kind", "heatmap",
                        "--out", str(tmp_path / "live")], timeout=120)
        assert pictures.returncode == 0, pictures.stderr
        assert list((tmp_path / "live").glob("*heatmap.png"))
        assert proc.poll() is None, "the job ended while it was being read: make the grid larger"
    finally:
        for pid in rank_pids(proc.pid):
            os.kill(pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 3


def test_a_refused_spec_is_one_error_line_from_rank_0(trained, reference, tmp_path):
    ref = reference["small"]
    toml = write_spec(tmp_path / "s.toml", trained["final"], tmp_path / "s.h5", ref["x"], ref["y"], ref["samples"])
    assert run(surface_cmd(toml)).returncode == 0
    proc = run(mpirun(3) + surface_cmd(toml, "--directions.seed=7"))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("losslandscape: error:")]
    assert len(errors) == 1 and "directions.seed" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_a_checkpoint_every_rank_starts_from_the_same_weights(tmp_path):
    """No checkpoint: the centre is a fresh initialisation, the same on every rank and run."""
    toml = write_spec(tmp_path / "s.toml", tmp_path / "unused.pt", tmp_path / "s.h5", "-1:1:3", "-1:1:3", 100)
    toml.write_text(toml.read_text().replace(f'checkpoint = "{tmp_path / "unused.pt"}"', 'checkpoint = ""'))
    proc = run(mpirun(3) + surface_cmd(toml))
    assert proc.returncode == 0, proc.stderr
    one = run(surface_cmd(toml, "--output.surface", str(tmp_path / "one.h5")))
    assert one.returncode == 0, one.stderr
    assert_same(read(tmp_path / "s.h5"), read(tmp_path / "one.h5"))
