"""PCA of a training trajectory (Li et al., NeurIPS 2018, Sec. 7): the numerics, serial and pure.

Files in, tensors and numbers out; no MPI, no HDF5, no command line.

Convention (that of the original code's `setup_PCA_directions`): the vectors
are the differences `c_t - final` of the checkpoints from the final model, over
the entries `names` (the tensors the directions move, minus the 1-D ones that
ignore = "biasbn" zeroes; see `pca_names`), and the directions are the first two
principal components of `sklearn.decomposition.PCA`, which **centres** those
vectors (subtracts their mean) before the decomposition. We follow it: the
directions and the explained-variance ratios are sklearn's, up to the sign of
each direction. The coordinates of the checkpoints, as in the original
`project_trajectory`, are **not** centred: x_t = <c_t - final, d1>,
y_t = <c_t - final, d2>, so the final model is the origin of the plane.

Memory and time. No parameter-sized covariance, and never more than one
checkpoint in memory. Pass 1 loads each checkpoint once (n loads), writes its
difference vector (float32, P = number of moved values) as one row of an
anonymous temporary file (n x P x 4 bytes on disk, in `tmpdir` or $TMPDIR,
deleted on close even after a crash), then drops it. Pass 2 reads that file
back in column blocks (all n rows, a few thousand columns, at most about one
checkpoint's size in memory) and accumulates the Gram matrix G = D D^T in float64
(n x n), O(n^2 P) flops, like sklearn on the full matrix. The centred Gram matrix
H G H (H = I - 11^T/n) has the same non-zero eigenvalues as the centred
covariance, and its eigenvectors give each direction as a weighted sum of the
differences, d_k = D^T H v_k / sqrt(lambda_k); pass 3 forms it from the same
column blocks (O(nP)). The coordinates and the distances from the plane follow
from G alone, in float64 (the distance as the quadratic form of the residual's
coefficients in G: accurate to ~1e-8 relative; the stored float32 directions
differ from the exact ones by ~1e-7). Peak memory beyond the caller's final
model: one loaded checkpoint, one difference row (pass 1), one column block,
and the two float32 directions, i.e. about five checkpoints' worth; disk: n
checkpoints' worth. Time is dominated by loading (torch.load(weights_only=True)).
`project` streams the checkpoints once (n loads), without a temporary file. The
README's measurement (200 ResNet-56 checkpoints) gives the time and memory.

Signs: each direction's sign puts the earliest checkpoint (off its axis) at a
positive coordinate, so a trajectory starts in the upper-right quadrant and
ends near the origin. If the centred differences have rank 1 (e.g. two
checkpoints), the second direction completes the plane through the final model
and the checkpoints (its explained variance is 0).
"""

from __future__ import annotations

import glob
import math
import os
import re
import tempfile
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from losslandscape.inputs.checkpoints import load_state_dict
from losslandscape.numerics.directions import moved_tensors, target_tensors
from losslandscape.errors import UserError

Direction = dict[str, torch.Tensor]
MIN_BLOCK_BYTES = 4 << 20   # a column block may use this much even for a tiny model
MAX_BLOCK_BYTES = 64 << 20  # and never more than this, however large the model
RANK_TOL = 1e-10            # eigenvalues below RANK_TOL * the largest are zero


@dataclass
class PCAResult:
    """The PCA plane of a trajectory and the trajectory on it.

    d1, d2: unit, mutually orthogonal directions {name: float32 tensor} over the
    target names (zero tensors for targets not in `names`).
    explained_variance_ratio: sklearn's `explained_variance_ratio_` of the two
    components (centred variance; their sum is <= 1).
    explained_variance, singular_values: sklearn's `explained_variance_` and
    `singular_values_`, as the original code stores them.
    x, y: each checkpoint's coordinates <c_t - final, d1>, <c_t - final, d2>.
    error: each checkpoint's distance from the plane relative to its distance
    from the final model, ||(c_t - final) - x_t d1 - y_t d2|| / ||c_t - final||
    (0 for the final model itself).
    """

    d1: Direction
    d2: Direction
    explained_variance_ratio: np.ndarray
    explained_variance: np.ndarray
    singular_values: np.ndarray
    x: np.ndarray
    y: np.ndarray
    error: np.ndarray
    paths: list[Path] = dc_field(default_factory=list)


