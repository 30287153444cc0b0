"""Ctrl-C in the Python interface follows Python's convention: the call stops after the current
point, closes its file, releases its lock and raises KeyboardInterrupt (a script does not carry
on with a partial surface as if it were whole, and ends as a Ctrl-C'd process ends), the partial
surface on the exception (`.surface`) and in the file, which the same call resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import losslandscape as ll
from losslandscape.surfacefile import lock as writelock

from helpers import ctrl_c_as_at_a_terminal

# the model, its data and the grid, the same in the child and in the test (which resumes it)
SETUP = textwrap.dedent("""
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    data = (torch.randn(30, 8), torch.arange(30) % 3)
    GRID = dict(x="-1:1:7", y="-1:1:7", unit_size=1, device="cpu")
""")

CHILD = SETUP + textwrap.dedent("""
    import sys, time
    import losslandscape as ll

    def seen(exc_type, exc, tb):  # a script's last words: what the interrupt carries
        print("surface", exc.surface.fraction_done["train"], flush=True)
        sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = seen
    def slowly(*_):  # one pass a point
        print("pass", flush=True)
        time.sleep(0.1)

    net.register_forward_hook(slowly)
    ll.compute_surface(net, train=data, out=sys.argv[1], **GRID)
    print("carried on", flush=True)
""")


@pytest.mark.slow  # a child Python process: about 5 s
def test_ctrl_c_raises_keyboard_interrupt_after_closing_the_file(tmp_path):
    out = tmp_path / "s.h5"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=ctrl_c_as_at_a_terminal)
    passes = 0
    for line in child.stdout:  # the folding check, then a pass a point
        passes += line == "pass\n"
        if passes == 4:
            child.send_signal(signal.SIGINT)
            break
    rest, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGINT, err  # as an uncaught KeyboardInterrupt ends Python
    assert "KeyboardInterrupt: stopped by Ctrl-C" in err and "carried on" not in rest
    assert not writelock.lock_path(out).exists() and writelock.busy(out) is None

    partial = ll.open_surface(out)
    done = partial.fraction_done["train"]
    assert 0 < done < 1 and f"surface {done}" in rest  # what the exception carried is what the file holds
    same: dict = {}
    exec(SETUP, same)
    whole = ll.compute_surface(same["net"], train=same["data"], out=out, **same["GRID"])  # computes the rest
    assert whole.fraction_done["train"] == 1.0
    computed = ~np.isnan(partial.train_loss)
    np.testing.assert_array_equal(whole.train_loss[computed], partial.train_loss[computed])


class PressAt(torch.nn.Module):
    """A tiny classifier whose k-th forward pass sends `signum` to this process (Ctrl-C as a user
    presses it, or a time limit's SIGTERM). The passes are counted on the class: the engine runs a
    copy."""

    calls = 0

    def __init__(self, *k: int, signum: int = signal.SIGINT):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, 3)
        self.k, self.signum = k, signum
        PressAt.calls = 0

    def forward(self, x):
        PressAt.calls += 1
        for _ in range(self.k.count(PressAt.calls)):  # a pass named twice: pressed twice
            os.kill(os.getpid(), self.signum)
        return self.net(x)


def test_streamed_data_drops_the_unit_being_evaluated(tmp_path):
    # a unit of 3 points reads the 3 batches once, each batch evaluated at its 3 points: 9 passes a
    # unit, after a pass or two that try the first batch; pass 14 is in the second unit, before
    # its last batch
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(30, 8), torch.arange(30) % 3),
                                       batch_size=10)
    with pytest.raises(KeyboardInterrupt) as stopped:
        ll.compute_surface(PressAt(14), train=data, x="-1:1:5", y="-1:1:3", out=tmp_path / "s.h5", unit_size=3,
                           device="cpu")
    assert stopped.value.surface.train_loss is not None
    done = np.flatnonzero(~np.isnan(stopped.value.surface.train_loss.ravel()))
    assert len(done) == 3  # the first unit; the second, stopped before its last batch, is dropped
    assert PressAt.calls <= 14 + 2  # the current batch finished (at its 3 points), not the unit
    assert not writelock.lock_path(tmp_path / "s.h5").exists()


def test_sigterm_returns_the_partial_surface(tmp_path, caplog):
    # SIGTERM (a job's time limit) is no Ctrl-C: the call returns, and fraction_done tells a partial surface
    s = ll.compute_surface(PressAt(4, signum=signal.SIGTERM), train=(torch.randn(30, 8), torch.arange(30) % 3),
                           x="-1:1:5", y="-1:1:3", out=tmp_path / "s.h5", unit_size=1, device="cpu")
    assert 0 < s.fraction_done["train"] < 1
    assert "holds the points computed so far" in caplog.text


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt) as stopped:  # the second, within the point the first lets finish
        ll.compute_surface(PressAt(6, 6), train=(torch.randn(30, 8), torch.arange(30) % 3), x="-1:1:5", y="-1:1:3",
                           out=out, unit_size=1, device="cpu")
    assert PressAt.calls == 6
    assert stopped.value.args == ()  # Python's own, raised in the pass, not the one after a point
    assert 0 < stopped.value.surface.fraction_done["train"] < 1  # the points written before stay
    assert not writelock.lock_path(out).exists()
