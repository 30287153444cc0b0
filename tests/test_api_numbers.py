"""The Python interface's numbers on a model given as an object, against independent computations.

The weights `ll.compute_surface` stores beside the file (the model's own state dict), a
BatchNorm fold that fails its check (plain forward passes of the moved model), the Hessian maps
(the dense Hessian's extreme eigenvalues). Models are tiny CNNs on the 8x8 digits, grids 3x3 or less.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losslandscape as ll
from losslandscape.inputs import data as datasets
from losslandscape import spec as specs

SAMPLES = 40


def digits(split: str = "train", n: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    return datasets.load_split(specs.from_dict({"data": {"max_samples": n}}).data, split)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TinyBN(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear, with running statistics that are not the identity."""

    def __init__(self, channels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4 * channels, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.head(self.pool(F.relu(self.bn(self.conv(x)))).flatten(1))


def directions(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    with h5py.File(path, "r") as f:
        return ({k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]},
                {k: torch.from_numpy(f["directions/y"][k][...]) for k in f["directions/y"]})


def moved_state(model: nn.Module, dx: dict, dy: dict, a: float, b: float) -> dict[str, torch.Tensor]:
    """The model's state dict with every entry the directions name moved to theta + a*dx + b*dy."""
    return {k: v + a * dx[k] + b * dy[k] if k in dx else v for k, v in model.state_dict().items()}


# --- 1. the Python interface keeps the weights it was given beside the surface ----------------

def test_compute_surface_stores_exactly_the_given_weights_and_refuses_others(tmp_path):
    """README, "In a notebook": "the weights it was given are stored beside it as `s.h5.model.pt`,
    so the file's identity pins them ... a call with other weights ... is refused"."""
    model = TinyBN()
    out = tmp_path / "s.h5"
    s = ll.compute_surface(model, train=digits(), x="-1:1:3", out=out, device="cpu", threads=1)
    assert s.fraction_done["train"] == 1.0
    stored = tmp_path / "s.h5.model.pt"
    assert stored.is_file()
    saved = torch.load(stored, map_location="cpu", weights_only=True)
    want = model.state_dict()
    assert list(saved) == list(want)  # every parameter and buffer, num_batches_tracked included
    for k, v in want.items():
        assert saved[k].dtype == v.dtype and torch.equal(saved[k], v), k
    before = {p: sha(p) for p in (out, stored)}

    for change in ("conv.weight", "bn.running_mean"):  # a parameter, and a buffer only the state dict has
        other = TinyBN()
        with torch.no_grad():
            other.state_dict()[change].view(-1)[0] += 1e-3
        with pytest.raises(ll.UserError, match=rf"^model: these weights are not the ones {out} was computed"):
            ll.compute_surface(other, train=digits(), x="-1:1:3", out=out, device="cpu", threads=1)
        assert {p: sha(p) for p in before} == before, change  # neither the surface nor the weights touched

    again = ll.compute_surface(TinyBN(), train=digits(), x="-1:1:3", out=out, device="cpu", threads=1)  # the same weights
    np.testing.assert_array_equal(again.train_loss, s.train_loss)



def test_a_call_leaves_torch_s_threads_and_tf32_settings_as_the_caller_had_them(tmp_path):
    """README, "In a notebook": the call leaves "torch's thread count and TF32 settings" as they
    were, though a run sets them (evaluation.threads, and precision = "fp32" forbids TF32)."""
    before = (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.set_num_threads(3)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        s = ll.compute_surface(TinyBN(), train=digits(), x="-1:1:2", y="-1:1:2", out=tmp_path / "s.h5", device="cpu",
                               threads=1)
        assert s.fraction_done["train"] == 1.0
        assert (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (
            3, True, True)
        ll.compute_hessian(tmp_path / "s.h5", samples=8, tol=0.1, device="cpu")
        assert (torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (
            3, True, True)
        with pytest.raises(ll.UserError):  # and when a call fails
            ll.compute_surface(TinyBN(), train=digits(), x="-1:1:3", out=tmp_path / "t.h5", device="cpu", threads=1,
                               batch_size=-1)
        assert torch.get_num_threads() == 3 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]


# --- 4. a BatchNorm fold that does not check out is evaluated unfolded -------------------------

class AliasedReLU(nn.Module):
    """conv -> BatchNorm, then the ReLU of a view of that output, added to the output itself.

    The fold's twin makes a ReLU in place when nothing else reads its input; here its input is
    a view, so in the twin the ReLU also overwrites the BatchNorm output that is added to it:
    the twin computes relu(h) + relu(h) instead of relu(h) + h. The fold check must catch it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.bn(self.conv(x))
        r = F.relu(h[:, :])
        return self.head(self.pool(r + h).flatten(1))

    def twin_forward(self, x):
        """What the broken twin computes."""
        r = F.relu(self.bn(self.conv(x)))
        return self.head(self.pool(r + r).flatten(1))


def test_a_fold_that_fails_its_check_is_evaluated_unfolded(tmp_path):
    """README, Performance: "the fold is checked against the unfolded model in fp32 ... and a model
    whose fold does not check out is evaluated unfolded; the log and the file's
    `batchnorm_folding` attribute say which". The values equal plain forward passes of the
    moved model, and not what the broken twin computes."""
    model = AliasedReLU().eval()
    out = tmp_path / "s.h5"
    x, y = digits()
    s = ll.compute_surface(model, train=(x, y), x="-1:1:3", y="-1:1:3", out=out, device="cpu", threads=1)
    with h5py.File(out, "r") as f:
        folding = f.attrs["batchnorm_folding"]
    assert folding.startswith("BatchNorm not folded: the folded twin changed the outputs"), folding
    assert "evaluated unfolded" in folding
    dx, dy = directions(out)
    probe = AliasedReLU().eval()
    for j, b in enumerate(s.y):
        for i, a in enumerate(s.x):
            probe.load_state_dict(moved_state(model, dx, dy, float(a), float(b)))
            with torch.no_grad():
                plain = probe(x).double()
                twin = probe.twin_forward(x).double()
            want = F.cross_entropy(plain, y).item()
            assert s.train_loss[j, i] == pytest.approx(want, rel=1e-5, abs=0), (a, b)
            assert s.train_acc[j, i] == pytest.approx(100.0 * (plain.argmax(1) == y).double().mean().item())
            assert abs(F.cross_entropy(twin, y).item() - want) > 1e-3 * want  # folded values would fail


# --- 10. the Hessian maps against dense Hessians --------------------------------------------------

def dense_hessian(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The dense float64 Hessian of the mean cross-entropy over (x, y) with respect to every
    parameter, at the state `state`, BatchNorm in eval mode."""
    model = model.double().eval()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    params = dict(model.named_parameters())
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    buffers = dict(model.named_buffers())

    def loss(flat):
        tensors = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, {**buffers, **tensors}, (x.double(),)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat, vectorize=True).numpy()


def test_hessian_maps_equal_the_extreme_eigenvalues_of_dense_hessians(tmp_path):
    """Strong version of the Hessian-map check in
    tests/test_api.py::test_trajectories_and_hessian_maps_from_python (finite, max >= min):
    `ll.compute_hessian`'s max_eig and min_eig at grid points against the extreme eigenvalues
    of the dense Hessian of the mean loss at the moved model, computed here."""
    model = TinyBN(channels=2)  # 114 parameters
    out = tmp_path / "s.h5"
    x, y = digits()
    ll.compute_surface(model, train=(x, y), x="0:1:2", y="-1:0:2", out=out, device="cpu", threads=1)
    m = ll.compute_hessian(out, tol=1e-6)
    assert m.eig["max"].shape == (2, 2)
    dx, dy = directions(out)
    extremes = []
    for i, j in ((0, 1), (1, 0)):  # the centre, and the corner x = 1, y = -1
        a, b = float(m.x[i]), float(m.y[j])
        eig = np.linalg.eigvalsh(dense_hessian(TinyBN(channels=2), moved_state(model, dx, dy, a, b), x, y))
        scale = np.abs(eig).max()
        assert m.eig["max"][j, i] == pytest.approx(eig[-1], abs=1e-4 * scale), (a, b, eig[[0, -1]])
        assert m.eig["min"][j, i] == pytest.approx(eig[0], abs=1e-4 * scale), (a, b, eig[[0, -1]])
        extremes.append((eig[0], eig[-1], scale))
    (lo0, hi0, s0), (lo1, hi1, s1) = extremes  # the points differ: a map of one value would fail
    assert abs(hi0 - hi1) > 1e-2 * max(s0, s1) and abs(lo0 - lo1) > 1e-2 * max(s0, s1), extremes
