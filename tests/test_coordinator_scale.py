"""The MPI coordinator at scale (issue #22, part 4): the real `distributed.coordinate` with
stand-in workers (coordsim.py) under a real mpirun, every point handed out exactly once, by
the workers' own written records; `evaluation.unit_size = "auto"` (guided units, checked here
without MPI) accepted by the spec, one process and a SLURM dry run."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from losslandscape import spec as specs
from losslandscape.numerics.schedule import Units
from losslandscape.errors import UserError
from losslandscape.numerics.grid import split_units

from helpers import REPO, launch, mpirun


def drain(units: Units, seconds: float | None = None) -> list[np.ndarray]:
    out = []
    while units:
        out.append(units.popleft())
        if seconds is not None:
            units.observe([seconds] * len(out[-1]))
    return out


def test_fixed_units_are_the_split_of_the_pending_points():
    pending = np.random.default_rng(0).permutation(103)
    got = drain(Units(pending, 4, workers=7))
    want = split_units(pending, 4)
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


# The README's rule for "auto" units (MPI, "Unit size"): about the pending points / (4 x workers),
# at most 16, at least what keeps a worker's wait for its next unit (the coordinator's 5 ms
# answer) under 2% of the unit's time, and never more than an equal share of what is left.
# The numbers are written here, not taken from the module, so a changed constant fails.
README_MAX_UNIT, README_UNITS_PER_WORKER, README_ANSWER_SECONDS, README_WAIT_SHARE = 16, 4, 0.005, 0.02


def readme_sizes(points: int, workers: int, floor: int = 1) -> list[int]:
    """The unit sizes the README's rule gives, one after another, for `points` pending points."""
    sizes, left = [], points
    while left:
        size = min(max(math.ceil(left / (README_UNITS_PER_WORKER * workers)), floor), math.ceil(left / workers),
                   README_MAX_UNIT)
        sizes.append(size)
        left -= size
    return sizes


@pytest.mark.parametrize("workers,points", [(1, 10), (10, 2601), (100, 2601), (1000, 2601), (7, 10_000)])
def test_auto_units_shrink_to_the_end_and_hand_out_every_point_once(workers, points):
    pending = np.random.default_rng(1).permutation(points)
    units = drain(Units(pending, "auto", workers), seconds=1.0)  # 1 s points: the floor stays at 1
    sizes = [len(u) for u in units]
    assert np.array_equal(np.concatenate(units), pending)  # in order, each point once
    assert max(sizes) <= 16 and min(sizes) >= 1
    assert sizes == sorted(sizes, reverse=True)  # guided: never larger later
    assert sizes[0] == min(16, math.ceil(points / (4 * workers)))
    assert sizes == readme_sizes(points, workers)  # every unit, as the README's rule sizes it
    assert sizes[-1] == 1  # the last units are single points: workers finish together


def test_auto_units_grow_for_fast_points():
    """A 10 ms point: a unit must last well beyond the coordinator's 5 ms answer; 2% of a unit's
    time is 5 ms at 25 points, more than the largest unit of 16: so 16 until the equal share of
    what is left is smaller."""
    units = drain(Units(np.arange(5000), "auto", workers=100), seconds=0.01)
    floor = min(math.ceil(README_ANSWER_SECONDS / (README_WAIT_SHARE * 0.01)), 16)
    sizes = [len(u) for u in units]
    assert floor == 16 and min(sizes[1:50]) >= floor  # early: the floor, not the guided 13 down to 12
    assert sizes[0] == 13  # before any unit's time is known: 5,000 / (4 x 100), rounded up
    assert sizes[1:] == readme_sizes(5000 - 13, 100, floor)  # late: an equal share of what is left, down to 1
    assert sum(sizes) == 5000 and sizes[-1] == 1


def test_unit_size_auto_or_a_positive_integer_in_the_spec():
    assert specs.from_dict({"evaluation": {"unit_size": "auto"}}).evaluation.unit_size == "auto"
    assert specs.from_dict({}, {"evaluation.unit_size": "auto"}).evaluation.unit_size == "auto"
    assert specs.from_dict({}, {"evaluation.unit_size": "8"}).evaluation.unit_size == 8
    assert specs.from_dict({}).evaluation.unit_size == 4
    for bad, line in ((0, 'evaluation.unit_size: 0 is not valid; expected an integer >= 1 or "auto"'),
                      ("big", "evaluation.unit_size: 'big' is not valid; expected an integer or \"auto\""),
                      (2.5, "evaluation.unit_size: 2.5 is not valid; expected an integer or \"auto\"")):
        with pytest.raises(UserError) as exc:
            specs.from_dict({"evaluation": {"unit_size": bad}})
        assert str(exc.value) == line


TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


def test_auto_in_one_process_and_in_a_slurm_dry_run(tmp_path, monkeypatch, capsys):
    from losslandscape.frontends import cli

    (tmp_path / "tinyscale.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    args = ["--model.name=tinyscale:build", "--data.max_samples=30", "--grid.x=-1:1:3", "--grid.y=-1:1:3",
            "--evaluation.device=cpu", "--evaluation.unit_size=auto"]
    assert cli.main(["submit", "--tasks", "2", "--dry-run", f"--output.surface={tmp_path / 'd.h5'}", *args]) == 0
    assert "9 pending points" in capsys.readouterr().out
    assert cli.main(["surface", f"--output.surface={tmp_path / 's.h5'}", *args]) == 0
    import h5py

    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_done"][...].all()


@pytest.mark.slow
def test_the_coordinator_with_16_stand_in_workers_under_mpirun(tmp_path):
    """Every point handed out once (the workers' records), fixed and auto units, flat out and
    with 5 ms points; the stand-ins import no torch."""
    cmd = mpirun(17) + [sys.executable, "-c",
                        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tools.coordsim import main; "
                        " rc = main(sys.argv[1:]); "
                        "assert 'torch' not in sys.modules or __import__('mpi4py.MPI').MPI.COMM_WORLD.rank == 0, "
                        "'a stand-in imported torch'; sys.exit(rc)",
                        "--record", str(tmp_path / "rec"), "--out", str(tmp_path / "r.json"),
                        "--run", "3:0:20", "--run", "auto:0.005:10"]
    proc = launch(cmd, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fixed, auto = json.loads((tmp_path / "r.json").read_text())
    for r in (fixed, auto):
        assert r["workers"] == 16 and r["lost"] == 0 and r["duplicated"] == 0 and r["error"] is None
        assert not r["stopped"] and r["requests"] == r["units"] + 16
    assert fixed["points"] == 320 and fixed["units"] == math.ceil(320 / 3) and fixed["largest_unit"] == 3
    assert auto["points"] == 160 and auto["units"] < 160 and auto["largest_unit"] > 1
    # the simulator's own "lost" and "duplicated" checked here from the workers' records of each run
    for run, result in (("run_0", fixed), ("run_1", auto)):
        records = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec" / run).glob("worker_*.json"))]
        units = [unit for rec in records for unit in rec["units"]]
        handed = sorted(p for unit in units for p in unit)
        assert len(records) == 16 and handed == list(range(result["points"])), run  # none lost, none twice
        assert len(units) == result["units"] and max(map(len, units)) == result["largest_unit"], run
    sizes = sorted((len(u) for rec in records for u in rec["units"]), reverse=True)
    assert sizes[0] <= 16 and sizes[-1] == 1  # auto: at most 16, single points at the end
