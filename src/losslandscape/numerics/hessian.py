"""Curvature of the loss: Hessian-vector products, extreme eigenvalues, trace, spectral density.

Everything here is about the Hessian of the MEAN loss over a data set,

    L(theta) = 1/N * sum_i loss(model(x_i; theta), y_i),

with the model in eval mode (BatchNorm uses its running statistics, dropout is
off), with respect to a chosen set of the model's parameters, the others held
fixed. The loss is the evaluator's, from `losses.py`; N is the count the loss
reports. The Hessian is never formed: a `HessianOperator` gives H v, and every
spectral quantity is computed from products with it (Lanczos, Hutchinson deflated by a
Lanczos basis for the trace, stochastic Lanczos quadrature). Serial and pure: tensors in, numbers out.

Hessian-vector products: double backward (`torch.autograd.grad` with
create_graph=True, then the gradient of <g, v>), measured faster than
forward-over-reverse (`torch.func.jvp` of `torch.func.grad`), which stays
available as method="forward_over_reverse"; docs/hessian-benchmarks.md has the
numbers, and `python -m losslandscape.numerics.hessian` measures them again. The
products are accumulated over batches as (sum of per-batch HVPs of the summed
loss) / N, exact whatever the batch size. The first backward's graph of every batch is
kept across the products of one operator while it fits a memory budget, and the forward
passes run through the model's BatchNorm-folded twin (numerics/fold.py), the fold computed
from the parameters differentiably so that the Hessian is the model's own.

Eigenvalues: scipy's ARPACK (`scipy.sparse.linalg.eigsh`, implicitly restarted
Lanczos) on `HessianOperator.as_linear_operator()`, with a seeded starting
vector so results are reproducible.

The smallest eigenvalue is taken with which="SA" on the shifted operator
H - lam_max*I (the same Krylov spaces as H, as Lanczos is shift-invariant), so
that ARPACK's stopping test, relative to the eigenvalue it converges, is
relative to the width of the spectrum: the smallest eigenvalue of a network's
Hessian is usually close to zero, and an unshifted relative test would demand
an absolute accuracy far beyond what is meaningful.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, eigsh

from losslandscape.inputs.batches import Batch, Source, in_memory, input_dtype
from losslandscape.numerics.evaluate import batch_size_for, network
from losslandscape.numerics.fold import FoldedModel
from losslandscape.inputs.losses import LossFunction, cross_entropy, get_loss

__all__ = [
    "HessianOperator",
    "hessian_params",
    "extreme_eigenvalues",
    "top_eigenvalues",
    "hutchinson_trace",
    "deflated_trace",
    "TraceEstimate",
    "stochastic_lanczos_quadrature",
    "spectral_density",
    "hessian_eigen_directions",
]

Op = "HessianOperator | LinearOperator"  # what the spectral functions take


def hessian_params(model: torch.nn.Module,
                   which: Literal["all", "weights"] = "all") -> dict[str, torch.nn.Parameter]:
    """The model's parameters the Hessian is taken with respect to, by `named_parameters` name.

    "all": every parameter. "weights": only the tensors of more than one
    dimension (convolution and linear weights; no biases, no BatchNorm), as the
    original loss-landscape code's Hessian did.
    """
    if which == "all":
        return dict(model.named_parameters())
    if which == "weights":
        return {name: p for name, p in model.named_parameters() if p.dim() > 1}
    raise ValueError(f"unknown parameter set {which!r}; choose 'all' or 'weights'")


def loss_sum(outputs, targets, loss: LossFunction) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(summed loss, count) of one batch, differentiably.

    Float64 outputs stay float64 (the losses raise only bf16/fp16 to float32), so that
    curvature can be computed in double precision.
    """
    total, count, _ = loss(outputs, targets)
    return total, count


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the duration; every module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


KEEP_GRAPH_BYTES = 1 << 30  # memory for the first backward's graphs kept across products (HessianOperator)


class _TooLarge(Exception):
    """The graphs to keep pass their memory budget."""


