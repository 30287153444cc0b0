"""Curvature numerics (losslandscape.numerics.hessian) against independent dense computations.

Small float64 models (an MLP and a CNN with eval-mode BatchNorm) on 64 random
samples: the dense Hessian of the mean loss comes from
`torch.autograd.functional.hessian` over the flattened parameters, with the
losses written out here from their definitions, and its spectrum from
`numpy.linalg.eigvalsh`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from losslandscape.numerics import hessian as hs
from losslandscape.inputs.losses import get_loss

N = 64


def make_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def make_cnn() -> nn.Module:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                # non-trivial running statistics and affine parameters
                m.running_mean.copy_(0.3 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model.train()  # the operator must switch to eval mode itself


def make_data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shape = (N, 8) if kind == "mlp" else (N, 1, 6, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)


def mean_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean loss, written out from its definition (not through losslandscape)."""
    if loss == "cross_entropy":
        return -outputs.log_softmax(dim=1)[torch.arange(len(targets)), targets].mean()
    probs = outputs.softmax(dim=1)
    onehot = torch.zeros_like(probs)
    onehot[torch.arange(len(targets)), targets] = 1.0
    return ((probs - onehot) ** 2).mean()  # mean over classes, then over samples


class Case:
    def __init__(self, kind: str, loss: str):
        self.kind, self.loss = kind, loss
        self.model = make_mlp() if kind == "mlp" else make_cnn()
        self.inputs, self.targets = make_data(kind)
        named = dict(self.model.named_parameters())
        self.names = list(named)
        flat = torch.cat([p.detach().reshape(-1) for p in named.values()])
        shapes = [p.shape for p in named.values()]
        sizes = [p.numel() for p in named.values()]

        def f(theta):
            ps = {k: t.view(s) for k, t, s in zip(self.names, torch.split(theta, sizes), shapes)}
            return mean_loss(torch.func.functional_call(self.model, ps, (self.inputs,)), self.targets, loss)

        training = self.model.training
        self.model.eval()
        self.f, self.theta = f, flat
        self.H = torch.autograd.functional.hessian(f, flat, vectorize=True).numpy()
        self.model.train(training)
        self.eigs = np.linalg.eigvalsh(self.H)
        self.radius = float(np.abs(self.eigs).max())
        self.offsets = dict(zip(self.names, np.cumsum([0] + sizes[:-1])))
        self.sizes = dict(zip(self.names, sizes))

    def op(self, **kw) -> hs.HessianOperator:
        kw.setdefault("params", "all")
        return hs.HessianOperator(self.model, inputs=self.inputs, targets=self.targets, loss=self.loss, **kw)

    def indices(self, names) -> np.ndarray:
        return np.concatenate([np.arange(self.offsets[k], self.offsets[k] + self.sizes[k]) for k in names])


CASES = [("mlp", "cross_entropy"), ("mlp", "mse"), ("cnn", "cross_entropy"), ("cnn", "mse")]
_cache: dict[tuple[str, str], Case] = {}


@pytest.fixture(params=CASES, ids=[f"{k}-{l}" for k, l in CASES])
def case(request) -> Case:
    if request.param not in _cache:
        _cache[request.param] = Case(*request.param)
    return _cache[request.param]


@pytest.fixture
def cnn() -> Case:
    if ("cnn", "cross_entropy") not in _cache:
        _cache[("cnn", "cross_entropy")] = Case("cnn", "cross_entropy")
    return _cache[("cnn", "cross_entropy")]


def test_reference_loss_is_evaluates_loss(case):
    """The dense reference's loss is the evaluator's (which computes in float32)."""
    case.model.eval()
    with torch.no_grad():
        out = case.model(case.inputs)
        total, count, _ = get_loss(case.loss)(out.float(), case.targets)
        assert count == N
        assert total.item() / N == pytest.approx(mean_loss(out, case.targets, case.loss).item(), rel=1e-5)
        assert hs.loss_sum(out, case.targets, get_loss(case.loss))[0].dtype == torch.float64
    case.model.train()


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_hvp_matches_dense_hessian(case, method):
    op = case.op(method=method)
    assert op.dim == case.H.shape[0] and op.names == case.names
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(op.dim)
        hv = op.matvec(torch.from_numpy(v))
        assert hv.dtype == torch.float64 and not hv.requires_grad and hv.grad_fn is None
        np.testing.assert_allclose(hv.numpy(), case.H @ v, rtol=0, atol=1e-10 * np.abs(case.H @ v).max())
    lin = op.as_linear_operator()
    assert lin.shape == case.H.shape and lin.dtype == np.float64
    v = rng.standard_normal(op.dim)
    np.testing.assert_allclose(lin.matvec(v), case.H @ v, rtol=0, atol=1e-10 * np.abs(case.H @ v).max())