def checkpoint_paths(pattern: str, field: str) -> list[Path]:
    """The files `pattern` (a glob; ~ and ** work) matches, by the last number in their names.

    model_2.pt comes before model_10.pt. Fewer than two matches, or a match
    without a number in its name (its place in the trajectory is unknown), is a UserError.
    """
    matches = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    files = [p for p in matches if p.is_file()]
    if not files:
        raise UserError(f"{field}: no checkpoint file matches {pattern!r}")
    if len(files) == 1:
        raise UserError(f"{field}: {pattern!r} matches one checkpoint only ({files[0]}); "
                        "a trajectory needs at least 2")
    keyed = []
    for p in files:
        numbers = re.findall(r"\d+", p.name)
        if not numbers:
            raise UserError(f"{field}: {p} (matched by {pattern!r}) has no number in its name, "
                            "so its place in the trajectory is unknown; use a pattern such as 'model_*.pt'")
        keyed.append((int(numbers[-1]), p.name, str(p), p))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def pca_names(model_or_state: torch.nn.Module | dict[str, torch.Tensor], dir_type: str = "weights",
              ignore: str = "", directions=None) -> list[str]:
    """The names of the entries the PCA runs over: the direction's targets minus those `ignore` zeroes.

    A model gives its targets as `directions.target_tensors(model, dir_type)`:
    the parameters ("weights") or the floating-point state-dict entries
    ("states"); given the spec's `[directions]` table `directions`, as
    `directions.moved_tensors(model, directions)` (its include / exclude /
    trainable_only subset; its dir_type, not `dir_type`). A dict is taken to be
    those targets already (e.g. a state dict for "states", or the moved subset);
    its non-floating entries are dropped. ignore = "biasbn" drops
    the entries of at most one dimension (biases, BatchNorm), which the
    directions zero, as the original code's `ignore_biasbn` does; "none" (the spec's word) and ""
    keep every entry.
    """
    if isinstance(model_or_state, torch.nn.Module):
        targets = (moved_tensors(model_or_state, directions) if directions is not None
                   else target_tensors(model_or_state, dir_type))  # type: ignore[arg-type]
    elif isinstance(model_or_state, dict):
        targets = model_or_state
    else:
        raise TypeError(f"expected an nn.Module or a dict of tensors, got {type(model_or_state).__name__}")
    names = [k for k, t in targets.items() if torch.is_tensor(t) and t.is_floating_point()]
    if ignore == "biasbn":
        names = [k for k in names if targets[k].dim() > 1]
    elif ignore not in ("", "none"):
        raise ValueError(f"unknown ignore {ignore!r}")
    return names


