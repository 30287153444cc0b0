"""The original loss-landscape code's networks (`original_*`) and its checkpoint files.

tests/data/original_state_dict_keys.json lists, for every name of the original code's
CIFAR-10 model loader (tomgoldstein/loss-landscape, cifar10/model_loader.py, in its
order), the parameter count and the state-dict keys and shapes of ITS definitions, as
they built under torch (num_classes 10); it was made once from that code, which is not
part of this repository. Outputs are checked against the original's ResNets written
out here with torch.nn.functional, and a surface's centre against a plain forward pass.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
from pathlib import Path

import h5py
import pytest
import torch
import torch.nn.functional as F

from losslandscape.frontends import cli
from losslandscape.inputs import data as datasets
from losslandscape import spec as specs
from losslandscape.inputs.checkpoints import apply_state_dict, build_and_load, load_state_dict
from losslandscape.run.driver import run_serial
from losslandscape.errors import UserError
from losslandscape.run.work import SurfaceWork
from losslandscape.inputs.models import ZOO, build_model

FIXTURE = json.loads((Path(__file__).parent / "data" / "original_state_dict_keys.json").read_text())["models"]
NAMES = list(FIXTURE)  # the original loader's names, in its order


def entries(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(shape)) for k, shape in FIXTURE[name]["state_dict"]]


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the original definition's keys and shapes (counters int64).

    With skip connections, a block's last BN scales by 0.1 to 0.3, so that 50 residual
    additions keep the outputs near 1 (as a trained network's are)."""
    gen = torch.Generator().manual_seed(seed)
    keys = [k for k, _ in entries(name)]
    last_bn = {f"{k[:-len('conv3.weight')]}bn3.weight" if k.endswith("conv3.weight") else None for k in keys}
    last_bn |= {k.replace("conv2.weight", "bn2.weight") for k in keys
                if k.endswith("conv2.weight") and k.replace("conv2", "conv3") not in keys}
    state = {}
    for k, shape in entries(name):
        if "noshort" not in name and k.startswith("layer") and k in last_bn:
            state[k] = 0.1 + 0.2 * torch.rand(shape, generator=gen)
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(300 * 391, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(shape, generator=gen)
        elif k.endswith("running_mean"):
            state[k] = 0.2 * torch.randn(shape, generator=gen)
        elif len(shape) == 4:  # conv filters, He-scaled so deep nets stay finite
            state[k] = torch.randn(shape, generator=gen) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif k.endswith("weight") and len(shape) == 1:  # BN scale
            state[k] = 0.5 + torch.rand(shape, generator=gen)
        else:  # biases, linear layers
            state[k] = 0.1 * torch.randn(shape, generator=gen)
    return state


# --- names, keys, shapes, counts -------------------------------------------------------------

def test_every_loader_name_is_in_the_zoo_in_its_order():
    assert len(NAMES) == 29 and "resnet56" in NAMES and "resnet50_16_noshort" in NAMES
    assert [n for n in ZOO if n.startswith("original_")] == [f"original_{n}" for n in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_keys_shapes_and_counts_are_the_original_definitions(name):
    with torch.device("meta"):  # no memory, no init: the ImageNet-style ResNet-152 costs nothing
        model = build_model(f"original_{name}")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == entries(name)
    assert sum(p.numel() for p in model.parameters()) == FIXTURE[name]["parameters"]
    # a strict load of tensors of exactly those keys and shapes
    state = {k: torch.empty(shape, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else None)
             for k, shape in entries(name)}
    model.load_state_dict(state, strict=True, assign=True)


def test_the_models_verb_lists_them_with_their_counts():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["models"]) == 0  # list_models, printed
    logging.getLogger().handlers.clear()
    listed = {line.split()[0]: int(line.split()[-2].strip("(").replace(",", ""))
              for line in out.getvalue().splitlines() if line.strip()}
    assert {n: listed[f"original_{n}"] for n in NAMES} == {n: FIXTURE[n]["parameters"] for n in NAMES}
    # option B's two projection shortcuts: 2,752 more than our option-A resnet56
    assert listed["original_resnet56"] == 855_770 == listed["resnet56"] + 2_752


@pytest.mark.parametrize("name", ["resnet20", "resnet56_noshort", "wrn56_2", "resnet50_16_noshort", "vgg9"])
def test_random_tensors_of_the_original_keys_load_strictly(name):
    state = random_state(name)
    model = build_model(f"original_{name}")
    model.load_state_dict(state, strict=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


# --- the function: the original's ResNets written out -----------------------------------------

def reference_resnet(state: dict[str, torch.Tensor], x: torch.Tensor, residual: bool) -> torch.Tensor:
    """The original code's ResNet, ResNet_cifar and WResNet_cifar in eval mode, from the state dict
    alone: blocks (basic, or bottleneck where conv3 exists), stride 2 in the first block of every
    stage but the first, a 1x1-conv-BN shortcut where the state has one, no ReLU after the last BN
    of a bottleneck without skip connection, and its fixed average pool."""
    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], training=False, eps=1e-5)

    def conv(t, p, stride=1):
        w = state[f"{p}.weight"]
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    out = F.relu(bn(conv(x, "conv1"), "bn1"))
    stages = 0
    while f"layer{stages + 1}.0.conv1.weight" in state:
        stages += 1
        b = 0
        while (p := f"layer{stages}.{b}") + ".conv1.weight" in state:
            stride = 2 if stages > 1 and b == 0 else 1
            bottleneck = f"{p}.conv3.weight" in state
            if bottleneck:
                h = F.relu(bn(conv(out, f"{p}.conv1"), f"{p}.bn1"))
                h = F.relu(bn(conv(h, f"{p}.conv2", stride), f"{p}.bn2"))
                h = bn(conv(h, f"{p}.conv3"), f"{p}.bn3")
            else:
                h = F.relu(bn(conv(out, f"{p}.conv1", stride), f"{p}.bn1"))
                h = bn(conv(h, f"{p}.conv2"), f"{p}.bn2")
            if residual:
                skip = out
                if f"{p}.shortcut.0.weight" in state:
                    skip = bn(conv(out, f"{p}.shortcut.0", stride), f"{p}.shortcut.1")
                h = F.relu(h + skip)
            elif not bottleneck:
                h = F.relu(h)
            out = h
            b += 1
    out = F.avg_pool2d(out, 8 if stages == 3 else 4)  # (B, C, 1, 1) on 32x32 images
    return F.linear(out.flatten(1), state["linear.weight"], state["linear.bias"])


