"""The same data gives the same answer whichever way it comes (issue 30, item 5): (inputs,
targets) tensors keep their dtypes as a Dataset's batches do, and the model gets its floating
inputs in its own floating dtype (that of its first floating parameter), on both paths. A float64
model is checked against a plain float64 forward pass of the moved model; float32 jobs keep their
values bit for bit; float class targets are one rule (refused by cross_entropy) on both paths."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import losslandscape as ll
from losslandscape.errors import UserError

GRID = "-1:1:5"


def data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(24, 2, 6, 6, generator=gen, dtype=torch.float64).to(dtype), torch.randint(0, 3, (24,), generator=gen)


def conv(dtype) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return net.to(dtype).eval()


def run(model, given, path, **options):
    return ll.compute_surface(model, given, x=GRID, out=path, threads=1, batch_size=8, **options)


def plain_float64(model: nn.Module, surface, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Mean cross-entropy at each x of GRID: the file's direction added to a float64 copy, in float64."""
    with h5py.File(surface, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).double() for k in f["directions/x"]}
    base = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = []
    for a in np.linspace(-1, 1, 5):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(base[k] + float(a) * dx[k])
            out.append(float(F.cross_entropy(model(x), y)))
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(base[k])
    return np.array(out)


def test_a_float64_model_gives_the_same_values_from_tensors_and_from_a_dataset(tmp_path):
    model, (x, y) = conv(torch.float64), data()
    tensors = run(model, (x, y), tmp_path / "t.h5")  # refused before: the inputs were made float32
    loader = run(model, DataLoader(TensorDataset(x, y), batch_size=8), tmp_path / "d.h5")
    assert np.array_equal(tensors.train_loss, loader.train_loss)
    assert np.array_equal(tensors.train_acc, loader.train_acc)
    np.testing.assert_allclose(tensors.train_loss, plain_float64(model, tmp_path / "t.h5", x, y), rtol=1e-12)


def test_a_bf16_model_takes_its_own_inputs_and_float32_ones_the_same_way(tmp_path):
    model, (x, y) = conv(torch.bfloat16), data(torch.bfloat16)
    own = run(model, (x, y), tmp_path / "bf16.h5")  # refused before: "Input type (float) and bias type (BFloat16)"
    from_float32 = run(model, (x.float(), y), tmp_path / "f32.h5")  # bf16 values, given as float32
    loader = run(model, DataLoader(TensorDataset(x.float(), y), batch_size=8), tmp_path / "d.h5")
    assert np.isfinite(own.train_loss).all()
    assert np.array_equal(own.train_loss, from_float32.train_loss)
    assert np.array_equal(own.train_loss, loader.train_loss)


def test_float32_models_keep_their_values_bit_for_bit(tmp_path):
    """float64 arrays for a float32 model are rounded to float32, as `.float()` did before: the same
    bits as the same data given as float32, from tensors and now from a Dataset too."""
    model, (x, y) = conv(torch.float32), data()
    as_float32 = run(model, (x.float(), y), tmp_path / "a.h5")
    as_float64 = run(model, (x, y), tmp_path / "b.h5")
    loader = run(model, DataLoader(TensorDataset(x, y), batch_size=8), tmp_path / "c.h5")  # refused before
    assert np.array_equal(as_float32.train_loss, as_float64.train_loss)
    assert np.array_equal(as_float32.train_loss, loader.train_loss)
    assert np.array_equal(as_float32.train_acc, loader.train_acc)


def test_float_class_targets_are_one_rule_for_tensors_and_datasets(tmp_path):
    """Class ids given as floats (0.0, 1.0, ...) were taken from tensors and refused from a Dataset:
    both are now the same one-line error, and nothing is left behind."""
    model, (x, y) = conv(torch.float32), data(torch.float32)
    errors = []
    for given in ((x, y.float()), DataLoader(TensorDataset(x, y.float()), batch_size=8)):
        with pytest.raises(UserError) as err:
            run(model, given, tmp_path / "s.h5")
        errors.append(str(err.value))
        assert not (tmp_path / "s.h5").exists()
    assert errors[0] == errors[1] and "\n" not in errors[0], errors
    assert "cross_entropy needs class indices, the targets are torch.float32" in errors[0]


TRAINABLE = '''
import torch


def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(72, 3))


def data(split):
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randn(16, 2, 6, 6, generator=gen, dtype=torch.float64).numpy(), torch.randint(0, 3, (16,), generator=gen)
'''


def test_training_takes_float64_arrays_for_a_float32_model(tmp_path, monkeypatch):
    """The `train` verb reads the same tensors, now kept float64: they are given to the float32
    model in its dtype (they were made float32 when read before)."""
    from losslandscape import spec as specs
    from losslandscape.numerics.train import train

    (tmp_path / "trainable.py").write_text(TRAINABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = specs.from_dict({"model": {"name": "trainable:build"}, "data": {"name": "trainable:data"},
                            "train": {"epochs": 1, "batch_size": 8, "out_dir": str(tmp_path / "run")},
                            "evaluation": {"device": "cpu"}})
    written = train(spec, torch.device("cpu"))
    assert [p.name for p in written] == ["model_0.pt", "model_1.pt"]
