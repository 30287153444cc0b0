"""The installer's choice of MPI and parallel HDF5: a cluster's own libraries win."""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py

from conftest import REPO

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
