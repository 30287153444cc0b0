"""The README's examples run as they are written: its model and data factories."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import BIN, REPO


def readme_blocks() -> dict[str, str]:
    """{file name: code} of the README's python blocks that open with '# <name>.py'."""
    text = (REPO / "README.md").read_text()
    return {m.group(1): m.group(0).split("\n", 1)[1]
            for m in re.finditer(r"# (\w+\.py)\n.*?(?=```)", text, re.S)}


def test_the_readme_factories_make_a_surface(tmp_path):
    blocks = readme_blocks()
    assert {"mynet.py", "mydata.py"} <= set(blocks)
    for name in ("mynet.py", "mydata.py"):
        (tmp_path / name).write_text(blocks[name])
    sys.path.insert(0, str(tmp_path))
    try:
        import mydata
        import mynet
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    model = mynet.build().eval()
    torch.save(model.state_dict(), tmp_path / "mynet.pt")
    (tmp_path / "job.toml").write_text('''
[model]
name = "mynet:build"
checkpoint = "mynet.pt"
[data]
name = "mydata:load"
splits = ["train", "test"]
[grid]
x = "-1:1:3"
[evaluation]
device = "cpu"
[output]
surface = "s.h5"
''')
    proc = subprocess.run([str(BIN / "losslandscape"), "surface", "job.toml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_done"][...].all() and f["test_done"][...].all()
        loss = f["test_loss"][1]  # x = 0: the checkpoint itself
    x, y = mydata.load("test")
    with torch.no_grad():
        want = F.cross_entropy(model(x).double(), y).item()
    assert loss == pytest.approx(want, rel=1e-5)