def pca_directions(final: dict[str, torch.Tensor], paths: list[str | Path], names: list[str],
                   trust: bool = False, *, targets: list[str] | None = None, field: str,
                   tmpdir: str | Path | None = None,
                   progress: Callable[[int, int], None] | None = None) -> PCAResult:
    """The first two principal components of the checkpoints' differences from `final`, over `names`.

    final: the final model's tensors (a state dict, the targets, or only the moved
    subset of them); paths: the checkpoints in trajectory order (the final model
    may be one of them; a checkpoint needs the entries in `names` only, and its
    others are never read); names: the entries the PCA runs over; targets: the
    entries the returned directions have (default: names), zero where not in names; trust: passed to
    `checkpoints.load_state_dict`; tmpdir: where the temporary n x P float32
    file goes (default $TMPDIR); progress(done, total) is called after each load.
    See the module docstring for the convention, the memory and the time.
    """
    paths = [Path(p) for p in paths]
    n = len(paths)
    if n < 2:
        raise UserError(f"{field}: a trajectory needs at least 2 checkpoints, got {n}")
    layout = _layout(final, names)
    size = layout[-1][3] if layout else 0
    if size < 2:
        raise UserError(f"{field}: the PCA has {size} value(s) to run over ({len(names)} entries); "
                        "it needs at least 2 (with ignore = 'biasbn', weights of 2 or more dimensions)")
    targets = list(names) if targets is None else list(targets)
    missing = [k for k in names if k not in set(targets)]
    if missing:
        raise ValueError(f"targets lacks {missing[0]!r}, one of names")
    unknown = [k for k in targets if k not in final]
    if unknown:
        raise ValueError(f"the final model has no entry {unknown[0]!r} (a target)")

    directory = str(tmpdir) if tmpdir is not None else tempfile.gettempdir()
    try:
        store = tempfile.TemporaryFile(dir=directory)
    except OSError as exc:
        raise UserError(f"{field}: cannot create a temporary file in {directory} ({exc.strerror or exc})") from None
    with store:
        fd = store.fileno()
        row = np.empty(size, dtype=np.float32)
        for i, path in enumerate(paths):
            _difference(path, final, layout, trust, field, row)
            try:
                _write_all(fd, memoryview(row).cast("B"), i * size * 4)
            except OSError as exc:
                need = n * size * 4 / 2**30
                raise UserError(f"{field}: cannot write the temporary {n} x {size} matrix of differences "
                                f"({need:.2f} GiB) in {directory} ({exc.strerror or exc}); "
                                "free space there or set TMPDIR") from None
            if progress is not None:
                progress(i + 1, n)
        del row

        width = _block_width(n, size)
        gram = _gram(fd, n, size, width)

        coef, lam, total = _components(gram, field)
        coef = _orthonormal(coef, gram)
        # pass 3: d_k = D^T coef_k, block by block, straight into the entries' tensors
        moved = _combine(fd, n, size, width, coef, layout)

    # everything else from G, in float64: coordinates, and the residual of
    # D_t - x_t d1 - y_t d2 = D^T (e_t - coef [x_t, y_t]) as a quadratic form in G
    proj = gram @ coef  # (n, 2)
    x, y = proj[:, 0].copy(), proj[:, 1].copy()
    sq = np.diag(gram).copy()
    res = sq - 2 * np.sum(proj * proj, axis=1) + np.einsum("ti,ij,tj->t", proj, coef.T @ gram @ coef, proj)
    error = np.zeros(n)
    nonzero = sq > 0
    error[nonzero] = np.sqrt(np.clip(res[nonzero], 0.0, None) / sq[nonzero])

    d1, d2 = (_complete(m, final, targets) for m in moved)
    n1 = max(n - 1, 1)
    return PCAResult(d1=d1, d2=d2, explained_variance_ratio=lam / total, explained_variance=lam / n1,
                     singular_values=np.sqrt(lam), x=x, y=y, error=error, paths=paths)


