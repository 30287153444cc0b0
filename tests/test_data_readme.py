"""The README's sentences on what a run makes and costs (issue 30): output folders are made, the
disk a surface takes (float32 directions, 4 bytes per moved parameter each, 42 bytes a grid
point, and the Python interface's copy of the weights), and streamed data moves the weights once
per batch per point. Each is measured here on a real run."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import losslandscape as ll
from losslandscape.frontends import cli

POINT_BYTES = 42  # five float64 datasets (loss and accuracy of two splits, seconds) and two uint8 done flags
SLACK = 4 * 1024  # HDF5's allocation of the datasets' object headers
FILE_OVERHEAD = 256 * 1024  # HDF5's own structures and the attributes (spec, identity, versions): a
# fixed amount, which differs between machines (15 kB here, 71 kB on CI), so the per-parameter and
# per-point costs are measured as differences between two files


def data(n: int = 12):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def wide(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 400), nn.ReLU(), nn.Linear(400, 10)).to(dtype)


def wide_as(width: int, dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_disk_a_surface_takes(tmp_path, dtype):
    """README: 4 bytes per moved parameter and direction (float32 whatever the weights' dtype), 42
    bytes a grid point, and beside a Python call's file its weights (`<out>.model.pt`)."""
    def size(model, name, **grid) -> tuple[int, int]:
        ll.compute_surface(model, data(), out=tmp_path / name, threads=1, **grid)
        return os.path.getsize(tmp_path / name), sum(p.numel() for p in model.parameters())

    model = wide(dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    big, params = size(model, "s.h5", x="-1:1:7", y="-1:1:5")
    small, params_small = size(wide_as(100, dtype), "narrow.h5", x="-1:1:7", y="-1:1:5")
    finer, _ = size(model, "fine.h5", x="-1:1:31", y="-1:1:31")
    # each moved parameter: 4 bytes in each of two directions; each grid point 42 bytes
    assert abs((big - small) - 2 * 4 * (params - params_small)) <= SLACK, (big, small, params, params_small)
    assert abs((finer - big) - POINT_BYTES * (31 * 31 - 35)) <= SLACK, (finer, big)
    assert 2 * 4 * params + POINT_BYTES * 35 <= big <= 2 * 4 * params + POINT_BYTES * 35 + FILE_OVERHEAD, big
    copy = os.path.getsize(tmp_path / "s.h5.model.pt")
    assert weight_bytes <= copy <= weight_bytes + 16 * 1024, (copy, weight_bytes)
    # a 1-D curve stores one direction
    curve, _ = size(model, "c.h5", x="-1:1:7")
    assert abs((big - curve) - 4 * params - POINT_BYTES * (35 - 7)) <= SLACK, (big, curve)


def test_output_folders_are_made(tmp_path, monkeypatch, capsys):
    """README: the folders of output.surface (`out=` in Python) and of `render --out` are made."""
    monkeypatch.chdir(tmp_path)
    s = ll.compute_surface(wide(), data(), x="-1:1:3", out=tmp_path / "a" / "b" / "s.h5", threads=1)
    assert s.train_loss.shape == (3,)
    args = ["surface", "--data.max_samples=8", "--grid.x=-1:1:3", "--model.name=resnet20", "--evaluation.threads=1",
            f"--output.surface={tmp_path / 'c' / 'd' / 's.h5'}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "c" / "d" / "s.h5").is_file()
    assert cli.main(["render", str(tmp_path / "c" / "d" / "s.h5"), "--out", str(tmp_path / "e" / "f")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "e" / "f").iterdir())


SEEN: list[tuple[float, float]] = []  # module-level: the engine works on a copy of the model


class Recorder(nn.Module):
    """A linear model that notes, at every forward pass, its first input value (which batch) and
    its weights (which point)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        SEEN.append((float(x[0, 0]), float(self.lin.weight.detach().double().sum())))
        return self.lin(x)


class CountingLoader:
    """A DataLoader that counts how often it is read from the start."""

    def __init__(self, loader):
        self.loader, self.reads = loader, 0

    def __iter__(self):
        self.reads += 1
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


@pytest.mark.parametrize("how", ["held", "too big", "tensors"])
def test_streamed_data_moves_the_weights_once_per_point_where_a_unit_fits(tmp_path, how, caplog):
    """README: a unit of U points reads its B streamed batches once; where they fit in
    evaluation.cache_bytes the weights move U times (points outer), else U x B times (data outer,
    points inner), and the log says which; tensors in memory move them U times. The values are
    those of a plain forward pass of the moved model, whichever way."""
    SEEN.clear()
    model, (x, y) = Recorder(), data(24)
    loader = CountingLoader(DataLoader(TensorDataset(x, y), batch_size=8))
    given = (x, y) if how == "tensors" else loader
    cache = {"held": 1 << 30, "too big": 8 * 64 * 4 + 100, "tensors": 1 << 30}[how]  # 1.2 batches
    caplog.set_level("INFO", logger="losslandscape")
    s = ll.compute_surface(model, given, x="-1:1:5", out=tmp_path / "s.h5", threads=1, batch_size=8, unit_size=5,
                           fold_batchnorm=False, cache_bytes=cache)
    grid = SEEN[-15:]  # 3 batches x 5 points, after the first batch at the centre (checks before the file)
    batches = [float(x[k, 0]) for k in (0, 8, 16)]
    moves = sum(1 for a, b in zip(grid, grid[1:]) if a[1] != b[1]) + 1
    if how == "too big":
        assert [b for b, _ in grid] == [b for b in batches for _ in range(5)]  # each batch at every point in turn
        assert moves == 15
        assert "its batches pass evaluation.cache_bytes = 2,148 after 2 batches" in caplog.text
        assert "weights move once per batch per point" in caplog.text
    else:
        assert [b for b, _ in grid] == batches * 5  # each point over every batch in turn
        assert moves == 5
        if how == "held":
            assert "train is streamed: a unit holds its 3 batches" in caplog.text
            assert "the weights move once per point" in caplog.text
    if how != "tensors":  # a unit reads the loader once: a second unit, one more reading
        reads = []
        for n, out in ((5, "one.h5"), (10, "two.h5")):
            before = loader.reads
            ll.compute_surface(model, loader, x=f"-1:1:{n}", out=tmp_path / out, threads=1, batch_size=8,
                               unit_size=5, fold_batchnorm=False, cache_bytes=cache)
            reads.append(loader.reads - before)
        assert reads[1] - reads[0] == 1, reads
    assert len({w for _, w in grid}) == 5
    with h5py.File(tmp_path / "s.h5", "r") as f:
        direction = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
    base, plain = Recorder().lin, nn.Linear(64, 10).double()
    for k, a in enumerate(np.linspace(-1, 1, 5)):
        with torch.no_grad():
            for name, p in plain.named_parameters():
                p.copy_(getattr(base, name).double() + a * direction.get(f"lin.{name}", torch.zeros(p.shape)).double())
            want = torch.nn.functional.cross_entropy(plain(x.double()), y).item()
        assert s.train_loss[k] == pytest.approx(want, rel=1e-5), (k, how)