@pytest.mark.parametrize("channels_last", [False, True])
def test_hvp_through_folded_batchnorm_is_the_models_own(channels_last):
    """The products run through the BatchNorm-folded twin (fold computed from the chosen parameters,
    BatchNorm's own included), with in-place ReLUs and channels-last weights and data: still the
    dense Hessian of the model as it is."""
    model = make_cnn()
    model[2], model[5] = nn.ReLU(), nn.ReLU()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    inputs, targets = make_data("cnn")
    named = dict(model.named_parameters())
    shapes, sizes = [p.shape for p in named.values()], [p.numel() for p in named.values()]

    def f(theta):
        ps = {k: t.view(s) for k, t, s in zip(named, torch.split(theta, sizes), shapes)}
        return mean_loss(torch.func.functional_call(model, ps, (inputs,)), targets, "cross_entropy")

    model.eval()
    H = torch.autograd.functional.hessian(f, torch.cat([p.detach().reshape(-1) for p in named.values()])).numpy()
    model.train()
    rng = np.random.default_rng(1)
    for options in ({}, {"keep_graph_bytes": 0}, {"method": "forward_over_reverse"}):
        op = hs.HessianOperator(model, "all", inputs, targets, **options)
        for _ in range(2):
            v = rng.standard_normal(op.dim)
            want = H @ v
            np.testing.assert_allclose(op.matvec(torch.from_numpy(v)).numpy(), want, rtol=0,
                                       atol=1e-10 * np.abs(want).max())
        assert op.folding.startswith("BatchNorm folded into 2 convolutions"), op.folding
        assert model.training and all(m.training for m in model.modules())
    assert hs.HessianOperator(model, "all", inputs, targets, fold_batchnorm=False)._twin is None


def test_batched_accumulation_equals_one_batch(cnn):
    v = torch.from_numpy(np.random.default_rng(1).standard_normal(cnn.H.shape[0]))
    whole = cnn.op(batch_size=N).matvec(v)
    for bs in (10, 0, 100):  # 10 leaves a ragged last batch; 0 is the device's default
        for method in ("double_backward", "forward_over_reverse"):
            torch.testing.assert_close(cnn.op(batch_size=bs, method=method).matvec(v), whole, rtol=1e-12, atol=1e-14)


def test_kept_graph_follows_the_weights_and_its_budget(cnn):
    """The first backward's graph is kept across products (a product is one backward through
    it), built again once the weights have moved in place, and never kept past its budget: every
    way gives the dense Hessian's product at the weights of the moment."""
    rng = np.random.default_rng(2)
    kept, fresh = cnn.op(), cnn.op(keep_graph_bytes=1)
    for _ in range(2):
        v = rng.standard_normal(kept.dim)
        for op in (kept, fresh):
            np.testing.assert_allclose(op.matvec(torch.from_numpy(v)).numpy(), cnn.H @ v, rtol=0,
                                       atol=1e-10 * np.abs(cnn.H @ v).max())
    assert kept._kept is not None and fresh._kept is None  # kept, and refused for 1 byte
    weight = cnn.model[0].weight
    delta = torch.zeros_like(cnn.theta)
    start = cnn.offsets["0.weight"]
    delta[start:start + weight.numel()] = 0.05
    training = cnn.model.training
    cnn.model.eval()
    moved = torch.autograd.functional.hessian(cnn.f, cnn.theta + delta, vectorize=True).numpy()
    cnn.model.train(training)
    v = rng.standard_normal(kept.dim)
    with torch.no_grad():
        weight.add_(0.05)  # a move in place, as the maps move the weights between points
    try:
        got = kept.matvec(torch.from_numpy(v)).numpy()
    finally:
        with torch.no_grad():
            weight.sub_(0.05)
    np.testing.assert_allclose(got, moved @ v, rtol=0, atol=1e-10 * np.abs(moved @ v).max())
    assert not np.allclose(moved @ v, cnn.H @ v, rtol=1e-3)  # the move changes the product


def test_model_left_untouched(cnn):
    """Eval mode for the product only; weights, running statistics, .grad and modes as they were."""
    model = cnn.model
    model.train()
    model[4].eval()  # a module in its own mode must keep it
    before = {k: t.clone() for k, t in model.state_dict().items()}
    op = cnn.op()
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    op.as_linear_operator().matvec(np.ones(op.dim))
    assert model.training and model[1].training and not model[4].training
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    model.train()