def _channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's 2-D convolutions hold their weights channels-last (the data follow)."""
    return any(not m.weight.is_contiguous() and m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _second(grads, leaves, tangents, retain: bool = False) -> list[torch.Tensor]:
    """H t from a gradient that keeps its graph: the gradient of <grad, t>."""
    pairs = [(g, t) for g, t in zip(grads, tangents) if g is not None and g.requires_grad]
    if not pairs:  # the loss is at most linear in the parameters
        return [torch.zeros_like(t) for t in tangents]
    with torch.enable_grad():  # a vector-Jacobian product of the gradient: no graph for the dot product
        hv = torch.autograd.grad([g for g, _ in pairs], leaves, grad_outputs=[t for _, t in pairs],
                                 allow_unused=True, retain_graph=retain)
    return [torch.zeros_like(t) if h is None else h.detach() for h, t in zip(hv, tangents)]


class HessianOperator:
    """H v for the Hessian of the mean loss over (inputs, targets) w.r.t. `params`.

    The data: `inputs` and `targets` tensors, or a batches.Source as `inputs` (targets None).

    `params`: the live parameters, as {name: Parameter} (names as in
    `model.named_parameters()`), a list of the model's Parameters, or "all" /
    "weights" (see `hessian_params`). Vectors are flat, of length `dim`, in the
    order of `names` (each tensor flattened, C order). The model is put in eval
    mode during each product and its modes restored after; its parameters and
    buffers are read, never changed. The data are moved to the model's device
    once (a stream's batch by batch, as it is read). `batch_size` (0: `evaluate.batch_size_for`'s default for the device,
    128 on a CPU, 1024 on a GPU) bounds memory only: the product is the same for
    every batch size. An HVP holds a few times a training step's activations.
    """

    def __init__(self, model: torch.nn.Module,
                 params: Mapping[str, torch.nn.Parameter] | Sequence[torch.nn.Parameter] | Literal["all", "weights"],
                 inputs: "torch.Tensor | Source", targets: torch.Tensor | None = None, loss: str = "cross_entropy",
                 batch_size: int = 0,
                 method: Literal["double_backward", "forward_over_reverse"] = "double_backward",
                 keep_graph_bytes: int = KEEP_GRAPH_BYTES, fold_batchnorm: bool = True):
        self.loss_fn = get_loss(loss, model)
        self.keep_graph_bytes = keep_graph_bytes if method == "double_backward" else 0
        self._kept: list | None = None  # per batch (gradient with its graph, leaves, count); see _keep
        self._kept_versions: list[int] | None = None
        self._refused = False  # the graphs passed keep_graph_bytes once: never kept
        if method not in ("forward_over_reverse", "double_backward"):
            raise ValueError(f"unknown method {method!r}")
        data = inputs if targets is None else in_memory(inputs, targets)
        self.model = model
        self.params = self._named(model, params)
        if not self.params:
            raise ValueError("no parameters to take the Hessian with respect to")
        self.names = list(self.params)
        first = next(iter(self.params.values()))
        self.device = first.device
        self.dtype = first.dtype
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.dim = sum(self.sizes)
        self.loss = loss
        self.method = method
        # images channels-last where the model's convolutions are (the evaluator's models on a CPU)
        self.data = data.placed(self.device, _channels_last(model), dtype=input_dtype(model))
        self.batch_size = batch_size_for(self.device, batch_size)
        self.matvecs = 0  # products computed so far
        # the forward passes run through the BatchNorm-folded twin where folding applies (decided
        # on the first batch a product reads): the fold is computed from the chosen parameters
        # differentiably, so the Hessian is the model's own
        self.fold_batchnorm = fold_batchnorm
        self.folding: str | None = None  # why folded or not, once decided
        self._twin: FoldedModel | None = None

    @staticmethod
    def _named(model, params) -> dict[str, torch.nn.Parameter]:
        if isinstance(params, str):
            return hessian_params(model, params)  # type: ignore[arg-type]
        by_id = {id(p): name for name, p in model.named_parameters()}
        if isinstance(params, Mapping):
            for name, p in params.items():
                if by_id.get(id(p)) != name:
                    raise ValueError(f"{name!r} is not the model's parameter of that name")
            return dict(params)
        named = {}
        for p in params:
            if id(p) not in by_id:
                raise ValueError("a parameter given is not one of the model's parameters")
            named[by_id[id(p)]] = p
        return named

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector as a list of tensors shaped like the parameters (views)."""
        return [c.view(shape) for c, shape in zip(torch.split(v, self.sizes), self.shapes)]

    def as_directions(self, v: torch.Tensor | np.ndarray,
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """A flat vector as {name: tensor} on the CPU, the form of `directions.Direction`."""
        v = torch.as_tensor(v).detach().to("cpu", dtype).reshape(-1)
        return {name: t.clone() for name, t in zip(self.names, self.split(v))}

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v, v of shape (dim,); the result has the model's dtype and device."""
        v = torch.as_tensor(v).detach().to(self.device, self.dtype).reshape(-1)
        if v.numel() != self.dim:
            raise ValueError(f"vector of length {v.numel()}, expected {self.dim}")
        tangents = self.split(v)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        count: int | torch.Tensor = 0
        if self.keep_graph_bytes and self._keep():
            for grads, leaves, k in self._kept:
                out += torch.cat([h.reshape(-1) for h in _second(grads, leaves, tangents, retain=True)])
                count += k
            self.matvecs += 1
            return out.div_(float(count))
        product = self._hvp_double if self.method == "double_backward" else self._hvp_func
        with _eval_mode(self.model):
            for batch in self.data.batches(self.batch_size):
                hv, k = product(batch, tangents)
                out += torch.cat([h.reshape(-1) for h in hv])
                count += k
        self.matvecs += 1
        return out.div_(float(count))  # a whole count, or a loss's sum of weights

    def _arguments(self) -> dict[str, torch.Tensor]:
        """Every parameter for functional_call: the chosen ones as fresh leaves requiring grad
        (a frozen parameter can be chosen too), the others detached, so that autograd
        records only what the Hessian needs."""
        return {name: p.detach().requires_grad_(name in self.params) for name, p in self.model.named_parameters()}

    def _fold(self, batch: Batch) -> None:
        """Build the folded twin from the first batch read, once (the model is in eval mode)."""
        if self.folding is None and not any(isinstance(m, torch.nn.BatchNorm2d) for m in self.model.modules()):
            self.folding = "BatchNorm not folded: the model has none"  # no trace to find that out
        if self.folding is None:
            net, self.folding = network(self.model, batch, self.fold_batchnorm)
            self._twin = net if isinstance(net, FoldedModel) else None

    def _call(self, args: dict[str, torch.Tensor], batch: Batch):
        """The model's outputs on a batch at the parameters `args` (by the model's names), through
        the folded twin where there is one."""
        self._fold(batch)
        if self._twin is None:
            return torch.func.functional_call(self.model, args, batch.args, batch.kwargs)
        return torch.func.functional_call(self._twin, self._twin.arguments(args), batch.args, batch.kwargs)

    def _first(self, batch: Batch):
        """(the gradient of the batch's summed loss with its graph, the leaves, the count)."""
        args = self._arguments()
        leaves = [args[name] for name in self.names]
        with torch.enable_grad():
            outputs = self._call(args, batch)
            total, count = loss_sum(outputs, batch.targets, self.loss_fn)
            grads = torch.autograd.grad(total, leaves, create_graph=True, allow_unused=True)
        return grads, leaves, count

    def _hvp_double(self, batch: Batch, tangents):
        grads, leaves, count = self._first(batch)
        # the graph of `grads` is freed when they go, at the end of the call
        return _second(grads, leaves, tangents), count

    def _versions(self) -> list[int]:
        """The in-place version counters of the model's parameters and buffers: a kept graph is
        of the weights it was built at, and is built again once any has changed."""
        return [t._version for t in (*self.model.parameters(), *self.model.buffers())]

    def _keep(self) -> bool:
        """Keep the first backward's graph of every batch across products (PyHessian's way): a
        product is then one backward pass through it, not a forward, a backward and a second
        backward. Only while the tensors the graphs save fit `keep_graph_bytes` (counted as
        they are saved, each storage once); past it the graphs go, and every product starts
        afresh. Built at the first product, and again when the weights have moved."""
        if self._kept is not None and self._kept_versions == self._versions():
            return True
        if self._refused:
            return False
        self._kept, seen, used = None, set(), [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                used[0] += t.untyped_storage().nbytes()
            if used[0] > self.keep_graph_bytes:
                raise _TooLarge
            return t

        kept = []
        try:
            with _eval_mode(self.model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                for batch in self.data.batches(self.batch_size):
                    kept.append(self._first(batch))
        except _TooLarge:
            self._refused = True
            return False
        self._kept, self._kept_versions = kept, self._versions()
        return True

    def _hvp_func(self, batch: Batch, tangents):
        self._fold(batch)  # not inside the transforms
        args = {name: t.detach() for name, t in self._arguments().items()}
        primals = {name: args.pop(name) for name in self.names}
        tangent = dict(zip(self.names, tangents))
        loss = self.loss_fn

        def batch_loss(ps):
            outputs = self._call({**args, **ps}, batch)
            total, count = loss_sum(outputs, batch.targets, loss)
            return total, torch.as_tensor(count)  # torch.func carries only tensors out as aux

        # torch.func's transforms ignore an outer no_grad, which keeps ordinary autograd out;
        # torch's forward-AD decompositions warn once about torch.jit.script, which is theirs
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
            _, hv, count = torch.func.jvp(torch.func.grad(batch_loss, has_aux=True), (primals,), (tangent,),
                                          has_aux=True)
        return [hv[name] for name in self.names], count

    def as_linear_operator(self) -> LinearOperator:
        """The operator for scipy: float64 numpy vectors in and out."""
        def mv(v):
            v = torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(-1)))
            return self.matvec(v).detach().to("cpu", torch.float64).numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, rmatvec=mv, dtype=np.float64)


