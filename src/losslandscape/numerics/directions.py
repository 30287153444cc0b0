"""Directions in weight space: random (filter-normalised), interpolation, from files.

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural
Nets", NeurIPS 2018, Sec. 4: a random Gaussian direction d is normalised filter
by filter, d_ij <- d_ij / ||d_ij|| * ||theta_ij|| (filter j of layer i), so that
the landscape is comparable across networks and scale-invariant layers.
1-D entries (biases, BatchNorm) are zeroed with ignore = "biasbn"; otherwise
their direction is the entry's own value, as in the original code.

A "filter" is a tensor's slice along dim 0, whatever the layer (`normalize`):
- convolutions, weight (C_out, C_in, kh, kw): one norm per output channel, as in the paper;
- Linear, weight (out, in): one norm per output row (a neuron's incoming weights);
- Embedding, weight (V, D): one norm per row, i.e. per token's vector (dim 0 is the
  vocabulary, so rows are tokens, not features);
- 1-D tensors (biases; BatchNorm, LayerNorm and RMSNorm weights and biases; BatchNorm
  running statistics with dir_type "states"): no filters; directions.ignore decides
  ("biasbn": zero, so they stay fixed; "none": the tensor's own values).

A direction is a dict {name: float32 tensor} over the tensors it moves: the
model's parameters (dir_type "weights", `named_parameters` order) or the
floating-point entries of its state dict (dir_type "states": BatchNorm running
statistics too), narrowed by the spec's directions.include / exclude /
trainable_only (`moved_tensors`). Every other tensor stays as it is at every
grid point. trainable_only keeps the parameters with requires_grad; with
dir_type "states" that means the state-dict entries that are such parameters:
buffers (running statistics) have no requires_grad and stay fixed.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import math
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import torch

from losslandscape.errors import UserError, readable_file

Direction = dict[str, torch.Tensor]
EPS = 1e-10


def target_tensors(model: torch.nn.Module, dir_type: Literal["weights", "states"]) -> dict[str, torch.Tensor]:
    """The model's tensors a direction moves, by name (live tensors, not copies)."""
    if dir_type == "weights":
        return {name: p.data for name, p in model.named_parameters()}
    return {name: t for name, t in model.state_dict(keep_vars=False).items() if t.is_floating_point()}


def moved_tensors(model: torch.nn.Module, d) -> dict[str, torch.Tensor]:
    """The tensors the spec's `[directions]` table `d` moves, by name (live, in target order):
    target_tensors(model, d.dir_type), then only those matching a d.include pattern (if any),
    minus those matching a d.exclude pattern, then (d.trainable_only) only parameters with
    requires_grad. Patterns are fnmatch globs on the whole name ("layer3.*", "*.bias").
    A pattern that matches no target, or a selection left empty, is a one-line UserError."""
    targets = target_tensors(model, d.dir_type)
    names = list(targets)
    include, exclude = list(d.include or []), list(d.exclude or [])
    for field, patterns in (("directions.include", include), ("directions.exclude", exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise UserError(f"{field}: {pattern!r} matches none of the model's {len(names)} "
                                f"{_kind(d.dir_type)}; closest: {', '.join(_closest(pattern, names))}")
    chosen = [n for n in names if not include or any(fnmatch.fnmatchcase(n, p) for p in include)]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if d.trainable_only:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        chosen = [n for n in chosen if n in trainable]
    if not chosen:
        field = "directions.trainable_only" if d.trainable_only else (
            "directions.exclude" if exclude else "directions.include")
        raise UserError(f"{field}: no tensor left to move (of {len(names)} {_kind(d.dir_type)}: "
                        f"include {include}, exclude {exclude}, trainable_only {str(d.trainable_only).lower()})")
    return {n: targets[n] for n in chosen}


def moved_summary(tensors: dict[str, torch.Tensor], d) -> dict:
    """The moved set in a few numbers, for the log and the surface file: the count of tensors,
    of their values ("parameters"; buffer entries too with dir_type "states") and the filters."""
    return {"tensors": len(tensors), "parameters": int(sum(t.numel() for t in tensors.values())),
            "include": list(d.include or []), "exclude": list(d.exclude or []),
            "trainable_only": bool(d.trainable_only)}


def _kind(dir_type: str) -> str:
    return "parameters" if dir_type == "weights" else "floating-point state-dict entries"


def _closest(pattern: str, names: list[str], n: int = 3) -> list[str]:
    """The names (and module prefixes as "prefix.*") nearest to a pattern, for a did-you-mean."""
    prefixes = {name.rsplit(".", k)[0] + ".*" for name in names for k in range(1, name.count(".") + 1)}
    return difflib.get_close_matches(pattern, [*names, *sorted(prefixes)], n=n, cutoff=0.0)


# How random directions are drawn, for both stores (the surface file records it with store = "seed").
SCHEME = ("numpy PCG64, one stream a tensor and axis: SeedSequence([seed, axis (0: x, 1: y), the first 16 "
          "bytes of SHA-256(tensor name) as 4 little-endian uint32]); float32 standard_normal in C order "
          "(numpy's ziggurat), then normalised against the tensor's float32 weights on the CPU")


def _stream(name: str, seed: int, axis: int) -> np.random.Generator:
    words = np.frombuffer(hashlib.sha256(name.encode()).digest()[:16], dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(axis), *words])))


