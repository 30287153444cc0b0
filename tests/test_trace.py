"""The trace of the Hessian at the centre (issue 32): within 1% of a dense Hessian's exact trace
for 100 Hessian-vector products, on a trained MLP, a CNN with BatchNorm and a tiny transformer
block, over ten seeds, and its stated standard error covers the true error in every one.

The dense Hessians are built here, independently of the tool: torch.autograd.functional.hessian
of the mean loss written out from its definition, over the flattened parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from losslandscape.numerics import hessian as hs

N = 64
SEEDS = range(10)


class Block(nn.Module):
    """A transformer block with causal attention written out (embedding, pre-norm attention and
    MLP, a head over the vocabulary), small enough for a dense Hessian."""

    def __init__(self, d: int = 8, vocab: int = 11, length: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        causal = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)
        w = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(causal, -1e9).softmax(-1)
        h = h + self.proj(w @ v)
        return self.head(h + self.mlp(self.ln2(h)))


def build(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    if kind == "mlp":
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 4))
        x, y = torch.randn(N, 10, generator=g), torch.randint(0, 4, (N,), generator=g)
    elif kind == "cnn":
        torch.manual_seed(2)
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                              nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Tanh(),
                              nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
        x, y = torch.randn(N, 1, 6, 6, generator=g), torch.randint(0, 3, (N,), generator=g)
    else:
        torch.manual_seed(4)
        model = Block()
        x = torch.randint(0, 11, (16, 6), generator=g)
        y = torch.roll(x, -1, dims=1)  # the next token (the last one wraps round)
    model = model.double()
    train(model, x if kind == "block" else x.double(), y)
    return model.eval(), (x if kind == "block" else x.double()), y


def token_mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy averaged over every target (a sample, or a token), from its definition."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return -logits.log_softmax(dim=1)[torch.arange(len(targets)), targets].mean()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200) -> None:
    """A few hundred Adam steps: the trace is taken where the tool takes it, at a trained model
    (whose Hessian has a few large eigenvalues and a bulk near zero)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        token_mean_loss(model(x), y).backward()
        opt.step()


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    named = dict(model.named_parameters())
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]
    flat = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def f(theta):
        params = {k: t.view(s) for k, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return token_mean_loss(torch.func.functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat, vectorize=True).numpy()


_cache: dict[str, tuple] = {}


@pytest.fixture(params=["mlp", "cnn", "block"])
def case(request):
    if request.param not in _cache:
        model, x, y = build(request.param)
        dense = dense_hessian(model, x, y)
        _cache[request.param] = (model, x, y, float(np.trace(dense)), np.linalg.eigvalsh(dense))
    return _cache[request.param]


def test_the_trace_is_within_one_percent_for_100_products_and_its_error_is_covered(case):
    model, x, y, exact, _ = case
    op = hs.HessianOperator(model, "all", x, y)
    assert op.dim > 200  # the products do not span the space: an estimate, not a sum over a basis
    for seed in SEEDS:
        t = hs.deflated_trace(op, products=100, seed=seed)
        assert (t.products, t.deflated, t.probes) == (100, 50, 50)
        assert abs(t.trace - exact) <= 0.01 * abs(exact), (seed, t.trace, exact)
        assert abs(t.trace - exact) <= 3 * t.stderr, (seed, t.trace, exact, t.stderr)


@pytest.mark.slow  # 80 Lanczos runs
def test_the_density_is_within_one_and_a_half_percent_of_the_spectrum_in_wasserstein_distance(case):
    """The spectral density `hessian --centre` stores (stochastic Lanczos quadrature, 4 probes of
    30 steps) against the dense eigenvalues: the Wasserstein-1 distance between its quadrature
    measure and the eigenvalues' empirical distribution, over ten seeds, at most 1.5% of the
    spectrum's width (docs/curvature.md: median 0.1-0.35%, worst 1.0% over 20 seeds)."""
    from scipy.stats import wasserstein_distance

    model, x, y, _, eigs = case
    op = hs.HessianOperator(model, "all", x, y)
    width = eigs[-1] - eigs[0]
    for seed in SEEDS:
        quad = hs.stochastic_lanczos_quadrature(op, steps=30, probes=4, seed=seed)
        nodes = np.concatenate([q[0] for q in quad])
        weights = np.concatenate([q[1] for q in quad]) / len(quad)
        assert wasserstein_distance(nodes, eigs, u_weights=weights) <= 0.015 * width, seed


@pytest.mark.slow  # the reason for the method, not a behaviour of the tool
def test_hutchinson_alone_is_not_within_one_percent(case):
    """The reason for the deflation: 100 plain Rademacher probes miss the 1% on some seed."""
    model, x, y, exact, _ = case
    op = hs.HessianOperator(model, "all", x, y)
    errors = [abs(hs.hutchinson_trace(op, samples=100, seed=seed)[0] - exact) / abs(exact) for seed in SEEDS]
    assert max(errors) > 0.01, errors


def test_as_many_products_as_dimensions_give_the_exact_trace():
    model, x, y = build("mlp")
    exact = float(np.trace(dense_hessian(model, x, y)))
    op = hs.HessianOperator(model, "all", x, y)
    t = hs.deflated_trace(op, products=op.dim, seed=0)
    assert t.method == "exact" and t.stderr == 0.0 and t.products == op.dim
    assert t.trace == pytest.approx(exact, rel=1e-9)


def test_the_basis_is_cut_to_its_memory_budget():
    """A basis that does not fit its budget deflates fewer dimensions (none: Hutchinson alone),
    still `products` products in all, and still unbiased within its error."""
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((400, 400)))
    a = rotation @ np.diag(np.linspace(-1.0, 10.0, 400)) @ rotation.T  # not diagonal: Hutchinson has a variance
    op = hs.LinearOperator(a.shape, matvec=lambda v: a @ v, dtype=np.float64)
    some = hs.deflated_trace(op, products=60, seed=0, basis_bytes=10 * 8 * 400)
    assert (some.deflated, some.probes, some.method) == (10, 50, "Lanczos-deflated Hutchinson")
    none = hs.deflated_trace(op, products=60, seed=0, basis_bytes=8 * 400)
    assert (none.deflated, none.probes, none.method) == (0, 60, "Hutchinson")
    for t in (some, none):
        assert abs(t.trace - np.trace(a)) <= 4 * t.stderr
    with pytest.raises(ValueError):
        hs.deflated_trace(op, products=3)
