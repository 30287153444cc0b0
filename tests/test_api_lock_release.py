"""A failed call of the Python interface lets go of its output at once: the file closed and its
write lock released when the exception leaves the call, not when the exception is collected (a
notebook keeps its last traceback, and so everything the failed call held, until it restarts)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest
import torch

import losslandscape as ll
from losslandscape.surfacefile.lock import lock_path

X, Y = torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3


class Breaks(torch.nn.Module):
    """A model that fails once `broken` is set (the engine takes a copy of it at each call)."""

    def __init__(self):
        super().__init__()
        self.net, self.broken = torch.nn.Linear(8, 3), False

    def forward(self, x):
        if self.broken:
            raise RuntimeError("this model is broken")
        return self.net(x)


SECOND = textwrap.dedent("""
    import sys, torch
    import losslandscape as ll
    from losslandscape.surfacefile import lock
    lock.acquire(sys.argv[2], "a second process", "test")  # the Hessian maps' surface: its lock is free
    X, Y = torch.randn(24, 8, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3
    s = ll.compute_surface(torch.nn.Linear(8, 3), train=(X, Y), x="-1:1:3", out=sys.argv[1], device="cpu")
    print("done", s.fraction_done["train"])
""")


@pytest.mark.slow  # a second Python process: about 5 s
def test_a_failed_call_kept_alive_holds_no_lock(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ll.UserError, match="first batch of train") as failed:  # 5 features, the model takes 8
        ll.compute_surface(torch.nn.Linear(8, 3), train=(torch.randn(24, 5), Y), x="-1:1:3", out=out, device="cpu")

    maps = tmp_path / "m.h5"
    model = Breaks()
    ll.compute_surface(model, train=(X, Y), x="-1:1:3", y="-1:1:3", out=maps, device="cpu")
    model.broken = True
    with pytest.raises(ll.UserError, match="this model is broken") as failed_maps:
        ll.compute_hessian(maps, samples=8)

    # kept alive, as a notebook keeps sys.last_value: the traceback holds the failed calls' frames
    sys.last_value = failed_maps.value
    gc.collect()
    assert failed.value.__traceback__ is not None and failed_maps.value.__traceback__ is not None
    assert not lock_path(out).exists() and not lock_path(maps).exists()
    proc = subprocess.run([sys.executable, "-c", SECOND, str(out), str(maps)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done", "1.0"]
    del sys.last_value


def test_a_failed_first_call_leaves_no_folder_it_made(tmp_path):
    out = tmp_path / "new" / "deeper" / "s.h5"
    with pytest.raises(ll.UserError, match="first batch of train"):  # 5 features, the model takes 8
        ll.compute_surface(torch.nn.Linear(8, 3), train=(torch.randn(24, 5), Y), x="-1:1:3", out=out, device="cpu")
    assert list(tmp_path.iterdir()) == []
    s = ll.compute_surface(torch.nn.Linear(8, 3), train=(X, Y), x="-1:1:3", out=out, device="cpu")
    assert s.fraction_done["train"] == 1.0 and out.is_file()
