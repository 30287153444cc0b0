"""A model too large for one rank (evaluation.ranks_per_model with a model.checkpoint): built
with its parameters on the meta device, its buffers real, its weights read from the checkpoint
a tensor or some rows at a time (inputs/checkpoints.py), and sharded with each rank's rows
filled from there (numerics/shard.py). Every expected value here is the test's own tensors,
saved by the test in each format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from losslandscape.errors import UserError
from losslandscape.inputs.checkpoints import CheckpointTensors, build_on_meta, parameters_on_meta


class Rotary(torch.nn.Module):
    """Two layers and a buffer computed in the constructor, not saved (as a rotary embedding's)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 5)
        self.b = torch.nn.Linear(5, 3, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, 6, 2).float() / 6), persistent=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + self.inv_freq.sum()))


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"a.weight": torch.randn(5, 6, generator=g), "a.bias": torch.randn(5, generator=g),
            "b.weight": torch.randn(3, 5, generator=g), "scale": torch.tensor(2.5)}


def _saved(tmp_path, how: str):
    state = _state()
    if how == "safetensors":
        from safetensors.torch import save_file
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif how == "zip":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif how == "legacy":
        path = tmp_path / "w.pt"
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:  # a Hugging Face folder, its tensors in two safetensors shards named by an index
        from safetensors.torch import save_file
        path = tmp_path / "hf"
        path.mkdir()
        names = sorted(state)
        shards = {"one.safetensors": names[:2], "two.safetensors": names[2:]}
        for shard, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(path / shard))
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return path, state


@pytest.mark.parametrize("how", ["safetensors", "zip", "legacy", "folder"])
def test_a_checkpoint_gives_each_tensor_and_any_rows_of_it(tmp_path, how):
    path, state = _saved(tmp_path, how)
    tensors = CheckpointTensors(path)
    assert tensors.shapes == {k: tuple(v.shape) for k, v in state.items()}
    for k, v in state.items():
        assert torch.equal(tensors.rows(k), v)
        if v.dim():
            assert torch.equal(tensors.rows(k, 1, 4), v[1:4])


def test_a_checkpoint_sent_to_another_rank_opens_itself_there(tmp_path):
    import pickle

    path, state = _saved(tmp_path, "safetensors")
    copy = pickle.loads(pickle.dumps(CheckpointTensors(path)))
    assert torch.equal(copy.rows("a.weight", 2, 5), state["a.weight"][2:5])


def test_parameters_on_meta_keeps_the_buffers_and_ends_with_the_block():
    with parameters_on_meta():
        model = Rotary()
    assert all(p.is_meta for p in model.parameters())
    assert torch.equal(model.inv_freq, Rotary().inv_freq) and not model.inv_freq.is_meta
    with pytest.raises(RuntimeError), parameters_on_meta():
        raise RuntimeError("a factory that fails")
    assert not Rotary().a.weight.is_meta


def _gpt2_spec(tmp_path, drop: str | None = None, change: str | None = None):
    """A tiny GPT-2 zoo-free factory's spec, its checkpoint saved without the tied lm_head."""
    (tmp_path / "tiny.py").write_text(
        "def model():\n"
        "    from transformers import GPT2Config, GPT2LMHeadModel\n"
        "    return GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2))\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        import tiny
        importlib.reload(tiny)
        torch.manual_seed(1)
        whole = tiny.model()
    finally:
        sys.path.remove(str(tmp_path))
    state = {k: v.clone() for k, v in whole.state_dict().items() if k != "lm_head.weight"}
    if drop:
        del state[drop]
    if change:
        state[change] = torch.zeros(3)
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "w.safetensors"))
    spec = SimpleNamespace(name="tiny:model", num_classes=10, checkpoint=str(tmp_path / "w.safetensors"),
                           trust_checkpoint=False)
    return spec, whole


def test_a_model_built_on_meta_reads_its_tied_weights_and_buffers_from_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    spec, whole = _gpt2_spec(tmp_path)
    model, rows = build_on_meta(spec, 3)
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    names = dict(whole.named_parameters())
    assert set(rows) == set(names)  # lm_head is wte's twin: not a name of its own
    for name, p in names.items():
        assert torch.equal(rows[name], p.detach())
        if p.dim():
            assert torch.equal(rows.rows(name, 1, 3), p.detach()[1:3])


