"""Any subset of parameters moves (directions.include / exclude / trainable_only): the rest
stays bit-identical at every grid point, for every kind of direction; the Hessian is the
sub-Hessian of the subset; mistakes are one line. Also: .safetensors checkpoints.

Checked against independent computations: models rebuilt and moved here by hand, plain
forward passes, dense Hessians from torch.autograd.functional.hessian.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losslandscape.inputs import data as datasets
from losslandscape.numerics import directions as dirs
from losslandscape.surfacefile import format as ff
from losslandscape import spec as specs
from losslandscape.inputs.checkpoints import build_and_load, load_state_dict
from losslandscape.run.driver import run_serial
from losslandscape.errors import UserError
from losslandscape.run.hessianmaps import Settings, centre_spectrum
from losslandscape.run.work import SurfaceWork, prepare
from losslandscape.run.loading import attach_directions, load_evaluator
from losslandscape.run.makedirections import A_MOVED

from helpers import assert_one_line_error, losslandscape

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.LayerNorm(12), nn.Linear(12, 10))

    def forward(self, x):
        return self.head(self.backbone(x))


def build():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # running statistics and norm weights that are not the identity
        net.backbone[1].running_mean.uniform_(-0.2, 0.2)
        net.backbone[1].running_var.uniform_(0.5, 1.5)
        net.head[2].weight.uniform_(0.5, 1.5)
        net.head[2].bias.uniform_(-0.1, 0.1)
    return net


def frozen():
    """A frozen backbone under a trainable head (fine-tuning)."""
    net = build()
    for p in net.backbone.parameters():
        p.requires_grad_(False)
    return net
'''
SAMPLES = 120


@pytest.fixture
def net(tmp_path, monkeypatch):
    """The NET module written into tmp_path under a name of its own, importable, and a
    checkpoint of build()'s weights: (module name, module, checkpoint path)."""
    name = f"subnet_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module(name)
    ckpt = tmp_path / "net.pt"
    torch.save(module.build().state_dict(), ckpt)
    yield name, module, ckpt
    sys.modules.pop(name, None)


def make_spec(tmp_path: Path, net, factory: str = "build", out: str = "s.h5", **tables) -> specs.Spec:
    name, _, ckpt = net
    table = {
        "model": {"name": f"{name}:{factory}", "checkpoint": str(ckpt)},
        "data": {"name": "digits", "splits": ["train"], "max_samples": SAMPLES},
        "directions": {"norm": "filter", "ignore": "none", "seed": 4},
        "grid": {"x": "-1:1:3", "y": "-1:1:3"},
        "evaluation": {"device": "cpu"},
        "output": {"surface": str(tmp_path / out)},
    }
    for key, values in tables.items():
        table.setdefault(key, {}).update(values)
    return specs.from_dict(table)


def stored(path: Path) -> tuple[dict, dict | None, dict, np.ndarray, np.ndarray]:
    """(x, y, attributes, xcoordinates, train_loss) of a surface file."""
    with h5py.File(path, "r") as f:
        g = f["directions"]
        x = {k: torch.from_numpy(g["x"][k][...]) for k in g["x"]}
        y = {k: torch.from_numpy(g["y"][k][...]) for k in g["y"]} if "y" in g else None
        return x, y, dict(f.attrs), f["xcoordinates"][...], f["train_loss"][...]


def plain_loss(model: torch.nn.Module, spec) -> float:
    inputs, targets = datasets.load_split(spec.data, "train")
    with torch.no_grad():
        return F.cross_entropy(model.eval()(inputs).double(), targets).item()


def moved_by_hand(module, ckpt: Path, x: dict, y: dict | None, a: float, b: float,
                  factory: str = "build") -> torch.nn.Module:
    """A fresh model at theta + a*dx + b*dy, the directions' entries only."""
    model = getattr(module, factory)()
    state = torch.load(ckpt, weights_only=True)
    model.load_state_dict({k: v + a * x[k] + (b * y[k] if y is not None else 0) if k in x else v
                           for k, v in state.items()})
    return model