def test_params_weights_excludes_1d_tensors(cnn):
    weights = hs.hessian_params(cnn.model, "weights")
    assert list(weights) == [k for k, p in cnn.model.named_parameters() if p.dim() > 1]
    assert all(p.dim() > 1 for p in weights.values()) and len(weights) < len(cnn.names)
    assert all(w is p for w, p in zip(weights.values(), (dict(cnn.model.named_parameters())[k] for k in weights)))
    assert list(hs.hessian_params(cnn.model, "all")) == cnn.names
    with pytest.raises(ValueError):
        hs.hessian_params(cnn.model, "biases")

    op = cnn.op(params="weights")
    idx = cnn.indices(weights)
    assert op.names == list(weights) and op.dim == len(idx)
    sub = cnn.H[np.ix_(idx, idx)]
    v = np.random.default_rng(2).standard_normal(op.dim)
    np.testing.assert_allclose(op.matvec(torch.from_numpy(v)).numpy(), sub @ v,
                               rtol=0, atol=1e-10 * np.abs(sub @ v).max())
    # the same subset given as a dict or as a list of the live parameters
    for given in (weights, list(weights.values())):
        np.testing.assert_array_equal(cnn.op(params=given).matvec(torch.from_numpy(v)).numpy(),
                                      op.matvec(torch.from_numpy(v)).numpy())
    with pytest.raises(ValueError):
        cnn.op(params=[nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError):  # names are the model's own
        cnn.op(params={f"x{k}": p for k, p in weights.items()})
    # its extreme eigenvalues are those of the submatrix
    eigs = np.linalg.eigvalsh(sub)
    lam_max, lam_min = hs.extreme_eigenvalues(op)
    scale = np.abs(eigs).max()
    assert abs(lam_max - eigs[-1]) <= 1e-3 * scale and abs(lam_min - eigs[0]) <= 1e-3 * scale


def test_extreme_and_top_eigenvalues(case):
    op = case.op()
    lam_max, lam_min = hs.extreme_eigenvalues(op)
    assert abs(lam_max - case.eigs[-1]) <= 1e-3 * case.radius
    assert abs(lam_min - case.eigs[0]) <= 1e-3 * case.radius
    assert (lam_max, lam_min) == hs.extreme_eigenvalues(op)  # seeded: reproducible
    top = hs.top_eigenvalues(op, 4)
    assert top == sorted(top, reverse=True) and len(top) == 4
    np.testing.assert_allclose(top, case.eigs[::-1][:4], rtol=0, atol=1e-3 * case.radius)
    with pytest.raises(ValueError):
        hs.top_eigenvalues(op, op.dim)


def test_hutchinson_trace(case):
    trace, stderr = hs.hutchinson_trace(case.op(), samples=100, seed=0)
    true = float(np.trace(case.H))
    assert stderr > 0
    assert abs(trace - true) <= 3 * stderr, (trace, true, stderr)
    assert abs(true - case.eigs.sum()) <= 1e-9 * case.radius * len(case.eigs)


def test_spectral_density(case):
    op = case.op()
    n = op.dim
    probes = 8
    grid, density = hs.spectral_density(op, steps=30, probes=probes, seed=0, points=200)
    assert grid.shape == density.shape == (200,) and np.all(np.diff(grid) > 0) and np.all(density >= 0)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-12)
    # Ritz values lie within the spectrum (interlacing); the weights are a probability vector
    for nodes, weights in hs.stochastic_lanczos_quadrature(op, steps=30, probes=2, seed=0):
        assert len(nodes) == 30
        assert nodes.min() >= case.eigs[0] - 1e-8 * case.radius and nodes.max() <= case.eigs[-1] + 1e-8 * case.radius
        assert weights.sum() == pytest.approx(1.0) and np.all(weights >= 0)
    # the density's mean estimates trace/n; the estimator's spread for unit Gaussian probes
    mean = np.trapezoid(grid * density, grid)
    spread = np.sqrt(2 * (np.mean(case.eigs ** 2) - np.mean(case.eigs) ** 2) / (n + 2) / probes)
    assert abs(mean - np.trace(case.H) / n) <= 4 * spread + 1e-3 * case.radius, (mean, np.trace(case.H) / n, spread)
    # a narrower broadening, given explicitly, keeps the same normalisation
    grid2, density2 = hs.spectral_density(op, steps=10, probes=1, seed=0, points=50, sigma=1e-2 * case.radius)
    assert np.trapezoid(density2, grid2) == pytest.approx(1.0, abs=1e-12)


