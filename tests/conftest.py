"""Shared fixtures: small real models trained on the digits data set."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import BIN, REPO, write_job  # noqa: F401 (test_readme.py imports BIN and REPO from here)

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

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