def project(final: dict[str, torch.Tensor], paths: list[str | Path], names: list[str],
            d1: Direction, d2: Direction, trust: bool = False, *,
            field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each checkpoint on the plane final + a d1 + b d2, over `names`: (x, y, error), streaming.

    `names` may be any subset of the entries (the moved ones): the rest of each checkpoint
    is neither read nor counted in the error.

    x, y are the coordinates of the point of the plane nearest to the
    checkpoint (least squares); for orthonormal directions, such as
    `pca_directions` gives, x_t = <c_t - final, d1> and y_t = <c_t - final, d2>.
    error: ||(c_t - final) - x_t d1 - y_t d2|| / ||c_t - final|| (0 when c_t = final).
    One load per checkpoint, one checkpoint in memory at a time.
    """
    paths = [Path(p) for p in paths]
    layout = _layout(final, names)
    for label, d in (("d1", d1), ("d2", d2)):
        for k, shape, _, _ in layout:
            if k not in d:
                raise ValueError(f"{label} has no entry {k!r}")
            if tuple(d[k].shape) != shape:
                raise ValueError(f"{label}[{k!r}] has shape {tuple(d[k].shape)}, the model {shape}")
    m = np.zeros((2, 2))
    for k, *_ in layout:
        a, b = d1[k].detach().cpu().double().flatten(), d2[k].detach().cpu().double().flatten()
        m += [[float(a @ a), float(a @ b)], [float(a @ b), float(b @ b)]]
    if m[0, 0] * m[1, 1] - m[0, 1] ** 2 <= 1e-12 * max(m[0, 0] * m[1, 1], 1e-300):
        raise UserError(f"{field}: the two directions are parallel (or zero) over the entries moved; "
                        "they span no plane to project on")
    xs, ys, errs = [], [], []
    for path in paths:
        b, sq = _dots(path, final, layout, d1, d2, trust, field)
        coords = np.linalg.solve(m, b)
        res = sq - float(coords @ b)  # ||D - A c||^2 = ||D||^2 - b^T M^-1 b
        xs.append(coords[0])
        ys.append(coords[1])
        errs.append(math.sqrt(max(res, 0.0) / sq) if sq > 0 else 0.0)
    return np.array(xs), np.array(ys), np.array(errs)


# ---------------------------------------------------------------------------------------------

def _layout(final: dict[str, torch.Tensor], names: list[str]) -> list[tuple[str, tuple, int, int]]:
    """(name, shape, start, stop) of each entry in the flattened vector."""
    out, offset = [], 0
    for k in names:
        if k not in final:
            raise ValueError(f"the final model has no entry {k!r}")
        t = final[k]
        if not t.is_floating_point():
            raise ValueError(f"entry {k!r} is not floating point ({t.dtype})")
        start, offset = offset, offset + t.numel()
        out.append((k, tuple(t.shape), start, offset))
    return out


def _checked(path: Path, layout, trust: bool, field: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, or a one-line UserError if it is not one of this model."""
    state = load_state_dict(path, trust, field)
    for k, shape, _, _ in layout:
        if k not in state:
            raise UserError(f"{field}: {path} is not a checkpoint of this model: it has no entry {k!r}")
        if tuple(state[k].shape) != shape:
            raise UserError(f"{field}: {path} is not a checkpoint of this model: entry {k!r} has shape "
                            f"{tuple(state[k].shape)}, the final model's {shape}")
    return state


def _difference(path: Path, final, layout, trust: bool, field: str, row: np.ndarray) -> None:
    """row <- (checkpoint - final) flattened over the layout, float32 (the checkpoint is freed on return)."""
    state = _checked(path, layout, trust, field)
    out = torch.from_numpy(row)
    for k, _, start, stop in layout:
        c = state[k].detach().to(torch.float32).reshape(-1)
        f = final[k].detach().cpu().to(torch.float32).reshape(-1)
        torch.sub(c, f, out=out[start:stop])
        if not torch.isfinite(out[start:stop]).all():
            bad = "final model" if not torch.isfinite(f).all() else str(path)
            raise UserError(f"{field}: entry {k!r} of the {bad} holds NaN or inf values")


def _dots(path: Path, final, layout, d1: Direction, d2: Direction, trust: bool,
          field: str) -> tuple[np.ndarray, float]:
    """([<D, d1>, <D, d2>], ||D||^2) for D = checkpoint - final over the layout, in float64."""
    state = _checked(path, layout, trust, field)
    b = np.zeros(2)
    sq = 0.0
    for k, *_ in layout:
        diff = state[k].detach().to(torch.float32).reshape(-1) - final[k].detach().cpu().to(torch.float32).reshape(-1)
        diff = diff.double()
        if not torch.isfinite(diff).all():
            raise UserError(f"{field}: entry {k!r} of {path} (or of the final model) holds NaN or inf values")
        b[0] += float(diff @ d1[k].detach().cpu().double().reshape(-1))
        b[1] += float(diff @ d2[k].detach().cpu().double().reshape(-1))
        sq += float(diff @ diff)
    return b, sq


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):  # one pwrite moves at most ~2 GiB on Linux
        done = os.pwrite(fd, data, offset)
        if done <= 0:
            raise OSError(0, "nothing written")
        data, offset = data[done:], offset + done


