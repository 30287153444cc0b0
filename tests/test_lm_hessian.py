"""The Hessian of a language model is right (issue 32, item 3): a tiny GPT-2 from `transformers`
on dict batches with padding (attention_mask; labels -100 where padded), streamed, its own loss
(`loss = "model"`) and token cross entropy, over a subset of its parameters (one block's MLP).
The centre's top-k, smallest eigenvalue and trace, the maps' extremes at a moved point, and
Hessian directions (which move only the subset) equal those of a dense Hessian built here: of
the mean token loss over the whole split (every scored token weighs the same, whichever batch
it is in), from torch.autograd.functional.hessian on the flattened subset.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import losslandscape as ll

pytest.importorskip("transformers")

VOCAB, SEQ = 32, 8
SUBSET = ["transformer.h.0.mlp.c_fc.*"]  # one block's first MLP layer: 8 x 32 + 32 parameters


def gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=8, n_layer=1, n_head=2, initializer_range=0.3,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).double().eval()


def batches(next_tokens: bool = False) -> list[dict[str, torch.Tensor]]:
    """Three batches of unequal sizes and unequal numbers of scored tokens (padding at the ends).
    `labels` are the input ids (GPT-2's own loss shifts them), or with `next_tokens` the next
    token at each position (cross_entropy compares position by position), -100 where none."""
    g = torch.Generator().manual_seed(1)
    out = []
    for size, lengths in ((3, (8, 5, 7)), (2, (6, 8)), (4, (3, 8, 8, 4))):
        ids = torch.randint(1, VOCAB, (size, SEQ), generator=g)
        mask = (torch.arange(SEQ)[None, :] < torch.tensor(lengths)[:, None]).long()
        ids[mask == 0] = 0
        labels = ids.masked_fill(mask == 0, -100)
        if next_tokens:
            labels = torch.cat([labels[:, 1:], torch.full((size, 1), -100)], dim=1)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def subset_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("transformer.h.0.mlp.c_fc.")]


def dense(model, moved: dict[str, torch.Tensor] | None = None) -> tuple[np.ndarray, list[str]]:
    """The dense Hessian of the mean next-token loss over every scored token of the split, with
    respect to the subset, at the model's weights plus `moved` (added to its named tensors)."""
    names = subset_names(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, d in (moved or {}).items():
        base[n] = base[n] + d.double()
    shapes, sizes = [base[n].shape for n in names], [base[n].numel() for n in names]
    flat = torch.cat([base[n].reshape(-1) for n in names])
    data = batches()

    def mean_token_loss(theta):
        params = dict(base)
        params.update({n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)})
        total, count = 0.0, 0
        for b in data:
            logits = torch.func.functional_call(model, params, (), {"input_ids": b["input_ids"],
                                                                   "attention_mask": b["attention_mask"]}).logits
            logits, targets = logits[:, :-1].reshape(-1, VOCAB), b["labels"][:, 1:].reshape(-1)
            scored = targets != -100
            total = total - logits.log_softmax(-1)[scored, targets[scored]].sum()
            count += int(scored.sum())
        return total / count

    return torch.autograd.functional.hessian(mean_token_loss, flat).numpy(), names


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2x2 surface of the subset, by `loss = "model"` (GPT-2's own loss) on streamed dict batches."""
    out = tmp_path_factory.mktemp("lm") / "s.h5"
    model = gpt2()
    s = ll.compute_surface(model, batches(), x="-1:1:2", y="-1:1:2", out=out, loss="model", include=SUBSET,
                           threads=1)
    return model, out, s


@pytest.mark.parametrize("loss", ["model", pytest.param("cross_entropy", marks=pytest.mark.slow)])
def test_centre_spectrum_and_trace_equal_a_dense_hessian(made, tmp_path, loss):
    model, path, _ = made
    if loss != "model":
        path = tmp_path / "ce.h5"
        ll.compute_surface(model, batches(next_tokens=True), x="-1:1:2", y="-1:1:2", out=path, loss=loss,
                           include=SUBSET, input_keys=["input_ids", "attention_mask"], threads=1)
    h, names = dense(model)
    ev = np.linalg.eigvalsh(h)
    radius = np.abs(ev).max()
    result = ll.compute_hessian(path, centre=True, top_k=3, tol=1e-8, probes=h.shape[0])
    assert result["parameters"] == h.shape[0] == 8 * 32 + 32
    np.testing.assert_allclose(result["top_eigenvalues"], ev[::-1][:3], atol=1e-6 * radius)
    assert abs(result["min_eigenvalue"] - ev[0]) <= 1e-6 * radius
    assert result["trace_method"] == "exact"
    assert abs(result["trace"] - np.trace(h)) <= 1e-7 * np.abs(ev).sum()  # the sum of every eigenvalue
    estimate = ll.compute_hessian(path, centre=True, top_k=1, probes=100, seed=2)
    assert abs(estimate["trace"] - np.trace(h)) <= 3 * estimate["trace_stderr"]


@pytest.mark.slow  # a dense Hessian at each of four points
def test_the_maps_extremes_equal_a_dense_hessian_at_a_moved_point(made):
    model, path, _ = made
    s = ll.compute_hessian(path, tol=1e-8)
    with h5py.File(path, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
        dy = {k: torch.from_numpy(f["directions/y"][k][...]) for k in f["directions/y"]}
    assert {k for k in dx if dx[k].any()} <= set(subset_names(model))  # the surface moves the subset only
    for j, b in enumerate(s.y):
        for i, a in enumerate(s.x):
            ev = np.linalg.eigvalsh(dense(model, {k: a * dx[k].double() + b * dy[k].double() for k in dx})[0])
            radius = np.abs(ev).max()
            assert abs(s.eig["max"][j, i] - ev[-1]) <= 1e-6 * radius, (a, b)
            assert abs(s.eig["min"][j, i] - ev[0]) <= 1e-6 * radius, (a, b)


def test_hessian_directions_move_only_the_subset_along_the_dense_eigenvectors(tmp_path):
    model = gpt2()
    path = tmp_path / "h.h5"
    ll.compute_surface(model, batches(), x="-1:1:3", y="-1:1:3", out=path, loss="model", include=SUBSET,
                       kind="hessian", threads=1)
    h, names = dense(model)
    ev, vecs = np.linalg.eigh(h)
    with h5py.File(path, "r") as f:
        stored = {axis: {k: f[f"directions/{axis}"][k][...] for k in f[f"directions/{axis}"]} for axis in "xy"}
    for axis, want in (("x", vecs[:, -1]), ("y", vecs[:, 0])):  # maxmin: the largest, then the smallest
        moved = {k: v for k, v in stored[axis].items() if np.any(v)}
        assert set(moved) <= set(names), sorted(moved)
        got = np.concatenate([stored[axis][n].reshape(-1) for n in names])
        cosine = abs(got @ want) / np.linalg.norm(got)
        assert cosine == pytest.approx(1.0, abs=1e-4), (axis, cosine)