def test_spectral_density_full_lanczos_finds_the_extremes(cnn):
    """With as many steps as dimensions, full reorthogonalisation recovers the extreme eigenvalues."""
    (nodes, weights), = hs.stochastic_lanczos_quadrature(cnn.op(), steps=cnn.H.shape[0], probes=1, seed=4)
    assert nodes.max() == pytest.approx(cnn.eigs[-1], abs=1e-6 * cnn.radius)
    assert nodes.min() == pytest.approx(cnn.eigs[0], abs=1e-6 * cnn.radius)


@pytest.mark.parametrize("which", ["extremes", "top2"])
def test_eigen_directions(case, which):
    op = case.op()
    pairs = hs.hessian_eigen_directions(op, which=which)
    expected = [case.eigs[-1], case.eigs[0]] if which == "extremes" else [case.eigs[-1], case.eigs[-2]]
    assert len(pairs) == 2
    for (lam, d), want in zip(pairs, expected):
        assert list(d) == case.names
        params = dict(case.model.named_parameters())
        assert all(d[k].shape == params[k].shape and d[k].dtype == torch.float32 for k in d)
        vec = torch.cat([d[k].reshape(-1) for k in case.names]).double().numpy()
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)
        assert abs(lam - want) <= 1e-3 * case.radius
        assert np.linalg.norm(case.H @ vec - lam * vec) <= 1e-3 * case.radius
    # reproducible, sign included
    again = hs.hessian_eigen_directions(op, which=which)
    for (l1, d1), (l2, d2) in zip(pairs, again):
        assert l1 == l2 and all(torch.equal(d1[k], d2[k]) for k in d1)


def test_eigen_directions_over_weights_only(cnn):
    op = cnn.op(params="weights")
    (lam, d), _ = hs.hessian_eigen_directions(op)
    assert list(d) == op.names and all(t.dim() > 1 for t in d.values())
    idx = cnn.indices(op.names)
    vec = torch.cat([d[k].reshape(-1) for k in op.names]).double().numpy()
    sub = cnn.H[np.ix_(idx, idx)]
    assert np.linalg.norm(sub @ vec - lam * vec) <= 1e-3 * np.abs(np.linalg.eigvalsh(sub)).max()


def test_float32_model_and_bad_arguments():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    op = hs.HessianOperator(model, "all", x, y)
    out = op.as_linear_operator().matvec(np.ones(op.dim))
    assert out.dtype == np.float64 and out.shape == (op.dim,)
    assert op.matvec(torch.ones(op.dim)).dtype == torch.float32
    with pytest.raises(ValueError):
        op.matvec(torch.ones(op.dim + 1))
    with pytest.raises(ValueError):
        hs.HessianOperator(model, "all", x, y, loss="hinge")
    with pytest.raises(ValueError):
        hs.HessianOperator(model, "all", x, y[:3])
    with pytest.raises(TypeError):
        hs.extreme_eigenvalues(np.eye(3))


def test_frozen_parameter_can_be_chosen(cnn):
    """requires_grad=False does not stop the Hessian w.r.t. a parameter, nor is the flag changed."""
    name = cnn.names[0]
    p = dict(cnn.model.named_parameters())[name]
    p.requires_grad_(False)
    try:
        op = cnn.op(params={name: p})
        idx = cnn.indices([name])
        v = np.random.default_rng(5).standard_normal(len(idx))
        sub = cnn.H[np.ix_(idx, idx)]
        np.testing.assert_allclose(op.matvec(torch.from_numpy(v)).numpy(), sub @ v,
                                   rtol=0, atol=1e-10 * np.abs(sub @ v).max())
        assert not p.requires_grad
    finally:
        p.requires_grad_(True)


def test_spectral_functions_on_a_plain_linear_operator():
    """Any symmetric scipy LinearOperator: a known diagonal spectrum with a cluster near zero."""
    from scipy.sparse.linalg import aslinearoperator
    from scipy.sparse import diags

    eigs = np.concatenate([np.linspace(-0.05, 0.05, 297), [-0.4, 3.0, 7.0]])
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((300, 300)))
    a = aslinearoperator(q @ diags(eigs).toarray() @ q.T)
    lam_max, lam_min = hs.extreme_eigenvalues(a)
    assert abs(lam_max - 7.0) <= 7e-3 and abs(lam_min + 0.4) <= 7e-3
    assert hs.top_eigenvalues(a, 2) == pytest.approx([7.0, 3.0], abs=7e-3)
    trace, stderr = hs.hutchinson_trace(a, samples=50)
    assert abs(trace - eigs.sum()) <= 3 * stderr
    grid, density = hs.spectral_density(a, steps=40, probes=4)
    assert grid[np.argmax(density)] == pytest.approx(0.0, abs=0.2)  # the bulk at zero
