"""The run driver's shape (issue #28, item 1): every work implements the whole `Work`
protocol (the driver asks nothing of a work by `hasattr`), the MPI transport knows nothing of
works or torch, and the scheduler is pure.

The driver's behaviour (one process, mpirun, signals, failures) is tested end to end in
test_surface.py, test_mpi.py, test_failures.py and test_hessmap.py.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import numpy as np
import pytest

from losslandscape.numerics.grid import split_units
from losslandscape.numerics.schedule import AUTO_SERIAL_UNIT, Units, resolve_unit_size
from losslandscape.run import driver
from losslandscape.run.hessianmaps import HessianWork
from losslandscape.run.work import SurfaceWork, Work

from helpers import REPO

PROTOCOL = [name for name, member in vars(Work).items()
            if not name.startswith("_") and inspect.isfunction(member)]


def test_the_protocol_names_every_step_the_driver_calls():
    assert set(PROTOCOL) == {"plan", "make", "collective", "create", "load", "prepare", "attach", "done", "point",
                             "unit_values", "writer", "finished"}
    called = {node.attr for node in ast.walk(ast.parse(inspect.getsource(driver)))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "work"}
    assert called - {"label", "unit_size", "ranks_per_model"} <= set(PROTOCOL), called


@pytest.mark.parametrize("cls", [SurfaceWork, HessianWork])
def test_every_work_implements_the_whole_protocol(cls):
    def shape(f):  # how many parameters; the names of those with defaults (the driver may name them)
        ps = inspect.signature(f).parameters.values()
        return len(ps), [p.name for p in ps if p.default is not inspect.Parameter.empty]

    for name in PROTOCOL:
        want, have = shape(getattr(Work, name)), shape(getattr(cls, name))
        assert have == want, f"{cls.__name__}.{name} takes {have}, Work.{name} {want}"


def test_the_driver_asks_no_work_by_hasattr():
    tree = ast.parse(inspect.getsource(driver))
    asked = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
             and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "work"]
    assert asked == []


def test_the_transport_and_the_scheduler_import_no_torch_and_no_work():
    code = ("import sys; import losslandscape.run.distributed, losslandscape.numerics.schedule; "
            "bad = [m for m in ('torch', 'h5py', 'losslandscape.run.work', 'losslandscape.run.driver') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.strip()
    assert out == "[]"
    code = "import sys; import losslandscape.numerics.schedule; print('mpi4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPO).stdout.strip() == "False"


def test_one_process_takes_fixed_units_of_the_spec_or_four_for_auto():
    pending = np.array([8, 0, 4, 2, 6, 1, 3, 5, 7, 9], dtype=np.int64)
    assert resolve_unit_size(3) == 3 and resolve_unit_size("auto") == AUTO_SERIAL_UNIT == 4
    units = split_units(pending, resolve_unit_size("auto"))
    assert [u.tolist() for u in units] == [[8, 0, 4, 2], [6, 1, 3, 5], [7, 9]]
    fixed = Units(pending, 3, workers=2)
    handed = []
    while fixed:
        handed.append(fixed.popleft().tolist())
    assert handed == [[8, 0, 4], [2, 6, 1], [3, 5, 7], [9]]


def test_a_signal_sets_the_stop_flag_and_the_old_handler_comes_back():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    stop = driver.StopFlag()
    with stop.installed():
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
