"""Shared fixtures: small real models trained on the digits data set, a local SLURM cluster, chromium,
and the surface files the renderer's tests read (written by hand)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import LONGEST_FIRST, REPO
from helpers import (CENTRE, PARTIAL_EIG, PCA_PARTIAL, PCA_SPEC, PX, PY, add_hessian, add_paths, eig_maps, paraboloid,
                     pca_loss, render, write_surface)

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts with one torch thread, whatever the one before it left. A job run in this
    process sets the thread count (`evaluation.threads = 0`: a share of the cores); left at 2 for
    the next test of this worker, beside two others on two cores, a Hessian-vector product of a
    small model took 4 to 14 times as long."""
    torch.set_num_threads(1)
    yield


def pytest_collection_modifyitems(config, items):
    first = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's tests keep their order


# `make check` leaves out what is marked slow: each file or test that launches mpirun, SLURM, a browser or a
# whole run says so itself, with `pytestmark = pytest.mark.slow` or `@pytest.mark.slow`.


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """resnet20 trained briefly on digits: {'init': model_0.pt, 'mid': model_1.pt, 'final': model_2.pt}."""
    from losslandscape import spec as specs
    from losslandscape.numerics.train import train

    out = tmp_path_factory.mktemp("trained")
    spec = specs.from_dict({
        "model": {"name": "resnet20"},
        "data": {"name": "digits", "splits": ["train", "test"]},
        "evaluation": {"device": "cpu"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "save_every": 1, "out_dir": str(out),
                  "lr_steps": [1]},
    })
    train(spec)
    return {"init": out / "model_0.pt", "mid": out / "model_1.pt", "final": out / "model_2.pt"}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One real local SLURM cluster for the whole session (tests/slurmcluster.py), stopped at its end.

    When SLURM cannot be installed or started, the tests that need it fail with the reason."""
    from slurmcluster import LocalSlurm

    cluster = LocalSlurm(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
    except RuntimeError as err:
        pytest.fail(f"could not start a local SLURM cluster: {err}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def chromium():
    """The chromium binary, installed by scripts/ensure-chromium.sh if missing."""
    script = REPO / "scripts" / "ensure-chromium.sh"
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/ensure-chromium.sh did not finish in 20 minutes")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        pytest.fail(f"chromium is needed for the HTML test: {reason}")
    binary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    binary = binary or shutil.which("chromium") or shutil.which("chromium-browser") or ""
    if not binary:
        pytest.fail("scripts/ensure-chromium.sh succeeded but printed no chromium binary")
    return binary


# --- surface files for the renderer (tests/test_render*.py), written by hand --------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("surfaces")
    L = paraboloid()
    acc = 100 - 10 * L
    ones = np.ones_like(L)
    out = {}
    out["para"] = write_surface(
        d / "para.h5",
        PX,
        PY,
        {"train_loss": L, "train_acc": acc, "test_loss": 1.1 * L + 0.05, "test_acc": acc - 3},
        {"train_done": ones, "test_done": ones},
    )

    # Partial: the coarse pass (every 4th point of each axis) and two finer points.
    done = np.zeros_like(L, dtype=np.uint8)
    done[::4, ::4] = 1
    done[1, 2] = done[6, 10] = 1
    stale = np.where(done == 1, L, 123.0)  # values of points not done must not count
    stale_acc = np.where(done == 1, acc, 7.0)
    out["partial"] = write_surface(
        d / "partial.h5", PX, PY, {"train_loss": stale, "train_acc": stale_acc}, {"train_done": done}
    )

    diverged = np.where(L > 3.0, np.inf, L)
    out["inf"] = write_surface(d / "inf.h5", PX, PY, {"train_loss": diverged, "train_acc": acc}, {"train_done": ones})

    first_row = np.zeros_like(done)
    first_row[0] = 1
    out["onerow"] = write_surface(
        d / "onerow.h5", PX, PY, {"train_loss": np.where(first_row == 1, L, np.nan)}, {"train_done": first_row}
    )

    nothing = np.full_like(L, np.nan)
    out["empty"] = write_surface(
        d / "empty.h5", PX, PY, {"train_loss": nothing, "train_acc": nothing}, {"train_done": np.zeros_like(done)}
    )

    x1 = np.linspace(-0.5, 1.5, 41)
    l1 = 4 * x1**2 * (x1 - 1) ** 2 + 0.1 + 0.2 * x1
    out["curve"] = write_surface(
        d / "curve.h5",
        x1,
        None,
        {"train_loss": l1, "train_acc": 100 - 20 * l1, "test_loss": l1 + 0.2, "test_acc": 95 - 20 * l1},
        {"train_done": np.ones(41), "test_done": np.ones(41)},
        spec={"model": {"name": "vgg9"}, "directions": {"kind": "interpolate"}},
    )
    out["curve2"] = write_surface(
        d / "curve2.h5", x1, None, {"train_loss": 2 * l1, "train_acc": 90 - 20 * l1}, {"train_done": np.ones(41)},
        model="vgg9-small-batch",
    )

    # The original code's file: square, no format attr, no flags, -1 = missing.
    xo = np.linspace(-1, 1, 11)
    Xo, Yo = np.meshgrid(xo, xo)
    lo = Xo**2 + Yo**2 + 0.1
    ao = 100 - 10 * lo
    lo[8:, 6:] = -1
    ao[8:, 6:] = -1
    out["orig"] = write_surface(d / "orig.h5", xo, xo, {"train_loss": lo, "train_acc": ao}, original=True)

    notes = d / "notes.h5"
    notes.write_text("this is not an HDF5 file\n")
    out["not_hdf5"] = notes
    with h5py.File(d / "no_x.h5", "w") as f:
        f["train_loss"] = np.zeros((3, 3))
    out["no_x"] = d / "no_x.h5"
    return out


@pytest.fixture(scope="module")
def para_outputs(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("para_out")
    return out, render([files["para"]], out)


@pytest.fixture(scope="module")
def hessian_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hessian")
    L = paraboloid()
    ones = np.ones_like(L)
    values = {"train_loss": L, "train_acc": 100 - 10 * L, "test_loss": 1.1 * L + 0.05, "test_acc": 97 - 10 * L}
    flags = {"train_done": ones, "test_done": ones}
    mx, mn = eig_maps()
    out = {}
    out["maps"] = add_hessian(write_surface(d / "maps.h5", PX, PY, values, flags), mx, mn, ones, centre=CENTRE)
    # Partial, of the test split; the stale values of points not done must never show.
    done = PARTIAL_EIG
    out["partial"] = add_hessian(
        write_surface(d / "partial.h5", PX, PY, values, flags), np.where(done == 1, mx, 123.0),
        np.where(done == 1, mn, 123.0), done, {"split": "test", "samples": 0, "params": "weights", "tol": 1e-3})
    # Maps created, nothing computed yet (NaN, as the verb allocates them).
    nan = np.full_like(L, np.nan)
    out["none_done"] = add_hessian(write_surface(d / "none_done.h5", PX, PY, values, flags), nan, nan,
                                   np.zeros_like(done))
    return out


@pytest.fixture(scope="module")
def pca_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pca")
    L = pca_loss()
    ones = np.ones_like(L)
    out = {}
    values = {"train_loss": L, "train_acc": 100 - 10 * L, "test_loss": L + 0.1, "test_acc": 95 - 10 * L}
    out["pca"] = add_paths(write_surface(d / "pca.h5", PX, PY, values, {"train_done": ones, "test_done": ones},
                                         spec=PCA_SPEC))
    stale = np.where(PCA_PARTIAL == 1, L, 123.0)
    out["partial"] = add_paths(write_surface(d / "pcapart.h5", PX, PY, {"train_loss": stale},
                                             {"train_done": PCA_PARTIAL}, spec=PCA_SPEC), vlen=False)
    nothing = np.full_like(L, np.nan)
    out["empty"] = add_paths(write_surface(d / "pcaempty.h5", PX, PY, {"train_loss": nothing, "train_acc": nothing},
                                           {"train_done": np.zeros_like(PCA_PARTIAL)}, spec=PCA_SPEC))
    return out