def drawn(name: str, shape: tuple[int, ...] | torch.Size, seed: int, axis: int) -> torch.Tensor:
    """The raw Gaussian draw of one tensor of one axis (`SCHEME`): the same bits on every
    process and platform with the same numpy, whatever else is drawn, in any order."""
    return torch.from_numpy(_stream(name, seed, axis).standard_normal(tuple(shape), dtype=np.float32))


BLOCK = 1 << 18  # elements of a direction drawn at a time when no whole direction is held (1 MiB)


def normalize_tensor(d: torch.Tensor, w: torch.Tensor, norm: str, ignore: str) -> torch.Tensor:
    """Rescale one tensor's direction against its weights, in place; returns it.

    "filter": one norm per slice along dim 0 (a convolution's output channel, a Linear
    layer's output row, an Embedding's token row); 1-D tensors follow `ignore` (module docstring)."""
    w = w.detach().to("cpu", torch.float32).contiguous()
    if d.dim() <= 1:
        if ignore == "biasbn":
            d.zero_()
        else:
            d.copy_(w)
    elif norm == "filter":
        # one norm per filter (output channel / row): dims 1.. are reduced
        dn = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1))
        wn = w.flatten(1).norm(dim=1).view_as(dn)
        d.mul_(wn / (dn + EPS))
    elif norm == "layer":
        d.mul_(w.norm() / (d.norm() + EPS))
    elif norm == "weight":
        d.mul_(w)
    elif norm == "dfilter":
        d.div_(d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1)) + EPS)
    elif norm == "dlayer":
        d.div_(d.norm() + EPS)
    elif norm != "none":
        raise ValueError(f"unknown norm {norm!r}")
    return d


def normalize(direction: Direction, weights: dict[str, torch.Tensor], norm: str, ignore: str) -> Direction:
    """Rescale a direction against the weights it will move, in place, tensor by tensor; returns it."""
    for name, d in direction.items():
        normalize_tensor(d, weights[name], norm, ignore)
    return direction


