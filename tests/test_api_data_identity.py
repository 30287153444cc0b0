"""Each Python call evaluates its own data (issue 30): the interface serves a call's data under a
name made of its digest, and the loaded splits are cached by name in the process, so two calls
whose data share a digest (a stream is identified by its length and first item) must not get
the earlier call's data. Checked against plain loops over the moved model."""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import losslandscape as ll

GRID = "-1:1:3"


class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, inputs):
        return self.lin(inputs)


class Pairs(Dataset):
    """(x, y) items; only the items after the first differ between the two sets."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(12, 4, generator=g)
        self.y = torch.randint(0, 3, (12,), generator=g)
        self.x[0], self.y[0] = torch.ones(4), 1  # the same first item in both

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def plain_losses(model, surface, x, y) -> np.ndarray:
    with h5py.File(surface, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
    out = []
    for a in np.linspace(-1, 1, 3):
        net = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.add_(float(a) * dx[name])
            out.append(float(F.cross_entropy(net(x), y)))
    return np.array(out)


def test_two_streams_with_the_same_first_item_and_length_are_each_evaluated(tmp_path):
    torch.manual_seed(0)
    model = Plain().eval()
    first, second = Pairs(1), Pairs(2)
    assert not torch.equal(first.x, second.x)
    a = ll.compute_surface(model, first, x=GRID, out=tmp_path / "a.h5", threads=1, batch_size=4)
    b = ll.compute_surface(model, second, x=GRID, out=tmp_path / "b.h5", threads=1, batch_size=4)
    np.testing.assert_allclose(a.values["train_loss"], plain_losses(model, tmp_path / "a.h5", first.x, first.y),
                               rtol=1e-5)
    np.testing.assert_allclose(b.values["train_loss"], plain_losses(model, tmp_path / "b.h5", second.x, second.y),
                               rtol=1e-5)


def test_dict_batches_and_tuple_batches_of_the_same_tensors_are_other_data(tmp_path):
    torch.manual_seed(0)
    model = Plain().eval()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    as_dicts = [{"inputs": x[:4], "labels": y[:4]}, {"inputs": x[4:], "labels": y[4:]}]  # keys in tuple order
    as_tuples = [(x[:4], y[:4]), (x[4:], y[4:])]
    ll.compute_surface(model, as_dicts, x=GRID, out=tmp_path / "d.h5", threads=1, input_keys=["inputs"])
    t = ll.compute_surface(model, as_tuples, x=GRID, out=tmp_path / "t.h5", threads=1)
    np.testing.assert_allclose(t.values["train_loss"], plain_losses(model, tmp_path / "t.h5", x, y), rtol=1e-5)
    with h5py.File(tmp_path / "d.h5", "r") as fd, h5py.File(tmp_path / "t.h5", "r") as ft:
        names = [json.loads(f.attrs["spec"])["data"]["name"] for f in (fd, ft)]
    assert names[0] != names[1], names