def _linop(op: HessianOperator | LinearOperator) -> LinearOperator:
    if isinstance(op, HessianOperator):
        return op.as_linear_operator()
    if isinstance(op, LinearOperator):
        return op
    raise TypeError(f"expected a HessianOperator or a scipy LinearOperator, got {type(op).__name__}")


def _start(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def _shifted(a: LinearOperator, shift: float) -> LinearOperator:
    def mv(v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return a.matvec(v) - shift * v

    return LinearOperator(a.shape, matvec=mv, rmatvec=mv, dtype=np.float64)


def _extremes(op: Op, tol: float, maxiter: int | None, seed: int, vectors: bool):
    a = _linop(op)
    n = a.shape[0]
    if n < 2:
        raise ValueError("Lanczos needs at least 2 dimensions")
    v0 = _start(n, seed)
    top = eigsh(a, k=1, which="LA", v0=v0, tol=tol, maxiter=maxiter, return_eigenvectors=vectors)
    lam_max = float((top[0] if vectors else top)[0])
    # the same Krylov spaces, a stopping test relative to the spectrum's width (module docstring)
    bottom = eigsh(_shifted(a, lam_max), k=1, which="SA", v0=v0, tol=tol, maxiter=maxiter,
                   return_eigenvectors=vectors)
    lam_min = float((bottom[0] if vectors else bottom)[0]) + lam_max
    lam_min = min(lam_min, lam_max)
    if not vectors:
        return lam_max, lam_min, None, None
    return lam_max, lam_min, top[1][:, 0], bottom[1][:, 0]


def extreme_eigenvalues(op: Op, tol: float = 1e-3, maxiter: int | None = None,
                        seed: int = 0) -> tuple[float, float]:
    """(lam_max, lam_min) of the Hessian, by Lanczos (ARPACK); reproducible for a seed.

    `tol`: ARPACK's relative tolerance; lam_max is accurate to about tol*|lam_max|,
    lam_min to about tol*(lam_max - lam_min). `maxiter`: ARPACK's restarts
    (None: its default, 10*dim). Raises scipy's ArpackNoConvergence if not converged.
    `op`: a HessianOperator or any symmetric scipy LinearOperator (float64).
    lam_max is found first, unshifted; a spectrum whose negative end dominates
    (|lam_min| >> lam_max) makes it slow to converge, not wrong.
    """
    lam_max, lam_min, _, _ = _extremes(op, tol, maxiter, seed, vectors=False)
    return lam_max, lam_min


def top_eigenvalues(op: Op, k: int, tol: float = 1e-3, maxiter: int | None = None, seed: int = 0) -> list[float]:
    """The k largest (algebraic) eigenvalues, in descending order, by Lanczos (ARPACK); k < dim."""
    a = _linop(op)
    n = a.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be between 1 and dim-1 = {n - 1}, got {k}")
    values = eigsh(a, k=k, which="LA", v0=_start(n, seed), tol=tol, maxiter=maxiter, return_eigenvectors=False)
    return sorted((float(x) for x in values), reverse=True)


def hutchinson_trace(op: Op, samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """(trace estimate, its standard error): the mean of z^T H z over Rademacher vectors z."""
    if samples < 2:
        raise ValueError("need at least 2 samples for a standard error")
    a = _linop(op)
    rng = np.random.default_rng(seed)
    estimates = np.empty(samples)
    for i in range(samples):
        z = rng.integers(0, 2, size=a.shape[0]).astype(np.float64) * 2.0 - 1.0
        estimates[i] = z @ a.matvec(z)
    return float(estimates.mean()), float(estimates.std(ddof=1) / np.sqrt(samples))


TRACE_BASIS_BYTES = 2 << 30  # memory for the Lanczos basis of deflated_trace (float64 vectors)


@dataclass(frozen=True)
class TraceEstimate:
    """A trace estimate: `trace`, its standard error `stderr` (0 where exact), the Hessian-vector
    `products` it took, the dimensions taken exactly (`deflated`) and the Hutchinson `probes` on
    the rest."""
    trace: float
    stderr: float
    products: int
    deflated: int
    probes: int
    seed: int

    @property
    def method(self) -> str:
        if self.probes == 0:
            return "exact"
        return "Lanczos-deflated Hutchinson" if self.deflated else "Hutchinson"


def deflated_trace(op: Op, products: int = 100, seed: int = 0,
                   basis_bytes: int = TRACE_BASIS_BYTES) -> TraceEstimate:
    """The trace of a symmetric operator from `products` matrix-vector products: half of them
    build a Lanczos basis Q (full reorthogonalisation, from a seeded Gaussian start), whose
    part of the trace, sum q_i^T A q_i, is exact; the other half are Hutchinson's Rademacher
    probes projected off Q, an unbiased estimate of the rest, trace((I-QQ^T) A (I-QQ^T)),
    with its standard error. Lanczos finds the eigenvalues of largest magnitude at both ends of
    the spectrum first, so the Hutchinson part sees what is left: its variance, 2 ||A_rest||_F^2
    per probe, falls with the deflated outliers (the idea of Hutch++, Meyer et al. 2021, with a
    Krylov sketch instead of one product with random vectors). The error of the estimate falls
    as 1/sqrt(products / 2) times the spread of the rest's quadratic forms.

    With `products` >= the dimension n the trace is exact (n products along a full basis). The
    basis takes 8 n bytes a vector: it is cut to `basis_bytes` (fewer deflated dimensions, more
    probes); none fits: Hutchinson alone."""
    a = _linop(op)
    n = a.shape[0]
    if products < 4:
        raise ValueError("need at least 4 products for a trace with a standard error")
    rng = np.random.default_rng(seed)
    if products >= n:  # the sum of the diagonal, one unit vector at a time (nothing of size n x n)
        unit, exact = np.zeros(n), 0.0
        for i in range(n):
            unit[i] = 1.0
            exact += float(np.asarray(a.matvec(unit), dtype=np.float64).reshape(-1)[i])
            unit[i] = 0.0
        return TraceEstimate(exact, 0.0, n, n, 0, seed)
    k = min(products // 2, int(basis_bytes // (8 * n)))
    k = k if k >= 2 else 0
    probes = products - k
    q = np.zeros((n, k))
    exact = 0.0
    v = rng.standard_normal(n)
    v = v / np.linalg.norm(v)
    for i in range(k):
        q[:, i] = v
        w = np.asarray(a.matvec(v), dtype=np.float64).reshape(-1)
        exact += float(v @ w)
        if i + 1 == k:
            break
        for _ in range(2):  # full reorthogonalisation, twice (Kahan: twice is enough)
            w -= q[:, :i + 1] @ (q[:, :i + 1].T @ w)
        norm = np.linalg.norm(w)
        if norm <= 1e-12 * max(1.0, float(np.abs(w).max(initial=0.0)), abs(exact)):  # an invariant subspace
            w = rng.standard_normal(n)
            for _ in range(2):
                w -= q[:, :i + 1] @ (q[:, :i + 1].T @ w)
            norm = np.linalg.norm(w)
        v = w / norm
    forms = np.empty(probes)
    for j in range(probes):
        z = rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0
        if k:
            z -= q @ (q.T @ z)
        forms[j] = z @ np.asarray(a.matvec(z), dtype=np.float64).reshape(-1)
    return TraceEstimate(exact + float(forms.mean()), float(forms.std(ddof=1) / np.sqrt(probes)), k + probes, k,
                         probes, seed)


def _lanczos(a: LinearOperator, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) of the Lanczos tridiagonal matrix from v0, with full reorthogonalisation.

    Stops early when the Krylov space is invariant (beta vanishes). Keeps
    steps * dim float64 numbers (the basis).
    """
    n = a.shape[0]
    m = min(steps, n)
    basis = np.zeros((m, n))
    alpha: list[float] = []
    beta: list[float] = []
    v = v0 / np.linalg.norm(v0)
    scale = 0.0
    for j in range(m):
        basis[j] = v
        w = np.asarray(a.matvec(v), dtype=np.float64).reshape(-1)
        alpha.append(float(w @ v))
        w = w - alpha[-1] * v - (beta[-1] * basis[j - 1] if j else 0.0)
        for _ in range(2):  # twice is enough (Parlett: "twice is enough")
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(np.linalg.norm(w))
        scale = max(scale, abs(alpha[-1]), b)
        if j == m - 1 or b <= 1e-10 * scale:
            break
        beta.append(b)
        v = w / b
    return np.array(alpha), np.array(beta)


def stochastic_lanczos_quadrature(op: Op, steps: int = 30, probes: int = 4,
                                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per probe, (nodes, weights): Ritz values of `steps` Lanczos steps from a random
    Gaussian unit vector, and the squared first components of their eigenvectors
    (they sum to 1). sum_j w_j f(node_j) estimates tr f(H) / dim.
    """
    a = _linop(op)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(probes):
        alpha, beta = _lanczos(a, rng.standard_normal(a.shape[0]), steps)
        if len(alpha) == 1:
            nodes, vecs = alpha.copy(), np.ones((1, 1))
        else:
            nodes, vecs = eigh_tridiagonal(alpha, beta)
        weights = vecs[0] ** 2
        out.append((nodes, weights / weights.sum()))
    return out


def spectral_density(op: Op, steps: int = 30, probes: int = 4, seed: int = 0, points: int = 200,
                     sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density) of the Hessian's eigenvalues by stochastic Lanczos quadrature.

    Ritz values broadened by Gaussians of width `sigma` (None: 2% of the span of
    the Ritz values), weighted by the squared first components, averaged over
    `probes`, on `points` equally spaced values from 4 sigma below the smallest
    Ritz value to 4 sigma above the largest; the density integrates to 1 over
    the grid (trapezoid rule). Its mean, the integral of lambda * density,
    estimates trace / dim.
    """
    quad = stochastic_lanczos_quadrature(op, steps, probes, seed)
    nodes = np.concatenate([q[0] for q in quad])
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        span = hi - lo
        if span <= 0:
            span = max(abs(lo), abs(hi)) or 1.0
        sigma = 0.02 * span
    if sigma <= 0:
        raise ValueError("sigma must be positive")
    grid = np.linspace(lo - 4 * sigma, hi + 4 * sigma, points)
    density = np.zeros(points)
    for q_nodes, q_weights in quad:
        gauss = np.exp(-0.5 * ((grid[:, None] - q_nodes[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        density += gauss @ q_weights
    density /= len(quad)
    density /= np.trapezoid(density, grid)
    return grid, density


def hessian_eigen_directions(op: HessianOperator, which: Literal["extremes", "top2"] = "extremes",
                             tol: float = 1e-3, maxiter: int | None = None, seed: int = 0,
                             dtype: torch.dtype = torch.float32) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Two Hessian eigenvectors as directions: [(eigenvalue, {name: tensor}), ...].

    which="extremes": those of the largest and of the smallest eigenvalue;
    "top2": of the two largest. Each is a unit vector over the whole flattened
    parameter set, as {name: CPU tensor of `dtype`} over `op.names` (parameters
    outside `op.params`, e.g. 1-D ones for "weights", are not in it: a caller
    moving all of `directions.target_tensors(model, "weights")` sets them to
    zero). The sign is fixed so that the entry of largest magnitude is positive,
    for reproducibility.
    """
    if which == "extremes":
        lam_max, lam_min, v_max, v_min = _extremes(op, tol, maxiter, seed, vectors=True)
        pairs = [(lam_max, v_max), (lam_min, v_min)]
    elif which == "top2":
        a = _linop(op)
        values, vectors = eigsh(a, k=2, which="LA", v0=_start(a.shape[0], seed), tol=tol, maxiter=maxiter)
        order = np.argsort(values)[::-1]
        pairs = [(float(values[i]), vectors[:, i]) for i in order]
    else:
        raise ValueError(f"unknown choice {which!r}; choose 'extremes' or 'top2'")
    out = []
    for lam, vec in pairs:
        vec = vec / np.linalg.norm(vec)
        if vec[np.argmax(np.abs(vec))] < 0:
            vec = -vec
        out.append((float(lam), op.as_directions(vec, dtype)))
    return out


def benchmark(model: torch.nn.Module | None = None, samples: int = 256, rounds: int = 15) -> dict[str, float]:
    """Milliseconds per call on `samples` random 1x8x8 images in one batch
    (docs/hessian-benchmarks.md): a plain forward pass of the model as given, the forward pass
    the surface evaluator runs (BatchNorm folded, channels-last), a gradient, and an HVP as the
    Hessian maps compute it (folded, channels-last, the first backward's graph kept across
    products, as a Lanczos run uses it), then with one of those changes undone at a time, and
    by forward over reverse. Best of `rounds` interleaved rounds, which is robust to other
    loads on the machine."""
    import copy

    from losslandscape.numerics.fold import fold

    if model is None:
        from losslandscape.inputs.models import build_model
        torch.manual_seed(0)
        model = build_model("resnet20", in_channels=1)
    model.eval()
    inputs = torch.randn(samples, 1, 8, 8)
    targets = torch.randint(0, 10, (samples,))
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as the evaluator holds it
    folded, _ = fold(last, inputs[:8])
    inputs_last = inputs.contiguous(memory_format=torch.channels_last)

    def forward(net, x):
        def call():
            with torch.no_grad():
                loss_sum(net(x), targets, cross_entropy)[0].item()
        return call

    def gradient():
        torch.autograd.grad(loss_sum(model(inputs), targets, cross_entropy)[0], list(model.parameters()))

    def product(net, **options):
        op = HessianOperator(net, "all", inputs, targets, batch_size=samples, **options)
        return lambda: op.matvec(v)

    calls = {"forward": forward(model, inputs), "forward_evaluator": forward(folded, inputs_last),
             "gradient": gradient,
             "hvp_double_backward": product(last),  # as the maps run it
             "hvp_unfolded": product(last, fold_batchnorm=False),
             "hvp_contiguous": product(model),
             "hvp_double_backward_fresh": product(last, keep_graph_bytes=0),
             "hvp_forward_over_reverse": product(last, method="forward_over_reverse")}
    best = {}
    for name, call in calls.items():
        call()
        best[name] = float("inf")
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1000 * t for name, t in best.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    ms = benchmark()
    print(f"{'':28s} {'ms':>8s}  {'per s':>7s}  {'plain forward passes':>20s}  {'evaluator forward passes':>24s}")
    for name, t in ms.items():
        print(f"{name:28s} {t:8.1f}  {1000 / t:7.1f}  {t / ms['forward']:20.2f}  {t / ms['forward_evaluator']:24.2f}")
