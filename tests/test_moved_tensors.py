"""Which tensors a direction moves, and how (README, "[directions]"): the moved set as printed,
RMSNorm and LayerNorm weights following `ignore` like every 1-D tensor, and weights stored in
fp16 moved with the step computed in float32 and rounded once per point.

Each is checked against what the test computes itself: the model's own named parameters
matched here with fnmatch, its own weights, plain forward passes of the moved model."""

from __future__ import annotations

import fnmatch
import json
import re

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losslandscape as ll

from helpers import losslandscape

NORMS = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.RMSNorm(6), nn.ReLU(), nn.Linear(6, 12),
                         nn.LayerNorm(12), nn.Linear(12, 10))
'''


def norms_model() -> nn.Module:
    namespace: dict = {}
    exec(NORMS, namespace)
    return namespace["build"]()


def directions(path) -> tuple[dict[str, torch.Tensor], dict]:
    with h5py.File(path, "r") as f:
        return ({k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]},
                dict(f.attrs))


# --- the moved set is printed ---------------------------------------------------------------

@pytest.mark.parametrize("options, patterns", [
    ((), None),
    (("--directions.include=2.*,4.weight",), (["2.*", "4.weight"], [])),
    (("--directions.exclude=*.bias",), ([], ["*.bias"])),
])
def test_the_moved_set_is_printed_and_stored(tmp_path, options, patterns):
    """README: "The moved set is printed, stored in the file (`moved_tensors`)": the run's log line
    "moving N tensors, P parameters" counts the named parameters the patterns select, matched
    here with fnmatch, and the file's moved_tensors and directions hold the same set."""
    (tmp_path / "norms.py").write_text(NORMS)
    out = tmp_path / "s.h5"
    result = losslandscape("surface", "--model.name=norms:build", "--data.max_samples=30", "--grid.x=-1:1:3",
                           "--evaluation.device=cpu", "--evaluation.threads=1", f"--output.surface={out}", *options,
                           "--directions.ignore=none",  # every selected tensor moves (ignore's share: test_moved_log.py)
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    named = dict(norms_model().named_parameters())
    if patterns is None:
        chosen = list(named)
    else:
        include, exclude = patterns
        chosen = [n for n in named if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
                  and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    params = sum(named[n].numel() for n in chosen)
    lines = [line for line in result.stderr.splitlines() if re.search(r"moving \d+ tensors", line)]
    assert len(lines) == 1, result.stderr
    assert f"moving {len(chosen)} tensors, {params} parameters" in lines[0], (lines[0], chosen)
    moved, attrs = directions(out)
    assert sorted(moved) == sorted(chosen)
    stored = json.loads(attrs["moved_tensors"])
    assert stored["tensors"] == len(chosen) and stored["parameters"] == params


# --- RMSNorm and LayerNorm weights follow `ignore` --------------------------------------------

@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_rmsnorm_and_layernorm_weights_follow_ignore(tmp_path, ignore):
    """README: "1-D tensors (biases, LayerNorm and RMSNorm weights) follow `ignore`": with "biasbn"
    their direction is zero, with "none" it is the weights themselves (the original code's rule);
    and the values at x = 1 are a plain forward pass of the model with those tensors moved so."""
    torch.manual_seed(1)
    model = norms_model()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    out = tmp_path / "s.h5"
    s = ll.compute_surface(model, (x, y), x="-1:1:3", out=out, threads=1, ignore=ignore)
    d, _ = directions(out)
    state = model.state_dict()
    one_d = [n for n, p in model.named_parameters() if p.dim() == 1]
    assert {"2.weight", "5.weight", "5.bias"} <= set(one_d)  # RMSNorm's weight, LayerNorm's weight and bias
    for name in one_d:
        want = torch.zeros_like(state[name]) if ignore == "biasbn" else state[name]
        assert torch.equal(d[name], want), (ignore, name)
    probe = norms_model()
    probe.load_state_dict({k: v + d[k] if k in d else v for k, v in state.items()})  # x = 1
    with torch.no_grad():
        plain = probe.eval()(x).double()
    assert s.train_loss[2] == pytest.approx(F.cross_entropy(plain, y).item(), rel=1e-5)


# --- fp16 weights -----------------------------------------------------------------------------

class Half(nn.Module):
    """A small MLP whose weights are stored in fp16; it casts its inputs to its own dtype."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).half()

    def forward(self, x):
        return self.net(x.to(torch.float16))


def test_fp16_weights_are_moved_in_float32_and_rounded_once(tmp_path):
    """README: "Weights stored in bf16 or fp16 are moved with the step computed in float32 and
    rounded once per point": every point's loss equals a plain forward pass of the model whose
    fp16 weights are (w.float() + a dx + b dy).half(); the weights stay fp16 in the file's
    stored model and in the user's model after the run."""
    model = Half()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    out = tmp_path / "s.h5"
    s = ll.compute_surface(model, (x, y), x="-1:1:3", y="-1:1:3", out=out, threads=1)
    assert all(p.dtype == torch.float16 for p in model.parameters())
    with h5py.File(out, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]).float() for k in f["directions/x"]}
        dy = {k: torch.from_numpy(f["directions/y"][k][...]).float() for k in f["directions/y"]}
    base = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Half()
    rounded_differently = 0
    for j, b in enumerate(s.y):
        for i, a in enumerate(s.x):
            a, b = float(a), float(b)
            moved = {k: (v.float() + a * dx[k] + b * dy[k]).to(torch.float16) if k in dx else v
                     for k, v in base.items()}
            probe.load_state_dict(moved)
            with torch.no_grad():
                plain = probe(x).double()
            assert s.train_loss[j, i] == pytest.approx(F.cross_entropy(plain, y).item(), rel=1e-5), (a, b)
            assert s.train_acc[j, i] == pytest.approx(100.0 * (plain.argmax(1) == y).double().mean().item())
            # a step taken in fp16 itself rounds twice: some weights differ from the float32 step
            twice = {k: v + (a * dx[k].half() + b * dy[k].half()) for k, v in base.items() if k in dx}
            rounded_differently += sum(int((twice[k] != moved[k]).sum()) for k in twice)
    assert rounded_differently > 0
    assert np.isfinite(s.train_loss).all()