def _block_width(n: int, size: int) -> int:
    """Columns per block: float32 + float64 copies of n x width within about one checkpoint's size."""
    budget = min(max(size * 4, MIN_BLOCK_BYTES), MAX_BLOCK_BYTES)
    return max(1, min(size, budget // (12 * n)))


def _blocks(fd: int, n: int, size: int, width: int):
    """The n x P float32 matrix in the file, as float64 column blocks n x width (one buffer, reused:
    a block is valid until the next one is asked for)."""
    buf = np.empty((n, width), dtype=np.float32)
    wide = np.empty((n, width), dtype=np.float64)
    for start in range(0, size, width):
        w = min(width, size - start)
        part = buf[:, :w]  # each row part[i] is contiguous
        for i in range(n):
            view = memoryview(part[i]).cast("B")
            got = os.preadv(fd, [view], (i * size + start) * 4)
            if got != w * 4:
                raise OSError(f"temporary file: short read ({got} of {w * 4} bytes)")
        np.copyto(wide[:, :w], part)
        yield wide[:, :w]


def _gram(fd: int, n: int, size: int, width: int) -> np.ndarray:
    """G = D D^T (n x n, float64) from the column blocks of the file."""
    gram = np.zeros((n, n), dtype=np.float64)
    for block in _blocks(fd, n, size, width):
        gram += block @ block.T
    return gram


def _combine(fd: int, n: int, size: int, width: int, coef: np.ndarray, layout) -> list[Direction]:
    """The directions D^T coef[:, k], block by block, straight into the entries' float32 tensors."""
    moved = [{k: torch.empty(shape, dtype=torch.float32) for k, shape, _, _ in layout} for _ in range(coef.shape[1])]
    start = 0
    for block in _blocks(fd, n, size, width):
        part = coef.T @ block  # (2, width)
        for k, out in enumerate(moved):
            _scatter(part[k], start, layout, out)
        start += block.shape[1]
    return moved


def _components(gram: np.ndarray, field: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Coefficients (n x 2) of the two directions in the differences, their eigenvalues, the total variance.

    The eigenvalues are those of the centred Gram matrix (= the squared singular
    values of the centred differences). If the centred differences have rank 1
    (e.g. 2 checkpoints), the second direction completes the plane through the
    uncentred differences: the one farthest from the first direction's line.
    """
    n = gram.shape[0]
    mean_r = gram.mean(axis=0)
    centred = gram - mean_r[None, :] - mean_r[:, None] + gram.mean()
    centred = (centred + centred.T) / 2
    vals, vecs = np.linalg.eigh(centred)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    total = float(np.trace(centred))
    if not total > 0 or vals[0] <= 0:
        raise UserError(f"{field}: the {n} checkpoints are all the same model; their PCA has no direction")
    lam = np.clip(vals[:2], 0.0, None)
    coef = np.zeros((n, 2))
    for k in range(2):
        if lam[k] > RANK_TOL * lam[0]:
            v = vecs[:, k] - vecs[:, k].mean()  # H v: v is orthogonal to 1 up to rounding
            coef[:, k] = v / math.sqrt(lam[k])
    if not lam[1] > RANK_TOL * lam[0]:
        lam[1] = 0.0
        a1 = coef[:, 0]
        x = gram @ a1
        sq = np.diag(gram)
        res = sq - x * x  # squared distance of each difference from the line of d1
        ratio = np.where(sq > 0, res / np.where(sq > 0, sq, 1.0), 0.0)
        t = int(np.argmax(ratio))
        if not ratio[t] > RANK_TOL:
            raise UserError(f"{field}: the {n} checkpoints and the final model lie on one line; "
                            "a PCA plane needs them to span two dimensions")
        r = -x[t] * a1
        r[t] += 1.0
        coef[:, 1] = r / math.sqrt(res[t])
    return coef, lam, total


def _orthonormal(coef: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """The coefficients rescaled (and the second made orthogonal to the first) so that the
    directions D^T coef are exactly orthonormal in float64, each with its sign (see `_sign`)."""
    coef = coef.copy()
    for k in range(coef.shape[1]):
        for j in range(k):
            coef[:, k] -= (coef[:, j] @ gram @ coef[:, k]) * coef[:, j]
        coef[:, k] /= math.sqrt(coef[:, k] @ gram @ coef[:, k])
        coef[:, k] *= _sign(gram @ coef[:, k])
    return coef


def _sign(coords: np.ndarray) -> float:
    """+1 or -1: the earliest checkpoint off the axis gets a positive coordinate."""
    scale = float(np.abs(coords).max()) if coords.size else 0.0
    for c in coords:
        if abs(c) > 1e-6 * scale:
            return 1.0 if c > 0 else -1.0
    return 1.0


def _scatter(values: np.ndarray, start: int, layout, out: Direction) -> None:
    """Write the flattened values[0:len] at offset `start` into the entries they belong to."""
    stop = start + values.shape[0]
    for k, _, e_start, e_stop in layout:
        lo, hi = max(start, e_start), min(stop, e_stop)
        if lo < hi:
            out[k].view(-1)[lo - e_start:hi - e_start] = torch.from_numpy(values[lo - start:hi - start])


def _complete(moved: Direction, final, targets: list[str]) -> Direction:
    """The direction over every target: the moved entries, zeros for the others, in target order."""
    out: Direction = {}
    for k in targets:
        if k in moved:
            out[k] = moved[k]
        else:
            out[k] = torch.zeros(final[k].shape, dtype=torch.float32)
    return out
