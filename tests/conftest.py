"""Shared fixtures: small real models trained on the digits data set."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

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


def write_job(path: Path, ckpt: Path, surface: Path, x: str, y: str, samples: int, unit: int = 2,
              splits: tuple[str, ...] = ("train", "test"), threads: int = 0) -> Path:
    """A TOML job spec for resnet20 on digits, as a user would write it; returns its path."""
    path.write_text(f"""
[model]
name = "resnet20"
checkpoint = "{ckpt}"
[data]
name = "digits"
splits = {list(splits)!r}
max_samples = {samples}
[grid]
x = "{x}"
y = "{y}"
[evaluation]
device = "cpu"
threads = {threads}
unit_size = {unit}
[output]
surface = "{surface}"
""".replace("'", '"'))
    return path


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
