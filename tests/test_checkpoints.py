"""Checkpoints: every accepted layout loads the same weights; unsafe, foreign and broken files are refused."""

import collections
import os

import pytest
import torch

from losslandscape.inputs.checkpoints import apply_state_dict, build_and_load, file_sha256, load_state_dict
from losslandscape.errors import UserError
from losslandscape.inputs.models import build_model
from losslandscape.spec import Model


class Opaque:
    """A custom class: torch.load(weights_only=True) must not construct it."""

    def __init__(self):
        self.note = "trained on Tuesday"


@pytest.fixture(scope="module")
def trained():
    """A resnet20 whose weights and BatchNorm statistics differ from any fresh initialisation."""
    torch.manual_seed(1)
    model = build_model("resnet20", in_channels=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    model(torch.randn(16, 1, 8, 8))  # moves the running means and variances
    return model.eval()


@pytest.fixture(scope="module")
def probe():
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def fresh() -> torch.nn.Module:
    torch.manual_seed(123)
    return build_model("resnet20", in_channels=1).eval()


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def layout(kind: str, model: torch.nn.Module):
    state = model.state_dict()
    if kind == "plain":
        return state
    if kind == "state_dict":
        return {"state_dict": state, "epoch": 300, "acc": 93.1}
    if kind == "model_state_dict":
        return {"model_state_dict": state, "optimizer_state_dict": {"lr": 0.1}}
    if kind == "module_prefix":
        return collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    if kind == "module_prefix_wrapped":
        return {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["plain", "state_dict", "model_state_dict", "module_prefix",
                                  "module_prefix_wrapped"])
def test_accepted_layouts_give_the_saved_models_outputs(tmp_path, trained, probe, kind):
    path = tmp_path / "ckpt.pt"
    torch.save(layout(kind, trained), path)
    model = fresh()
    assert not torch.equal(outputs(model, probe), outputs(trained, probe))
    state = load_state_dict(path)
    assert not any(k.startswith("module.") for k in state)
    apply_state_dict(model, state)
    assert torch.equal(outputs(model, probe), outputs(trained, probe))


def test_build_and_load_uses_the_spec(tmp_path, trained, probe):
    path = tmp_path / "model_300.t7"  # the original code's suffix: the name does not matter
    torch.save({"state_dict": trained.state_dict()}, path)
    model = build_and_load(Model(name="resnet20", checkpoint=str(path)), in_channels=1)
    assert torch.equal(outputs(model, probe), outputs(trained, probe))
    # an explicit checkpoint argument wins over model.checkpoint
    other = build_and_load(Model(name="resnet20", checkpoint="/nonexistent.pt"), 1, checkpoint=str(path))
    assert torch.equal(outputs(other, probe), outputs(trained, probe))
    # no checkpoint: a fresh model of the right shape
    assert build_and_load(Model(name="resnet20"), in_channels=1)(probe).shape == (6, 10)


@pytest.mark.parametrize("kind", ["whole_module", "custom_object", "os_class"])
def test_pickled_objects_need_trust(tmp_path, trained, probe, kind):
    path = tmp_path / "pickled.pt"
    if kind == "whole_module":
        torch.save(trained, path)
    elif kind == "custom_object":
        torch.save({"state_dict": trained.state_dict(), "meta": Opaque()}, path)
    else:
        torch.save({"state_dict": trained.state_dict(), "type": os.stat_result}, path)
    with pytest.raises(UserError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and "--trust-checkpoint" in message and str(path) in message
    assert message.startswith("model.checkpoint:")

    model = fresh()
    apply_state_dict(model, load_state_dict(path, trust=True))
    assert torch.equal(outputs(model, probe), outputs(trained, probe))


def test_trust_through_the_spec(tmp_path, trained, probe):
    path = tmp_path / "whole.pt"
    torch.save(trained, path)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        build_and_load(Model(checkpoint=str(path)), in_channels=1)
    model = build_and_load(Model(checkpoint=str(path), trust_checkpoint=True), in_channels=1)
    assert torch.equal(outputs(model, probe), outputs(trained, probe))


def test_weights_of_another_model_name_the_keys(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(build_model("resnet32", in_channels=1).state_dict(), path)
    with pytest.raises(UserError) as info:
        apply_state_dict(fresh(), load_state_dict(path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert "unexpected" in message and "layer1.3" in message  # resnet32 has 5 blocks per stage, resnet20 3


def test_missing_keys_and_wrong_shapes_are_named(tmp_path):
    state = fresh().state_dict()
    del state["linear.weight"]
    with pytest.raises(UserError) as info:
        apply_state_dict(fresh(), state)
    assert "missing" in str(info.value) and "linear.weight" in str(info.value)

    three_channel = build_model("resnet20", in_channels=3).state_dict()
    with pytest.raises(UserError) as info:
        apply_state_dict(fresh(), three_channel)
    message = str(info.value)
    assert "\n" not in message and "wrong shape" in message and "conv1.weight (16, 3, 3, 3) vs (16, 1, 3, 3)" in message


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_are_not_a_checkpoint(tmp_path, seed):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.uint8).numpy().tobytes())
    for trust in (False, True):
        with pytest.raises(UserError) as info:
            load_state_dict(path, trust=trust)
        message = str(info.value)
        assert "\n" not in message and "not a PyTorch checkpoint" in message and str(path) in message
        assert "--trust-checkpoint" not in message  # trusting noise would not help


@pytest.mark.parametrize("content, message", [(b"", "is empty; expected a PyTorch checkpoint"),
                                              (b"hello, I am a text file\n" * 20, "not a PyTorch checkpoint")])
def test_text_and_empty_files_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_state_dict(path)


def test_checkpoints_without_tensors(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(UserError) as info:
        load_state_dict(path)
    assert "no state dict" in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(UserError) as info:
        load_state_dict(path, field="model.checkpoint2")
    assert str(info.value) == f"model.checkpoint2: no such file {str(path)!r}"


def test_file_sha256(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