@pytest.mark.parametrize("drop, change, words", [
    ("transformer.h.0.mlp.c_fc.bias", None, "missing 1 key(s): transformer.h.0.mlp.c_fc.bias"),
    (None, "transformer.ln_f.bias", "wrong shape 1 key(s): transformer.ln_f.bias (3,) vs (8,)"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line_from_its_header(tmp_path, monkeypatch, drop, change, words):
    monkeypatch.syspath_prepend(str(tmp_path))
    spec, _ = _gpt2_spec(tmp_path, drop, change)
    with pytest.raises(UserError, match="model.checkpoint: does not fit the model") as info:
        build_on_meta(spec, 3)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_factory_that_computes_with_its_parameters_is_one_line_naming_the_meta_device(tmp_path, monkeypatch):
    (tmp_path / "computes.py").write_text(
        "import torch\n"
        "def model():\n"
        "    m = torch.nn.Linear(3, 2)\n"
        "    m.register_buffer('norm', m.weight.norm().reshape(1) + torch.ones(1))  # meta + a real tensor\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec, _ = _gpt2_spec(tmp_path)
    spec.name = "computes:model"
    with pytest.raises(UserError, match="model.name: computes:model failed with its parameters on the meta device"):
        build_on_meta(spec, 3)


def test_a_parameter_a_factory_sets_without_registering_it_is_read_from_the_checkpoint_too(tmp_path, monkeypatch):
    (tmp_path / "direct.py").write_text(
        "import torch\n"
        "def model():\n"
        "    m = torch.nn.Linear(6, 5)\n"
        "    m._parameters['weight'] = torch.nn.Parameter(torch.full((5, 6), 7.0))  # not through register_parameter\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, state = _saved(tmp_path, "safetensors")
    from safetensors.torch import save_file
    save_file({"weight": state["a.weight"], "bias": state["a.bias"]}, str(tmp_path / "linear.safetensors"))
    spec = SimpleNamespace(name="direct:model", num_classes=10, checkpoint=str(tmp_path / "linear.safetensors"),
                           trust_checkpoint=False)
    model, rows = build_on_meta(spec, 3)
    assert model.weight.is_meta and model.bias.is_meta
    assert torch.equal(rows["weight"], state["a.weight"])


def test_an_old_checkpoint_without_batchnorm_counters_fits_and_keeps_the_model_s_counters(tmp_path, monkeypatch):
    """A checkpoint saved before PyTorch 0.4.1 has no `num_batches_tracked`: it still fits (the
    model's own counter is kept), and the running statistics are read from the file."""
    (tmp_path / "bn.py").write_text(
        "import torch\n"
        "def model():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    whole = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    state = {k: v.clone() for k, v in whole.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["1.running_mean"] = torch.arange(4.0)
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "old.safetensors"))
    spec = SimpleNamespace(name="bn:model", num_classes=10, checkpoint=str(tmp_path / "old.safetensors"),
                           trust_checkpoint=False)
    model, rows = build_on_meta(spec, 1)
    assert torch.equal(model[1].running_mean, torch.arange(4.0)) and int(model[1].num_batches_tracked) == 0
    assert torch.equal(rows["0.weight"], whole[0].weight.detach())
    state["1.running_var"] = torch.ones(3)  # and a wrong shape beside the missing counter is still one line
    save_file(state, str(tmp_path / "old.safetensors"))
    with pytest.raises(UserError, match=r"wrong shape 1 key\(s\): 1.running_var"):
        build_on_meta(spec, 1)


def test_a_sharded_meta_model_fills_its_shards_from_the_checkpoint_and_keeps_its_buffers(tmp_path):
    """One rank's group (gloo, world of 1): it holds every row, read from the checkpoint."""
    import torch.distributed as dist

    from losslandscape.numerics.shard import shard_model

    path, state = _saved(tmp_path, "safetensors")
    tensors = CheckpointTensors(path)
    with parameters_on_meta():
        model = Rotary()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        local, rows, held, total, _ = shard_model(model, ["a.weight", "b.weight"], torch.device("cpu"),
                                                  lambda k, start, stop: tensors.rows(k, start, stop))
        assert held == total == 5 * 6 + 5 + 3 * 5
        assert rows == {"a.weight": (0, (5, 6)), "b.weight": (0, (3, 5))}
        for k in ("a.weight", "a.bias", "b.weight"):
            assert torch.equal(dict(model.named_parameters())[k].full_tensor(), state[k])
        assert torch.equal(local["a.weight"], state["a.weight"])
        assert torch.equal(model.inv_freq, Rotary().inv_freq)
        x = torch.randn(4, 6)
        plain = Rotary()
        plain.load_state_dict({k: v for k, v in state.items() if k != "scale"})
        with torch.no_grad():
            assert torch.allclose(model(x), plain(x))
    finally:
        dist.destroy_process_group()


def test_the_room_a_new_file_needs_is_worked_out_from_the_checkpoint_header(tmp_path, monkeypatch):
    """The coordinator sizes a new file (its disk-room check) from the directions' shapes: over
    a checkpoint that is its header, nothing read (a 70B checkpoint is not read for it)."""
    from losslandscape.numerics.directions import SeededDirection
    from losslandscape.surfacefile.format import new_file_nbytes

    monkeypatch.syspath_prepend(str(tmp_path))
    spec, whole = _gpt2_spec(tmp_path)
    model, rows = build_on_meta(spec, 3)
    reads = []
    read = CheckpointTensors.rows
    monkeypatch.setattr(CheckpointTensors, "rows", lambda self, *args: reads.append(args) or read(self, *args))
    names = [n for n, _ in model.named_parameters()]

    def new(weights):
        axes = SimpleNamespace(size=9, x=[-1.0, 0.0, 1.0], y=[-1.0, 0.0, 1.0])
        x, y = (SeededDirection(weights, 0, axis, "filter", "biasbn") for axis in (0, 1))
        return SimpleNamespace(axes=axes, x=x, y=y, info={}, spec=SimpleNamespace(to_json=lambda: "{}"))

    lazy = new_file_nbytes(new(rows.only(names)))
    assert reads == []
    assert lazy == new_file_nbytes(new({k: p.detach() for k, p in whole.named_parameters()}))
