"""A Hugging Face model folder as model.checkpoint (issue 30, item 10): `model.safetensors`, the
sharded `model.safetensors.index.json` with its shards, or `pytorch_model.bin` (loaded with
weights_only; written as transformers < 5 wrote it), from real `save_pretrained` folders of a tiny GPT-2 built from a config, loaded
into the model built from the config; the surface's centre is a plain forward pass of the saved
model. A folder without weights is one line naming what was looked for."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

import losslandscape as ll
from losslandscape.errors import UserError
from losslandscape.frontends import cli
from losslandscape.inputs.checkpoints import load_state_dict
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

FACTORY = '''
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def config():
    return GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)


def build():
    torch.manual_seed(123)  # another initialisation than the saved model's: the weights must come from the folder
    return GPT2LMHeadModel(config())


def data(split):
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 40, (6, 9), generator=gen)
    return ids[:, :-1], ids[:, 1:]  # next-token targets
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the factory's folder, the saved model, {layout: its save_pretrained folder})."""
    import importlib
    import sys

    root = tmp_path_factory.mktemp("hf")
    (root / "hfmod.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module("hfmod")
    finally:
        sys.path.remove(str(root))
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(mod.config()).eval()
    folders = {"safetensors": root / "single", "sharded": root / "sharded", "bin": root / "bin"}
    model.save_pretrained(folders["safetensors"], safe_serialization=True)
    model.save_pretrained(folders["sharded"], safe_serialization=True, max_shard_size="20KB")
    # the pickle format of transformers < 5 (save_pretrained(safe_serialization=False)); 5 writes safetensors only
    model.config.save_pretrained(folders["bin"])
    torch.save({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, folders["bin"] / "pytorch_model.bin")
    return root, model, folders


def test_each_layout_loads_the_saved_weights(saved):
    _, model, folders = saved
    assert sorted(p.name for p in folders["sharded"].iterdir() if p.suffix == ".safetensors")[1:]  # several shards
    assert (folders["bin"] / "pytorch_model.bin").is_file() and not (folders["bin"] / "model.safetensors").exists()
    own = model.state_dict()
    for layout, folder in folders.items():
        state = load_state_dict(folder)
        # save_pretrained leaves out lm_head.weight, tied to the input embedding (filled on loading)
        assert set(state) == set(own) - {"lm_head.weight"}, layout
        assert all(torch.equal(state[k], own[k]) for k in state), layout


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_a_surface_around_a_model_folder(saved, layout, tmp_path, monkeypatch, capsys):
    root, model, folders = saved
    monkeypatch.chdir(root)
    out = tmp_path / "s.h5"
    args = ["surface", "--model.name=hfmod:build", "--data.name=hfmod:data", f"--model.checkpoint={folders[layout]}",
            "--grid.x=-1:1:3", f"--output.surface={out}", "--evaluation.threads=1", "--evaluation.device=cpu"]
    assert cli.main(args) == 0, capsys.readouterr().err
    import hfmod

    ids, targets = hfmod.data("train")
    with torch.no_grad():
        want = float(F.cross_entropy(model(ids).logits.flatten(0, 1), targets.flatten()))
    assert ll.open_surface(out).train_loss[1] == pytest.approx(want, rel=1e-6)
    assert cli.main(args) == 0  # the folder's digest is the identity a resume matches


def test_other_weights_in_the_same_folder_are_another_surface(saved, tmp_path, monkeypatch, capsys):
    root, model, _ = saved
    monkeypatch.chdir(root)
    folder, out = tmp_path / "folder", tmp_path / "s.h5"
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    args = ["surface", "--model.name=hfmod:build", "--data.name=hfmod:data", f"--model.checkpoint={folder}",
            "--grid.x=-1:1:3", f"--output.surface={out}", "--evaluation.threads=1", "--evaluation.device=cpu"]
    assert cli.main(args) == 0, capsys.readouterr().err
    changed = type(model)(model.config)  # other weights, saved over the same shard files
    changed.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB")
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "model.checkpoint (sha256)" in err and len(err.strip().splitlines()) == 1, err


def test_a_folder_without_weights_is_one_line_naming_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as err:
        load_state_dict(tmp_path)
    line = str(err.value)
    assert line.startswith(f"model.checkpoint: the folder {str(tmp_path)!r} has none of ") and "\n" not in line
    assert all(name in line for name in HF_WEIGHTS)


def test_a_bin_that_needs_unpickling_is_refused(saved, tmp_path):
    """pytorch_model.bin loads only without running code (weights_only), like any checkpoint."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="needs full unpickling"):
        load_state_dict(tmp_path)


def test_an_index_naming_a_shard_outside_its_folder_is_one_line(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../elsewhere.safetensors"}}')
    with pytest.raises(UserError, match="names the shard '../elsewhere.safetensors', which is not a file in"):
        load_state_dict(tmp_path)