class SeededDirection(Mapping):
    """A random direction as {name: float32 CPU tensor}, each tensor drawn and normalised when
    asked for (`drawn`, `normalize_tensor`), never held whole: what a surface file with
    directions.store = "seed" records is enough to make it again. `weights`: the tensors it
    moves at the base point (any device or dtype). A y made orthogonal to x is y - coef * x,
    tensor by tensor, with the coefficient computed once over the whole vectors (`dots`).

    `rows` ({name: (first row, the whole tensor's shape)}, from `window`): the weights are rows
    of larger tensors (one rank's shard of a model sharded by rows), and each tensor's
    direction is those rows of the whole tensor's, drawn from the whole tensor's stream."""

    def __init__(self, weights: Mapping[str, torch.Tensor], seed: int, axis: int, norm: str, ignore: str,
                 along: "SeededDirection | None" = None, coef: float = 0.0,
                 rows: Mapping[str, tuple[int, tuple[int, ...]]] | None = None):
        self.weights, self.seed, self.axis, self.norm, self.ignore = weights, seed, axis, norm, ignore
        if rows is not None and norm in ("layer", "dlayer"):
            raise ValueError(f"norm {norm!r} scales a tensor by its whole norm: no row can be drawn alone")
        self.along, self.coef, self.rows = along, coef, rows

    def window(self, weights: Mapping[str, torch.Tensor], first: Mapping[str, int]) -> "SeededDirection":
        """The same direction over rows `first[name]`.. of each tensor (`weights`: those rows of
        this direction's weights): a rank's share of a model sharded by rows. Each row is
        normalised alone ("filter" and the row-wise norms; 1-D tensors follow `ignore`), so
        its bits are the whole tensor's; norms over a whole tensor cannot be windowed."""
        rows = {k: (first[k], tuple(self.weights[k].shape)) for k in self.weights}
        along = self.along.window(weights, first) if self.along is not None else None
        return SeededDirection(weights, self.seed, self.axis, self.norm, self.ignore, along, self.coef, rows)

    @staticmethod
    def pair(weights: Mapping[str, torch.Tensor], seed: int, norm: str, ignore: str, two: bool, same: bool,
             coef: float | None, rows=None) -> tuple["SeededDirection", "SeededDirection | None"]:
        """(x, y or None) as a surface file's seed record gives them: y is x (`same`), or made
        orthogonal to x by `coef` (None: not orthogonalised); `rows` as in the constructor."""
        x = SeededDirection(weights, seed, 0, norm, ignore, rows=rows)
        if not two:
            return x, None
        if same:
            return x, x
        return x, SeededDirection(weights, seed, 1, norm, ignore, along=x if coef is not None else None,
                                  coef=coef or 0.0, rows=rows)

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self.weights[name]
        if self.rows is not None:  # a window: its rows of the whole tensor's direction
            if w.dim() < 2:
                d = normalize_tensor(torch.empty(w.shape), w, self.norm, self.ignore)
                return d.sub_(self.along[name], alpha=self.coef) if self.along is not None else d
            parts = [block for _, _, block in self.blocks(name)]
            return torch.cat(parts) if parts else torch.empty(tuple(w.shape))
        d = normalize_tensor(drawn(name, w.shape, self.seed, self.axis), w, self.norm, self.ignore)
        if self.along is not None:
            d.sub_(self.along[name], alpha=self.coef)
        return d

    def blocks(self, name: str, size: int = 0) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The tensor's direction as (start, stop, rows start:stop along dim 0) of about `size`
        elements each (0: `BLOCK`), drawn one block after the other from the tensor's stream:
        the same bits as `self[name]`, without the whole direction in memory. Tensors of fewer
        than 2 dimensions and norms over the whole tensor ("layer", "dlayer") come whole. In a
        window, the rows before it are drawn and dropped (a stream cannot skip), and the
        rows are counted from the window's first."""
        w = self.weights[name]
        first, shape = self.rows[name] if self.rows is not None else (0, tuple(w.shape))
        if w.dim() < 2 or self.norm in ("layer", "dlayer"):
            yield 0, (w.shape[0] if w.dim() else 1), self[name]
            return
        rng = _stream(name, self.seed, self.axis)
        size = size or BLOCK
        rows = max(1, size // max(1, math.prod(shape[1:])))
        along = self.along.blocks(name, size) if self.along is not None else None
        end = first + w.shape[0]
        for start in range(0, end, rows):
            stop = min(start + rows, shape[0])
            d = torch.from_numpy(rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32))
            lo, hi = max(start, first), min(stop, end)
            if lo >= hi:
                continue  # before the window
            d = d[lo - start:hi - start]
            normalize_tensor(d, w[lo - first:hi - first], self.norm, self.ignore)  # row by row: a block's rows alone
            if along is not None:
                d.sub_(next(along)[2], alpha=self.coef)
            yield lo - first, hi - first, d

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


