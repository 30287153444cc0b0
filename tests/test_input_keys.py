"""Dict batches and the keys given to the model (issue 30, item 8): a dict batch is passed whole,
labels too, as `model(**batch)`; `data.input_keys` (the `input_keys=` keyword) names the keys
passed, and the targets are still `batch["labels"]`. Checked with a real tiny GPT-2 built from a
config and with a plain `forward(self, x)` model, against plain loops over the moved models."""

from __future__ import annotations

import copy
import textwrap

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import losslandscape as ll
from losslandscape.errors import UserError
from losslandscape.frontends import cli

GRID = "-1:1:3"


def moved(model: torch.nn.Module, surface, a: float) -> torch.nn.Module:
    """A copy of `model` with its parameters at base + a * (the file's x direction)."""
    twin = copy.deepcopy(model)
    with h5py.File(surface, "r") as f:
        dx = {k: torch.from_numpy(f["directions/x"][k][...]) for k in f["directions/x"]}
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.add_(a * dx[name].to(p.dtype))
    return twin.eval()


def plain_losses(model, surface, batches, call) -> np.ndarray:
    """Mean cross-entropy over every example at each x of GRID, by a plain loop."""
    out = []
    for a in np.linspace(-1, 1, 3):
        net, total, n = moved(model, surface, float(a)), 0.0, 0
        with torch.no_grad():
            for batch in batches:
                total += float(F.cross_entropy(call(net, batch), batch["labels"], reduction="sum"))
                n += len(batch["labels"])
        out.append(total / n)
    return np.array(out)


# --- a real Hugging Face model -----------------------------------------------------------------

def gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2, num_labels=3,
                        pad_token_id=0)
    return GPT2ForSequenceClassification(config).eval()


class Tokens(Dataset):
    """Padded sequences with their attention masks and a class label, as a tokenizer gives them."""

    def __init__(self):
        gen = torch.Generator().manual_seed(3)
        self.ids = torch.randint(1, 50, (10, 8), generator=gen)
        self.mask = torch.ones(10, 8, dtype=torch.long)
        for i in range(10):  # right padding of i % 4 tokens
            if i % 4:
                self.ids[i, -(i % 4):], self.mask[i, -(i % 4):] = 0, 0
        self.labels = torch.randint(0, 3, (10,), generator=gen)

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def test_a_hugging_face_model_is_called_with_the_input_keys_only(tmp_path):
    model = gpt2()
    calls: list[set] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(set(kwargs)), with_kwargs=True)
    loader = DataLoader(Tokens(), batch_size=4)
    out = tmp_path / "s.h5"
    s = ll.compute_surface(model, loader, x=GRID, out=out, threads=1, input_keys=["input_ids", "attention_mask"])
    assert calls and all(keys == {"input_ids", "attention_mask"} for keys in calls), calls
    want = plain_losses(model, out, loader, lambda net, b: net(input_ids=b["input_ids"],
                                                                attention_mask=b["attention_mask"]).logits)
    np.testing.assert_allclose(s.train_loss, want, rtol=1e-5)
    # the keys given are part of what the file was computed with: other keys are another surface
    with pytest.raises(UserError, match="data.input_keys"):
        ll.compute_surface(model, loader, x=GRID, out=out, threads=1, input_keys=["input_ids"])


def test_without_input_keys_a_dict_batch_is_passed_whole_labels_too(tmp_path):
    model = gpt2()
    calls: list[set] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(set(kwargs)), with_kwargs=True)
    ll.compute_surface(model, DataLoader(Tokens(), batch_size=4), x="0:1:2", out=tmp_path / "s.h5", threads=1)
    assert calls and all(keys == {"input_ids", "attention_mask", "labels"} for keys in calls), calls


# --- a plain forward(self, x) model on dict batches ----------------------------------------------

PLAIN = '''
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.tanh(x))


def build():
    torch.manual_seed(0)
    return Net()


class Items(Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(4)
        self.x, self.y = torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def data(split):
    return DataLoader(Items(), batch_size=8)
'''


@pytest.fixture
def plain(tmp_path, monkeypatch):
    (tmp_path / "plainkeys.py").write_text(textwrap.dedent(PLAIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    return importlib.import_module("plainkeys")


def test_a_plain_model_takes_dict_batches_with_input_keys(plain, tmp_path):
    model, loader = plain.build(), plain.data("train")
    out = tmp_path / "s.h5"
    s = ll.compute_surface(model, loader, x=GRID, out=out, threads=1, input_keys=["x"])
    want = plain_losses(model, out, loader, lambda net, b: net(b["x"]))
    np.testing.assert_allclose(s.train_loss, want, rtol=1e-6)


def test_the_command_line_takes_the_same_field(plain, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    code = cli.main(["surface", "--model.name=plainkeys:build", "--data.name=plainkeys:data", "--data.input_keys=x",
                     f"--grid.x={GRID}", f"--output.surface={out}", "--evaluation.threads=1", "--evaluation.device=cpu"])
    assert code == 0, capsys.readouterr().err
    want = plain_losses(plain.build(), out, plain.data("train"), lambda net, b: net(b["x"]))
    np.testing.assert_allclose(ll.open_surface(out).train_loss, want, rtol=1e-6)


def test_a_plain_model_given_the_labels_is_one_line(plain, tmp_path):
    with pytest.raises(UserError, match="labels") as err:
        ll.compute_surface(plain.build(), plain.data("train"), x=GRID, out=tmp_path / "s.h5", threads=1)
    assert "\n" not in str(err.value) and not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("keys, data, words", [
    (["x", "mask"], "loader", "data.input_keys: a batch has no 'mask'; its keys are 'x', 'labels'"),
    (["x"], "tensors", "data.input_keys: the train split is (inputs, targets) tensors, not dict batches"),
    (["x"], "tuples", "data.input_keys: the batches are lists, not dicts"),
])
def test_input_keys_that_do_not_fit_are_one_line(plain, tmp_path, keys, data, words):
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    given = {"loader": plain.data("train"), "tensors": (x, y), "tuples": DataLoader(TensorDataset(x, y))}[data]
    with pytest.raises(UserError) as err:
        ll.compute_surface(plain.build(), given, x=GRID, out=tmp_path / "s.h5", threads=1, input_keys=keys)
    assert str(err.value).startswith(words) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "s.h5").exists()