@pytest.mark.parametrize("name", ["resnet20", "resnet20_noshort", "wrn56_2", "resnet18", "resnet50_noshort"])
@torch.no_grad()
def test_outputs_equal_the_original_resnets(name):
    state = random_state(name, seed=1)
    model = build_model(f"original_{name}").eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = reference_resnet(state, x, residual="noshort" not in name)
    got = model(x)
    assert expected.abs().max() > 0.1  # the check below is not one of two near-zero outputs
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- the original code's checkpoint files -------------------------------------------------------

def original_layout(model: torch.nn.Module, kind: str):
    """What the original code's cifar10/main.py and its users saved of `model`."""
    if kind == "bare":
        return model.state_dict()
    if kind == "state_dict":
        return {"acc": 93.08, "epoch": 300, "state_dict": model.state_dict()}
    if kind == "data_parallel":  # trained on several GPUs; acc a 0-dim tensor (PyTorch 0.4 era)
        return {"acc": torch.tensor(93.08), "epoch": 300, "state_dict": torch.nn.DataParallel(model).state_dict()}
    if kind == "before_0.4.1":  # BatchNorm had no num_batches_tracked counter then, state dicts no metadata
        return {"acc": 93.08, "epoch": 300, "state_dict": collections.OrderedDict(
            (k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))}
    raise AssertionError(kind)


