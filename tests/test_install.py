"""The installer: its choice of MPI and parallel HDF5 (a cluster's own libraries win), and
the Makefile's stamps (a changed TORCH_SPEC reinstalls torch, an unchanged one nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from helpers import LONGEST_FIRST, REPO, fake_venv, make, needs_make

SCRIPT = REPO / "scripts" / "find-parallel-hdf5.sh"


def fake_bin(tmp_path: Path, pkgconfig_has: str = "") -> Path:
    """A PATH folder with an mpicc, a pkg-config that knows only `pkgconfig_has`, and an
    apt-get that records being called (a cluster must never reach it)."""
    b = tmp_path / "bin"
    b.mkdir()
    (b / "mpicc").write_text("#!/bin/sh\nexit 0\n")
    (b / "pkg-config").write_text(f'#!/bin/sh\n[ "$1" = --exists ] && [ "$2" = "{pkgconfig_has}" ] && exit 0\nexit 1\n')
    (b / "apt-get").write_text(f"#!/bin/sh\ntouch {tmp_path}/apt-was-called\nexit 1\n")
    for f in b.iterdir():
        f.chmod(0o755)
    return b


def run(tmp_path: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {"PATH": f"{fake_bin(tmp_path, env_extra.pop('PKG', ''))}:/usr/bin:/bin", **env_extra}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)


def test_hdf5_dir_from_environment_modules_is_used(tmp_path):
    hdf5 = tmp_path / "hdf5-1.14-parallel"
    (hdf5 / "include").mkdir(parents=True)
    (hdf5 / "include" / "H5pubconf.h").write_text("#define H5_HAVE_PARALLEL 1\n")
    proc = run(tmp_path, {"HDF5_DIR": str(hdf5)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CC=mpicc", "HDF5_MPI=ON", f"HDF5_DIR={hdf5}"]
    assert not (tmp_path / "apt-was-called").exists()


def test_a_serial_hdf5_dir_is_passed_over_for_pkg_config(tmp_path):
    hdf5 = tmp_path / "hdf5-serial"
    (hdf5 / "include").mkdir(parents=True)
    (hdf5 / "include" / "H5pubconf.h").write_text("/* no parallel */\n")
    proc = run(tmp_path, {"HDF5_DIR": str(hdf5), "PKG": "hdf5-mpich"})
    assert proc.returncode == 0, proc.stderr
    assert "HDF5_PKGCONFIG_NAME=hdf5-mpich" in proc.stdout.split()
    assert "not a parallel HDF5 build" in proc.stderr
    assert not (tmp_path / "apt-was-called").exists()


def test_the_installed_h5py_has_mpi():
    assert h5py.get_config().mpi


# --- the Makefile's torch stamp ------------------------------------------------------------

DEFAULT_TORCH = "torch==2.13.0"
OTHER_TORCH = "torch==2.6.*"


def pip_installs(text: str) -> list[str]:
    return [line for line in text.splitlines() if " -m pip " in line and " install " in line]


def log(venv: Path) -> str:
    f = venv / "python.log"
    return f.read_text() if f.exists() else ""


@needs_make
@pytest.mark.parametrize("first, second", [(DEFAULT_TORCH, OTHER_TORCH), (OTHER_TORCH, DEFAULT_TORCH)])
def test_make_install_dry_run_installs_torch_only_for_a_new_spec(tmp_path, first, second):
    venv = fake_venv(tmp_path)
    make(venv, "install", spec=first)  # the stamps an installed venv has
    assert [p.name for p in venv.glob(".torch*")] != []
    assert pip_installs(make(venv, "-n", "install", spec=first)) == []
    assert pip_installs(make(venv, "-n", "install")) == []  # no spec: the installed one stays
    assert pip_installs(make(venv, "-n", "test")) == []
    lines = pip_installs(make(venv, "-n", "install", spec=second))
    torch = [line for line in lines if "mpi4py" in line]
    deps = [line for line in lines if "-e '.[test]'" in line]
    # torch, then the package and its deps with that same torch (h5py's step only checks it)
    assert len(torch) == 1 and f"'{second}'" in torch[0], lines
    assert len(deps) == 1 and f"'{second}'" in deps[0], lines
    assert not any(first in line for line in lines)


@needs_make
def test_the_torch_stamp_follows_torch_spec_and_a_second_install_does_nothing(tmp_path):
    venv = fake_venv(tmp_path)
    make(venv, "install")  # a new venv gets the default torch
    # (the log holds pip's arguments as the shell passed them, without quotes)
    assert f" {DEFAULT_TORCH} " in log(venv) and OTHER_TORCH not in log(venv)
    before = log(venv)
    make(venv, "install")
    assert log(venv) == before  # a second `make install` does nothing

    make(venv, "install", spec=OTHER_TORCH)
    new = log(venv)[len(before):]
    installs = [line for line in new.splitlines() if line.startswith("-m pip") and " install " in line]
    assert len(installs) == 2 and all(OTHER_TORCH in line for line in installs), new
    assert DEFAULT_TORCH not in new
    stamps = list(venv.glob(".torch*"))
    assert len(stamps) == 1 and stamps[0].read_text().strip() == OTHER_TORCH
    assert (venv / ".deps").stat().st_mtime_ns >= stamps[0].stat().st_mtime_ns

    before = log(venv)
    make(venv, "install", spec=OTHER_TORCH)
    make(venv, "install")  # `make install` / `make test` later keep the torch installed last
    assert log(venv) == before

    make(venv, "install", spec=DEFAULT_TORCH)  # going back reinstalls the earlier torch
    new = log(venv)[len(before):]
    installs = [line for line in new.splitlines() if line.startswith("-m pip") and " install " in line]
    assert len(installs) == 2 and all(DEFAULT_TORCH in line for line in installs), new
    assert OTHER_TORCH not in new
    assert [p.read_text().strip() for p in venv.glob(".torch*")] == [DEFAULT_TORCH]


@pytest.mark.slow  # runs make twice and collects the suite
@needs_make
def test_make_test_runs_three_processes_and_make_check_leaves_the_slow_tier_out(tmp_path):
    venv = fake_venv(tmp_path)
    make(venv, "install")
    make(venv, "test")
    make(venv, "check")
    runs = [line for line in log(venv).splitlines() if line.startswith("-m pytest")]
    assert runs == ["-m pytest -n 3 --dist loadfile --no-loadscope-reorder",
                    "-m pytest -n 3 --dist loadfile --no-loadscope-reorder -m not slow"], runs
    # the longest files, started first, are files of the suite (a renamed one would start last)
    assert all((REPO / "tests" / name).is_file() for name in LONGEST_FIRST), LONGEST_FIRST
    # the fast tier: no test that starts mpirun, a SLURM cluster or the quick paper run
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=120)
    fast = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(fast) > 300, proc.stdout[-2000:]
    for word in ("test_mpi.py", "test_slurm", "test_mpi_probe.py", "mpirun", "quick_paper", "killed"):
        assert not [t for t in fast if word in t], word


# --- make demo resumes -------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH")
def test_make_demo_trains_once_and_keeps_an_interrupted_surface(tmp_path):
    """README: `make demo` "can be interrupted and rerun: a finished training is reused and the
    surfaces resume where they stopped".
    The real Makefile runs with a venv whose `losslandscape` only records its arguments (the
    verbs' own resume is tested with real runs elsewhere): a rerun after a finished training
    does not train again and keeps the partial surface file for `surface` to resume."""
    venv = fake_venv(tmp_path)
    calls = venv / "calls.log"
    ll_bin = venv / "bin" / "losslandscape"
    ll_bin.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexit 0\n')
    ll_bin.chmod(0o755)
    demo = tmp_path / "demo"

    make(venv, f"DEMO={demo}", "demo")
    first = calls.read_text().splitlines()
    assert first[0] == "train jobs/demo-train.toml", first
    assert "surface jobs/demo-surface.toml" in first and "surface jobs/demo-interp.toml" in first

    # interrupted during the surface: the training finished, the surface is partial
    (demo / "train").mkdir(parents=True)
    (demo / "train" / "model_10.pt").write_bytes(b"trained")
    (demo / "surface.h5").write_bytes(b"partial surface")
    calls.unlink()
    make(venv, f"DEMO={demo}", "demo")
    second = calls.read_text().splitlines()
    assert not any(c.startswith("train") for c in second), second
    assert second[:2] == ["surface jobs/demo-surface.toml", "surface jobs/demo-interp.toml"], second
    assert (demo / "surface.h5").read_bytes() == b"partial surface"
