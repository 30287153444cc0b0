"""A loss of the user's own that returns (sum, count[, correct]) with a real-valued count (a sum of
class weights): the stored loss is sum of sums / sum of counts, the accuracy sum of correct / sum
of counts (a weighted accuracy), checked against a plain loop over the batches with
torch's class-weighted cross-entropy; the Hessian divides by the same real count. A count that is
no weight (negative, NaN) is one line."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losslandscape as ll
from losslandscape.errors import UserError

WEIGHTS = [0.3, 1.7, 0.55]  # class weights: every batch's weight sum is fractional
BATCH = 16

LOSS_MODULE = f'''
import torch
import torch.nn.functional as F

W = torch.tensor({WEIGHTS})


def weighted(outputs, targets):
    """Class-weighted cross-entropy: (sum of w_y * loss, sum of w_y, sum of w_y over the correct)."""
    w = W.to(outputs.dtype)[targets]
    total = F.cross_entropy(outputs, targets, weight=W.to(outputs.dtype), reduction="sum")
    return total, w.sum(), (w * (outputs.argmax(1) == targets)).sum()


def negative(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="sum"), -0.5


def not_a_number(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="sum"), torch.tensor(float("nan"))
'''


@pytest.fixture
def wloss(tmp_path, monkeypatch):
    folder = tmp_path / "mod"
    folder.mkdir()
    (folder / "wloss.py").write_text(LOSS_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return "wloss"


def data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(60, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (60,), generator=gen)
    return x, y


def model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Linear(5, 3).to(dtype)


@torch.no_grad()
def by_hand(surface_path, net, x, y) -> tuple[list[float], list[float]]:
    """(loss, accuracy) at each x coordinate of a 1-D surface: the model moved by the file's direction
    (in float32, as the tool moves it), then a plain loop over batches of BATCH examples summing
    F.cross_entropy(weight=W, reduction="sum") and the weights of the targets (and of those classified
    correctly) in float64, divided once."""
    w = torch.tensor(WEIGHTS)
    with h5py.File(surface_path, "r") as f:
        coords = np.asarray(f["xcoordinates"])
        dx = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in f["directions/x"].items()}
    base = {k: v.detach().clone() for k, v in net.named_parameters()}
    losses, accs = [], []
    for a in coords:
        for name, p in net.named_parameters():
            p.copy_(base[name].float() + float(a) * dx[name] if name in dx else base[name])
        num = den = correct = 0.0
        for start in range(0, len(y), BATCH):
            out, t = net(x[start:start + BATCH]), y[start:start + BATCH]
            num += F.cross_entropy(out, t, weight=w, reduction="sum").double().item()
            den += w[t].double().sum().item()
            correct += w[t][out.argmax(1) == t].double().sum().item()
        losses.append(num / den)
        accs.append(100.0 * correct / den)
    return losses, accs


def test_a_real_valued_weight_sum_gives_the_weighted_mean_and_accuracy_in_memory_and_streamed(tmp_path, wloss):
    x, y = data()
    want_loss, want_acc = None, None
    for how, train in (("tensors", (x, y)),
                       ("loader", torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH))):
        out = tmp_path / f"{how}.h5"
        s = ll.compute_surface(model(), train=train, x="-1:1:5", out=out, threads=1, batch_size=BATCH,
                               loss=f"{wloss}:weighted")
        if want_loss is None:
            want_loss, want_acc = by_hand(out, model(), x, y)
        np.testing.assert_allclose(s.train_loss, want_loss, rtol=1e-6)
        np.testing.assert_allclose(s.train_acc, want_acc, rtol=1e-6)  # the loss sums its weights in float32
    # the weights matter: the unweighted mean is another number
    with torch.no_grad():
        assert abs(F.cross_entropy(model()(x), y).item() - want_loss[2]) > 1e-3


def test_the_hessian_of_a_weighted_loss_divides_by_the_real_weight_sum(wloss):
    """H v of sum over batches of the weighted sums / sum of the weights, against autograd on the
    whole data (float64)."""
    from losslandscape.numerics.hessian import HessianOperator

    x, y = data(torch.float64)
    net = model(torch.float64)
    op = HessianOperator(net, "all", x, y, loss=f"{wloss}:weighted", batch_size=BATCH)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.tensor(WEIGHTS).double()  # the loss's float32 weights
    names = [n for n, _ in net.named_parameters()]

    def mean_loss(*params):
        out = torch.func.functional_call(net, dict(zip(names, params)), (x,))
        return F.cross_entropy(out, y, weight=w, reduction="sum") / w[y].sum()

    params = tuple(p.detach() for p in net.parameters())
    tangents = tuple(t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in params]), params))
    _, hv = torch.autograd.functional.hvp(mean_loss, params, tangents)
    np.testing.assert_allclose(op.matvec(v).numpy(), torch.cat([h.reshape(-1) for h in hv]).numpy(), rtol=1e-10)


@pytest.mark.parametrize("fn, shown", [("negative", "count -0.5"), ("not_a_number", "count nan")])
def test_a_count_that_is_no_weight_is_one_line_and_leaves_nothing(tmp_path, wloss, fn, shown):
    out = tmp_path / "out" / "s.h5"
    with pytest.raises(UserError) as err:
        ll.compute_surface(model(), train=data(), x="-1:1:3", out=out, threads=1, loss=f"{wloss}:{fn}")
    line = str(err.value)
    assert "\n" not in line and f"{wloss}:{fn}" in line and shown in line and "expected a number >= 0" in line
    assert not out.exists() and not list(tmp_path.rglob("*.pt")), list(tmp_path.rglob("*"))