def loaded(name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(f"original_{name}")
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def resnet56_state():
    return random_state("resnet56", seed=3)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "pre_1.6_format"])
@pytest.mark.parametrize("kind", ["bare", "state_dict", "data_parallel", "before_0.4.1"])
def test_original_checkpoint_files_load_and_give_their_outputs(tmp_path, resnet56_state, kind, zipped):
    path = tmp_path / "model_300.t7"
    torch.save(original_layout(loaded("resnet56", resnet56_state), kind), path, _use_new_zipfile_serialization=zipped)
    torch.load(path, weights_only=True)  # tensors, floats and ints only: no trust needed
    model = build_model("original_resnet56").eval()
    apply_state_dict(model, load_state_dict(path))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference_resnet(resnet56_state, x, residual=True)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert len(counters) == 57
    # the file's counters, or where it has none the fresh model's own
    assert all(v.item() == (0 if kind == "before_0.4.1" else 300 * 391) for v in counters.values())


@pytest.mark.slow  # a whole surface job: about 3 s of CPU each
@pytest.mark.parametrize("name, kind", [("resnet56", "data_parallel"), ("resnet56_noshort", "before_0.4.1")])
def test_a_surface_from_an_original_checkpoint_centres_on_its_loss(tmp_path, name, kind):
    state = random_state(name, seed=5)
    ckpt = tmp_path / "model_300.t7"
    torch.save(original_layout(loaded(name, state), kind), ckpt)
    spec = specs.from_dict({
        "model": {"name": f"original_{name}", "checkpoint": str(ckpt)},
        "data": {"name": "synthetic", "splits": ["train"], "max_samples": 4},
        "grid": {"x": "0:0:1"},
        "evaluation": {"device": "cpu", "batch_size": 4},
        "output": {"surface": str(tmp_path / "surf.h5")},
    })
    assert run_serial(SurfaceWork(spec)) == 0
    with h5py.File(tmp_path / "surf.h5", "r") as f:
        assert f["xcoordinates"][0] == 0.0 and f["train_done"][0] == 1
        centre = f["train_loss"][0]
    inputs, targets = datasets.load_split(spec.data, "train")
    model = loaded(name, state)
    with torch.no_grad():
        plain = F.cross_entropy(model(inputs), targets).item()
    assert abs(plain - 2.302585) > 0.05  # not the uniform guess a wrong load could also give
    assert centre == pytest.approx(plain, abs=1e-5)


# --- a user who names the network as the original code did --------------------------------------

def test_an_original_checkpoint_for_our_resnet56_names_the_model_to_use(tmp_path, resnet56_state):
    path = tmp_path / "model_300.t7"
    torch.save(original_layout(loaded("resnet56", resnet56_state), "before_0.4.1"), path)
    with pytest.raises(UserError) as info:
        build_and_load(specs.Model(name="resnet56", checkpoint=str(path)), in_channels=3)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.checkpoint: does not fit the model: ")
    assert "unexpected 10 key(s): layer2.0.shortcut.0.weight" in message
    assert message.endswith('set model.name = "original_resnet56"')
    # a checkpoint of neither network gets no such hint
    torch.save({"state_dict": build_model("resnet20").state_dict()}, path)
    with pytest.raises(UserError) as info:
        build_and_load(specs.Model(name="resnet56", checkpoint=str(path)), in_channels=3)
    assert "original_" not in str(info.value)


@pytest.mark.parametrize("name, words", [
    ("resnet18", 'unknown model \'resnet18\'; the original loss-landscape code\'s resnet18 is "original_resnet18"'),
    ("original_resnet32", "e.g. original_resnet56 (`losslandscape models` lists them all)"),
])
def test_a_name_of_the_original_loader_is_pointed_to_its_original_model(name, words):
    with pytest.raises(UserError, match="^model.name: ") as info:
        build_model(name)
    assert words in str(info.value) and "\n" not in str(info.value)