def check_points(spec, module, ckpt: Path, moved: set[str], factory: str = "build") -> None:
    """At several grid points: tensors outside `moved` are the centre's, bit for bit, in the
    evaluator's own model; moved ones are theta + a*dx + b*dy; the stored loss is a plain
    forward pass of a model moved here by hand."""
    path = Path(spec.output.surface)
    x, y, _, xs, losses = stored(path)
    assert set(x) == moved and set(y) == moved
    centre = {k: v.clone() for k, v in torch.load(ckpt, weights_only=True).items()}
    evaluator = load_evaluator(spec, torch.device("cpu"))
    attach_directions(evaluator, path)
    for j, i in [(0, 0), (1, 2), (2, 1), (2, 2)]:
        a, b = float(xs[i]), float(xs[j])
        evaluator.move_to(a, b)
        live = evaluator.model.state_dict()
        for k, v in centre.items():
            if k in moved:
                torch.testing.assert_close(live[k], v + a * x[k] + b * y[k], rtol=1e-6, atol=1e-7)
                assert not torch.equal(live[k], v), k
            else:
                assert live[k].numpy().tobytes() == v.numpy().tobytes(), k
        by_hand = moved_by_hand(module, ckpt, x, y, a, b, factory)
        assert losses[j, i] == pytest.approx(plain_loss(by_hand, spec), rel=1e-5)


HEAD = {"head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"}


def test_only_the_included_block_moves(net, tmp_path):
    _, module, ckpt = net
    spec = make_spec(tmp_path, net, directions={"include": ["head.*"], "exclude": ["head.2.*"]})
    assert run_serial(SurfaceWork(spec)) == 0
    check_points(spec, module, ckpt, HEAD)
    moved = json.loads(stored(tmp_path / "s.h5")[2][A_MOVED])
    assert moved == {"tensors": 4, "parameters": 16 * 12 + 12 + 12 * 10 + 10, "include": ["head.*"],
                     "exclude": ["head.2.*"], "trainable_only": False}


def test_trainable_only_moves_the_head_over_a_frozen_backbone(net, tmp_path):
    _, module, ckpt = net
    spec = make_spec(tmp_path, net, factory="frozen", directions={"trainable_only": True})
    assert run_serial(SurfaceWork(spec)) == 0
    check_points(spec, module, ckpt, {n for n, _ in module.build().head.named_parameters(prefix="head")},
                 factory="frozen")
    # states: a buffer has no requires_grad, so the running statistics stay too
    d = specs.from_dict({"directions": {"dir_type": "states", "trainable_only": True}}).directions
    assert set(dirs.moved_tensors(module.frozen(), d)) == {f"head.{k}" for k in
                                                           ("0.weight", "0.bias", "2.weight", "2.bias",
                                                            "3.weight", "3.bias")}


def test_interpolation_and_a_direction_file_move_the_subset_only(net, tmp_path):
    name, module, ckpt = net
    other = module.build()
    with torch.no_grad():
        for t in other.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    spec = make_spec(tmp_path, net, out="i.h5", model={"checkpoint2": str(tmp_path / "other.pt")},
                     directions={"kind": "interpolate", "include": ["head.3.*", "backbone.1.*"]},
                     grid={"x": "0:1:2", "y": ""})
    assert run_serial(SurfaceWork(spec)) == 0
    x, *_ = stored(tmp_path / "i.h5")
    # dir_type "states" (interpolation's default): the BatchNorm statistics are in the set too
    assert set(x) == {"head.3.weight", "head.3.bias", "backbone.1.weight", "backbone.1.bias",
                      "backbone.1.running_mean", "backbone.1.running_var"}
    for k, v in x.items():
        torch.testing.assert_close(v, torch.full_like(v, 0.1))
    # a full direction file read for a subset: only the subset's entries are taken
    full = make_spec(tmp_path, net, out="full.h5", grid={"x": "-1:1:2", "y": "-1:1:2"})
    assert run_serial(SurfaceWork(full)) == 0
    spec = make_spec(tmp_path, net, out="f.h5", directions={"kind": "file", "file": str(tmp_path / "full.h5"),
                                                            "include": ["head.*"], "exclude": ["head.2.*"]})
    assert run_serial(SurfaceWork(spec)) == 0
    check_points(spec, module, ckpt, HEAD)
    fx, fy, *_ = stored(tmp_path / "full.h5")
    x, y, *_ = stored(tmp_path / "f.h5")
    assert all(torch.equal(x[k], fx[k]) and torch.equal(y[k], fy[k]) for k in HEAD)