DOT_CHUNK = 1 << 20  # elements per float64 slice: a large embedding never needs a whole float64 copy


def pieces(d: Mapping[str, torch.Tensor], name: str, like: Mapping | None = None) -> Iterator[torch.Tensor]:
    """Tensor `name` of a direction, in C order: block by block where it is drawn when read
    (`SeededDirection.blocks`, and `like` too, so that two directions' blocks align), else whole."""
    if hasattr(d, "blocks") and (like is None or hasattr(like, "blocks")):
        for _, _, block in d.blocks(name):
            yield block
    else:
        yield d[name]


def _chunks(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Aligned float64 slices of two directions, tensor by tensor (drawn ones block by block): a
    large embedding never needs a whole float64 copy."""
    for k in a:
        for x, y in zip(pieces(a, k, b), pieces(b, k, a)):
            x, y = x.reshape(-1), y.reshape(-1)
            for s in range(0, x.numel(), DOT_CHUNK):
                yield x[s:s + DOT_CHUNK].double(), y[s:s + DOT_CHUNK].double()


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The float64 dot product of two directions over all their tensors."""
    total = torch.zeros((), dtype=torch.float64)
    for u, v in _chunks(a, b):
        total += torch.dot(u, v).cpu()
    return float(total)


def dots(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> tuple[float, float, float]:
    """(x.x, x.y, y.y) in float64, in one pass over the tensors (each drawn once)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for u, v in _chunks(x, y):
        sums += torch.stack([torch.dot(u, u), torch.dot(u, v), torch.dot(v, v)]).cpu()
    xx, xy, yy = sums.tolist()
    return xx, xy, yy


def random_directions(weights: dict[str, torch.Tensor], two: bool, norm: str, ignore: str, seed: int,
                      orthogonal: bool) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor] | None, dict]:
    """x (and y) random directions, drawn tensor by tensor when read (`SeededDirection`); info
    records the x/y cosine (before, after) and, with `orthogonal`, the coefficient of x taken off y."""
    x = SeededDirection(weights, seed, 0, norm, ignore)
    if not two:
        return x, None, {}
    y = SeededDirection(weights, seed, 1, norm, ignore)
    xx, xy, yy = dots(x, y)
    info = {"cosine_xy_before": xy / max(np.sqrt(xx * yy), EPS)}
    if orthogonal:
        coef = xy / max(xx, EPS)
        y = SeededDirection(weights, seed, 1, norm, ignore, along=x, coef=coef)
        info["orthogonal_coef"] = coef
        xx, xy, yy = dots(x, y)  # one pass (three dot products drew x six times, y three)
        info["cosine_xy"] = xy / max(np.sqrt(xx * yy), EPS)
    else:
        info["cosine_xy"] = info["cosine_xy_before"]
    return x, y, info


def interpolation_direction(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> Direction:
    """end - start: x = 0 is the first model, x = 1 the second."""
    return {k: (end[k].detach().float().cpu() - start[k].detach().float().cpu()) for k in start}


def tensor_sha256(d: Mapping[str, torch.Tensor], name: str) -> bytes:
    """SHA-256 of one tensor of a direction, its float32 bytes in C order (block by block where
    it is drawn when read): what store = "seed" records."""
    h = hashlib.sha256()
    for piece in pieces(d, name):
        h.update(piece.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.digest()


def digest(*directions: Mapping[str, torch.Tensor] | None) -> str:
    """SHA-256 over the directions' names and float32 bytes: identifies them in the surface file."""
    h = hashlib.sha256()
    for d in directions:
        if d is None:
            continue
        for k in sorted(d):
            h.update(k.encode())
            for piece in pieces(d, k):
                h.update(piece.detach().to(torch.float32).cpu().contiguous().numpy())  # its buffer, not a copy
    return h.hexdigest()