def test_pca_of_a_subset(net, tmp_path):
    _, module, ckpt = net
    final = torch.load(ckpt, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    for t in range(3):  # a "run" that wanders in every tensor; the PCA sees the head's only
        torch.save({k: v + 0.1 * (3 - t) * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                    for k, v in final.items()}, tmp_path / f"run_{t}.pt")
    spec = make_spec(tmp_path, net, directions={"kind": "pca", "checkpoints": str(tmp_path / "run_*.pt"),
                                                "include": ["head.*"], "exclude": ["head.2.*"]})
    assert run_serial(SurfaceWork(spec)) == 0
    check_points(spec, module, ckpt, HEAD)
    x, y, *_ = stored(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        xs = f[f"{ff.TRAJECTORY}/{ff.PATH_DATASETS[0]}"][...]
    # the coordinates are the projections over the head alone
    for t in range(3):
        c = torch.load(tmp_path / f"run_{t}.pt", weights_only=True)
        proj = sum(float(((c[k] - final[k]).double() * x[k].double()).sum()) for k in HEAD)
        assert xs[t] == pytest.approx(proj, rel=1e-5)


def dense_sub_hessian(model: torch.nn.Module, names: list[str], inputs, targets) -> np.ndarray:
    """The dense float64 Hessian of the mean cross-entropy w.r.t. `names` only (eval mode)."""
    model = model.double().eval()
    base = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    shapes, sizes = [base[n].shape for n in names], [base[n].numel() for n in names]

    def loss(flat):
        chosen = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        out = torch.func.functional_call(model, {**buffers, **base, **chosen}, (inputs.double(),))
        return F.cross_entropy(out, targets)

    flat = torch.cat([base[n].reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat).numpy()


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_hessian_of_the_subset_is_the_dense_sub_hessian(net, tmp_path):
    _, module, ckpt = net
    sub = ["head.0.bias", "head.3.weight", "head.3.bias"]
    model = module.build()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    spec = make_spec(tmp_path, net, directions={"kind": "hessian", "include": ["head.3.*", "head.0.bias"]},
                     grid={"x": "-1:1:2", "y": "-1:1:2"})
    inputs, targets = datasets.load_split(spec.data, "train")
    ev, vecs = np.linalg.eigh(dense_sub_hessian(model, sub, inputs, targets))
    radius = np.abs(ev).max()
    assert run_serial(SurfaceWork(spec)) == 0
    x, y, attrs, *_ = stored(tmp_path / "s.h5")
    assert set(x) == set(sub)
    lam = np.asarray(attrs[ff.A_HESSIAN_EIGENVALUES])
    assert abs(lam[0] - ev[-1]) <= 1e-3 * radius and abs(lam[1] - ev[0]) <= 1e-3 * radius
    top = np.concatenate([x[k].double().reshape(-1).numpy() for k in sub])
    assert abs(top @ vecs[:, -1]) / np.linalg.norm(top) == pytest.approx(1.0, abs=1e-3)
    # the `hessian` verb on a random-direction surface of the subset: the same sub-Hessian
    spec = make_spec(tmp_path, net, out="r.h5", directions={"include": ["head.3.*", "head.0.bias"]})
    assert run_serial(SurfaceWork(spec)) == 0
    result = centre_spectrum(tmp_path / "r.h5", Settings("train", 0, "all", 1e-4), top_k=2)
    assert result["parameters"] == sum(model.get_parameter(n).numel() for n in sub)
    assert result["top_eigenvalues"][0] == pytest.approx(ev[-1], abs=1e-3 * radius)
    assert result["top_eigenvalues"][1] == pytest.approx(ev[-2], abs=1e-3 * radius)


def write_toml(tmp_path: Path, name: str, ckpt: Path, directions: str, factory: str = "build") -> Path:
    path = tmp_path / "job.toml"
    path.write_text(f'''
[model]
name = "{name}:{factory}"
checkpoint = "{ckpt}"
[data]
name = "digits"
splits = ["train"]
max_samples = {SAMPLES}
[directions]
{directions}
[grid]
x = "-1:1:2"
y = "-1:1:2"
[evaluation]
device = "cpu"
[output]
surface = "{tmp_path / 'out' / 's.h5'}"
''')
    return path


@pytest.mark.parametrize("directions, words", [
    ('include = ["head.9.*"]', ["directions.include", "'head.9.*' matches none", "head.3.*"]),
    ('include = ["head.*"]\nexclude = ["head.3.wieght"]', ["directions.exclude", "head.3.weight"]),
    ('include = ["head.*"]\nexclude = ["head.*"]', ["directions.exclude", "no tensor left to move"]),
    ('include = ["backbone.1.*"]\ntrainable_only = true\ndir_type = "states"',
     ["directions.trainable_only", "no tensor left to move"]),
])
def test_a_selection_that_moves_nothing_is_one_line_and_leaves_nothing(net, tmp_path, directions, words):
    name, _, ckpt = net
    factory = "frozen" if "trainable_only" in directions else "build"
    result = losslandscape("surface", write_toml(tmp_path, name, ckpt, directions, factory), cwd=tmp_path)
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_resume_with_another_subset_is_refused(net, tmp_path):
    spec = make_spec(tmp_path, net, directions={"include": ["head.*"]}, grid={"x": "-1:1:2", "y": "-1:1:2"})
    assert run_serial(SurfaceWork(spec)) == 0
    before = (tmp_path / "s.h5").read_bytes()
    for change, key in (({"include": ["head.3.*"]}, "directions.include"),
                        ({"include": ["head.*"], "exclude": ["*.bias"]}, "directions.exclude"),
                        ({"include": []}, "directions.include"),
                        ({"include": ["head.*"], "trainable_only": True}, "directions.trainable_only")):
        other = make_spec(tmp_path, net, directions=change, grid={"x": "-1:1:2", "y": "-1:1:2"})
        with pytest.raises(UserError, match=f"^{key}: the surface file") as err:
            prepare(other)
        assert "\n" not in str(err.value)
    assert (tmp_path / "s.h5").read_bytes() == before
    assert len(prepare(spec).pending) == 0  # the same subset resumes


def test_a_safetensors_checkpoint_loads(net, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    name, module, ckpt = net
    state = torch.load(ckpt, weights_only=True)
    save_file(state, tmp_path / "net.safetensors")
    loaded = load_state_dict(tmp_path / "net.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    spec = make_spec(tmp_path, net, model={"checkpoint": str(tmp_path / "net.safetensors")})
    model = build_and_load(spec.model, 1)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" * 4)
    with pytest.raises(UserError, match=r"^model.checkpoint: .*bad.safetensors is not a valid safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")
    for module in ("safetensors", "safetensors.torch"):  # as if the package were not installed
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError, match="the safetensors package is not installed"):
        load_state_dict(tmp_path / "net.safetensors")


def test_filter_normalisation_per_layer_kind():
    """Convolutions per output channel, Linear and Embedding per row (dim 0), 1-D tensors
    (LayerNorm, biases) by `ignore`: the directions.py docstring's table."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(7, 5), "conv": torch.nn.Conv2d(2, 3, 3),
                                 "fc": torch.nn.Linear(5, 4), "ln": torch.nn.LayerNorm(5)})
    with torch.no_grad():
        model["ln"].bias.uniform_(-1, 1)
    weights = dirs.target_tensors(model, "weights")
    for ignore in ("biasbn", "none"):
        d = dirs.normalize({k: torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) for k, w in weights.items()}, weights,
                           "filter", ignore)
        for name in ("emb.weight", "conv.weight", "fc.weight"):  # (V, D): one norm per token's row
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), weights[name].flatten(1).norm(dim=1))
        for name in ("ln.weight", "ln.bias", "conv.bias", "fc.bias"):
            assert torch.equal(d[name], torch.zeros_like(d[name]) if ignore == "biasbn" else weights[name])
