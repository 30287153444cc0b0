"""Data and losses as users have them, end to end through the `surface` verb: a Hugging Face
GPT-2 on byte tokens streamed by a DataLoader (its own loss, token-level cross-entropy, bf16
weights), a regression MLP with float targets (mse, summary, render), a user's loss function,
and the inputs a run must refuse in one line before it writes anything.

Every value is checked against an independent loop written here: the directions are read
from the surface file (directions/x and directions/y, one dataset per moved tensor), the
weights are set to theta + a*dx + b*dy by hand, and the losses are summed over every batch
and divided once by the number of tokens (or target elements, or examples).

The factories are modules written into a temporary folder, which is the run's working
directory, as a user's would be; each module has a name of its own, since Python and the
tool's factory cache keep a module for the whole session.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_one_line_error, losslandscape

SEQ = 16  # tokens per sequence
IGNORED_BYTE = ord(" ")  # labels of this byte are -100: ignored, so batches score unequal token counts

TEXT = "\n".join(
    f"Line {i}: the loss landscape of a {w} network is {v} near its minimum; sharp minima generalise {g}."
    for i, (w, v, g) in enumerate(
        (w, v, g) for w in ("deep", "wide", "residual", "plain") for v in ("flat", "convex", "chaotic")
        for g in ("worse", "better", "differently")))


# ---------------------------------------------------------------- a tiny GPT-2 on byte tokens

LM_MODULE = '''
"""A tiny GPT-2 saved with save_pretrained (safetensors), on byte tokens of text.txt."""
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).parent
SEQ = {seq}
IGNORED = {ignored}


def model():
    from transformers import GPT2LMHeadModel
    return GPT2LMHeadModel.from_pretrained(HERE / "gpt2-tiny")


def model_bf16():
    return model().to(torch.bfloat16)


class Bytes(Dataset):
    """Sequences of SEQ bytes; the last one shorter batches out as a smaller final batch."""

    def __init__(self, split, next_tokens):
        data = (HERE / "text.txt").read_bytes()
        data = data[: len(data) * 3 // 4] if split == "train" else data[len(data) * 3 // 4:]
        self.ids = torch.tensor(list(data), dtype=torch.long)
        self.n = (len(self.ids) - 1) // SEQ
        self.next_tokens = next_tokens

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.ids[i * SEQ:(i + 1) * SEQ]
        if self.next_tokens:  # labels already shifted: token t is scored against token t + 1
            y = self.ids[i * SEQ + 1:(i + 1) * SEQ + 1].clone()
            y[y == IGNORED] = -100
            return x, y
        y = x.clone()
        y[y == IGNORED] = -100
        return {{"input_ids": x, "labels": y}}


def data(split):
    """Dict batches, labels = the inputs (the model shifts them itself)."""
    return DataLoader(Bytes(split, next_tokens=False), batch_size=6)


class Masked(Bytes):
    """The last batch's labels all -100 (say, prompts whose answers were cut off): nothing to score."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i >= (self.n - 1) // 6 * 6:
            item["labels"][:] = -100
        return item


def masked(split):
    return DataLoader(Masked(split, next_tokens=False), batch_size=6)


def next_data(split):
    """Tuple batches (input_ids, next_ids): model(input_ids) is scored against next_ids."""
    return DataLoader(Bytes(split, next_tokens=True), batch_size=6)
'''


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    """A folder with text.txt, a randomly initialised tiny GPT-2 in gpt2-tiny/ and its factories in anylm.py."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("lm")
    (d / "text.txt").write_text(TEXT)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=0.1)
    GPT2LMHeadModel(config).save_pretrained(d / "gpt2-tiny", safe_serialization=True)
    assert (d / "gpt2-tiny" / "model.safetensors").is_file()
    (d / "anylm.py").write_text(LM_MODULE.format(seq=SEQ, ignored=IGNORED_BYTE))
    return d


def factory(folder: Path, module: str, name: str):
    """The function `name` of the module a test wrote into `folder` (the same one the run imports)."""
    import importlib
    import sys

    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return getattr(importlib.import_module(module), name)


def run_surface(cwd: Path, out: Path, *args):
    """The surface verb in this process, on one CPU thread (the tests share two cores)."""
    return losslandscape("surface", f"--output.surface={out}", "--evaluation.device=cpu", "--evaluation.threads=1",
                         *args, cwd=cwd)


def surface(cwd: Path, out: Path, *args) -> dict:
    """Run the surface verb; returns the file's datasets, and its directions as "dx" and "dy"."""
    result = run_surface(cwd, out, *args)
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        got = {k: np.asarray(f[k]) for k in f if isinstance(f[k], h5py.Dataset)}
        got["dx"] = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in f["directions/x"].items()}
        got["dy"] = ({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in f["directions/y"].items()}
                     if "y" in f["directions"] else None)
    return got


@torch.no_grad()
def move(model: torch.nn.Module, base: dict[str, torch.Tensor], got: dict, a: float, b: float) -> None:
    """Set every stored tensor to base + a*dx + b*dy, computed in float32 and rounded once to its dtype."""
    live = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert set(got["dx"]) <= set(live), set(got["dx"]) - set(live)
    for name, dx in got["dx"].items():
        w = base[name].float() + a * dx
        if got["dy"] is not None:
            w = w + b * got["dy"][name]
        live[name].copy_(w.to(live[name].dtype))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}


def at(got: dict, key: str, a: float, b: float | None = None) -> float:
    """The stored value at grid point (a, b)."""
    i = int(np.argmin(np.abs(got["xcoordinates"] - a)))
    if b is None:
        return float(got[key][i])
    j = int(np.argmin(np.abs(got["ycoordinates"] - b)))
    return float(got[key][j, i])


@torch.no_grad()
def lm_token_loss(model, loader, shifted_by_model: bool) -> tuple[float, float, int]:
    """(mean loss over every scored token of the split, token accuracy in percent, token count):
    summed token losses over all batches, divided once. `shifted_by_model`: dict batches whose
    labels are the inputs (position t scored against label t + 1); else (inputs, next tokens)."""
    total, correct, count = 0.0, 0, 0
    for batch in loader:
        if shifted_by_model:
            logits = model(input_ids=batch["input_ids"]).logits[:, :-1]  # (B, T-1, V)
            labels = batch["labels"][:, 1:]  # (B, T-1)
        else:
            logits = model(batch[0]).logits  # (B, T, V)
            labels = batch[1]
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        keep = labels != -100
        total += F.cross_entropy(logits[keep], labels[keep], reduction="sum").double().item()
        correct += int((logits[keep].argmax(-1) == labels[keep]).sum())
        count += int(keep.sum())
    return total / count, 100.0 * correct / count, count


GPT_POINTS = [(0.0, 0.0), (-1.0, 0.0), (0.0, -1.0), (1.0, 1.0)]


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_gpt2_own_loss_and_token_cross_entropy_against_an_independent_loop(lm, tmp_path):
    """One 3x3 surface with evaluation.loss = "model" (dict batches, the model shifts its labels)
    and one with "cross_entropy" on tuple batches (input_ids, next_ids) whose targets are already
    the next tokens: GPT2LMHeadModel(input_ids) returns outputs with .logits (B, T, V), scored
    token by token against (B, T). Labels of spaces are -100 in both (ignored, not counted)."""
    own = surface(lm, tmp_path / "own.h5", "--model.name=anylm:model", "--data.name=anylm:data",
                  "--evaluation.loss=model", "--grid.x=-1:1:3", "--grid.y=-1:1:3", "--directions.ignore=none")
    ce = surface(lm, tmp_path / "ce.h5", "--model.name=anylm:model", "--data.name=anylm:next_data",
                 "--data.splits=train,test", "--grid.x=-1:1:3", "--grid.y=-1:1:3")
    assert "train_acc" not in own and "test_acc" not in own and own["train_loss"].shape == (3, 3)
    assert own["train_done"].all() and not own["test_done"].any() and ce["train_done"].all() and ce["test_done"].all()
    assert ce["train_acc"].shape == (3, 3) and ce["test_acc"].shape == (3, 3)
    assert len(own["dx"]) > 10 and len(ce["dx"]) == len(own["dx"])

    model = factory(lm, "anylm", "model")().eval()
    base = snapshot(model)
    counts = set()
    for got, shifted, splits in ((own, True, ["train"]), (ce, False, ["train", "test"])):
        for a, b in GPT_POINTS:
            move(model, base, got, a, b)
            for split in splits:
                loader = factory(lm, "anylm", "data" if shifted else "next_data")(split)
                loss, acc, n = lm_token_loss(model, loader, shifted)
                counts.add(n)
                assert at(got, f"{split}_loss", a, b) == pytest.approx(loss, rel=1e-5), (shifted, split, a, b)
                if not shifted:
                    assert at(got, f"{split}_acc", a, b) == pytest.approx(acc, abs=1e-9), (split, a, b)
    # a real landscape: the points differ, the (mostly random) accuracy is a token accuracy in percent
    assert len({round(at(ce, "train_loss", a, b), 6) for a, b in GPT_POINTS}) == len(GPT_POINTS)
    assert 0.0 <= ce["train_acc"].min() and ce["train_acc"].max() <= 100.0
    # spaces were ignored: not every position was counted
    n_train = len(factory(lm, "anylm", "next_data")("train").dataset) * SEQ
    assert max(counts) < n_train


def test_token_cross_entropy_on_labels_equal_to_the_inputs_is_a_warning(lm, tmp_path):
    """Hugging Face's labels (the inputs themselves, -100 where ignored) with loss = "cross_entropy",
    which scores position t against label t: one warning line naming the split and what to do;
    next-token labels give none."""
    warned = run_surface(lm, tmp_path / "hf.h5", "--model.name=anylm:model", "--data.name=anylm:data",
                         "--data.input_keys=input_ids", "--evaluation.loss=cross_entropy", "--grid.x=-1:1:3")
    assert warned.returncode == 0, warned.stderr
    lines = [line for line in warned.stderr.splitlines() if "labels equal its input tokens" in line]
    assert len(lines) == 1 and "train: its labels equal its input tokens" in lines[0]
    assert 'give the next tokens as labels, or use loss = "model"' in lines[0]
    quiet = run_surface(lm, tmp_path / "next.h5", "--model.name=anylm:model", "--data.name=anylm:next_data",
                        "--grid.x=-1:1:3")
    assert quiet.returncode == 0 and "labels equal its input tokens" not in quiet.stderr


def test_gpt2_in_bf16_moves_by_a_step_smaller_than_its_rounding(lm, tmp_path):
    """bf16 weights: a point is computed in float32 from the float32 centre and rounded once. A step
    of 1e-3 (below bf16's relative precision for most weights) still moves the loss, and equals a
    reference that rounds theta + a*dx once and runs the forward in bf16."""
    got = surface(lm, tmp_path / "bf16.h5", "--model.name=anylm:model_bf16", "--data.name=anylm:data",
                  "--evaluation.loss=model", "--grid.x=-0.001:0.001:3")
    centre, moved = at(got, "train_loss", 0.0), at(got, "train_loss", 1e-3)
    assert moved != centre

    model = factory(lm, "anylm", "model_bf16")().eval()
    base = snapshot(model)
    assert all(t.dtype == torch.bfloat16 for k, t in base.items() if k in got["dx"])
    loader = factory(lm, "anylm", "data")("train")
    for a in (-1e-3, 0.0, 1e-3):
        move(model, base, {"dx": got["dx"], "dy": None}, a, 0.0)
        want = lm_token_loss(model, loader, shifted_by_model=True)[0]
        # the same bf16 weights and bf16 forward: only the order of the loss's float32 sums differs,
        # so the tolerance is far below bf16's rounding and ten times below the step's effect
        assert at(got, "train_loss", a) == pytest.approx(want, rel=1e-6), a
    assert abs(moved - centre) > 1e-5 * abs(centre)


def test_a_step_below_the_bf16_resolution_is_a_warning_naming_a_range_that_resolves(lm, tmp_path):
    result = run_surface(lm, tmp_path / "tiny.h5", "--model.name=anylm:model_bf16", "--data.name=anylm:data",
                         "--evaluation.loss=model", "--grid.x=-1e-6:1e-6:3")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stderr.splitlines() if "below the resolution" in l)
    reach = float(re.search(r'"-([\d.e+-]+):', line).group(1))
    assert reach > 1e-6
    # the range it names does resolve: no warning there, and the points differ
    again = run_surface(lm, tmp_path / "wide.h5", "--model.name=anylm:model_bf16", "--data.name=anylm:data",
                        "--evaluation.loss=model", f"--grid.x=-{reach}:{reach}:3")
    assert again.returncode == 0 and "below the resolution" not in again.stderr
    with h5py.File(tmp_path / "wide.h5", "r") as f:
        loss = f["train_loss"][...]
    assert loss[0] != loss[1] and loss[2] != loss[1]
    # with no direction held (drawn again at every move), the same warning from the first block drawn
    streamed = run_surface(lm, tmp_path / "streamed.h5", "--model.name=anylm:model_bf16", "--data.name=anylm:data",
                           "--evaluation.loss=model", "--grid.x=-1e-6:1e-6:3", "--directions.store=seed",
                           "--evaluation.hold_directions=false")
    assert streamed.returncode == 0 and "below the resolution" in streamed.stderr, streamed.stderr
    # float32 weights never warn
    plain = run_surface(lm, tmp_path / "fp32.h5", "--model.name=anylm:model", "--data.name=anylm:data",
                        "--evaluation.loss=model", "--grid.x=-1e-6:1e-6:3")
    assert plain.returncode == 0 and "below the resolution" not in plain.stderr


def test_gpt2_own_loss_with_a_batch_whose_labels_are_all_ignored(lm, tmp_path):
    """A batch with no label to score counts for nothing: the model's own loss over it is 0/0 (NaN),
    which must not make the split's mean NaN."""
    got = surface(lm, tmp_path / "masked.h5", "--model.name=anylm:model", "--data.name=anylm:masked",
                  "--evaluation.loss=model", "--grid.x=-1:1:3")
    model = factory(lm, "anylm", "model")().eval()
    base = snapshot(model)
    loader = factory(lm, "anylm", "masked")("train")
    assert (list(loader)[-1]["labels"] == -100).all() and not (list(loader)[0]["labels"] == -100).all()
    for a in (-1.0, 0.0, 1.0):
        move(model, base, {"dx": got["dx"], "dy": None}, a, 0.0)
        want = lm_token_loss(model, loader, shifted_by_model=True)[0]
        assert at(got, "train_loss", a) == pytest.approx(want, rel=1e-5), a


# ---------------------------------------------------------------- regression, a user's loss

REG_MODULE = '''
"""A regression MLP (4 -> 2 floats): the train split as tensors, the test split as a Dataset."""
import torch
from torch.utils.data import Dataset


def model():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def _xy(split):
    gen = torch.Generator().manual_seed(1 if split == "train" else 2)
    x = torch.randn(150 if split == "train" else 70, 4, generator=gen)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2]) + 0.5 * x[:, 3]], dim=1)  # (N, 2) floats
    return x, y


class Pairs(Dataset):
    def __init__(self, split):
        self.x, self.y = _xy(split)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def data(split):
    return _xy(split) if split == "train" else Pairs(split)


def stream(split):
    return Pairs(split)
'''

LOSS_MODULE = '''
import torch


def l1(outputs, targets):
    """The batch mean of |outputs - targets| over every element."""
    return (outputs - targets).abs().mean()


def l1_sum(outputs, targets):
    """(sum, count): the mean absolute error per example (summed over its 2 outputs)."""
    return (outputs - targets).abs().sum(), len(targets)
'''


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reg")
    (d / "anyreg.py").write_text(REG_MODULE)
    (d / "mylosses.py").write_text(LOSS_MODULE)
    return d


@torch.no_grad()
def reg_values(folder: Path, got: dict, points, split: str, per_batch, batch_size: int) -> dict:
    """{(a, b): loss} by an independent loop: per_batch(outputs, targets) -> (sum, count) per batch."""
    model = factory(folder, "anyreg", "model")().eval()
    x, y = factory(folder, "anyreg", "_xy")(split)
    base = snapshot(model)
    out = {}
    for a, b in points:
        move(model, base, got, a, b)
        total, count = 0.0, 0
        for start in range(0, len(y), batch_size):
            s, n = per_batch(model(x[start:start + batch_size]), y[start:start + batch_size])
            total, count = total + float(s), count + n
        out[(a, b)] = total / count
    return out


def test_regression_mse_has_no_accuracy_and_summary_and_render_work(reg, tmp_path):
    out = tmp_path / "reg.h5"
    got = surface(reg, out, "--model.name=anyreg:model", "--data.name=anyreg:data", "--data.splits=train,test",
                  "--evaluation.loss=mse", "--evaluation.batch_size=32", "--grid.x=-1:1:5", "--grid.y=-1:1:3")
    assert got["train_loss"].shape == (3, 5) and got["test_done"].all()
    assert not any(k.endswith("_acc") for k in got)
    points = [(0.0, 0.0), (1.0, -1.0), (-0.5, 1.0)]
    for split in ("train", "test"):
        want = reg_values(reg, got, points, split, lambda o, t: ((o - t).pow(2).sum(), t.numel()), 32)
        for (a, b), value in want.items():
            assert at(got, f"{split}_loss", a, b) == pytest.approx(value, rel=1e-5), (split, a, b)

    summary = losslandscape("summary", out, cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    report = summary.stdout.split("\n", 1)[1]  # after the file's name
    assert "[train]" in report and "[test]" in report and "acc" not in report.lower()
    assert f"centre (0, 0)             loss {at(got, 'train_loss', 0.0, 0.0):.4g}\n" in report

    pictures = tmp_path / "pictures"
    result = losslandscape("render", out, "--kind", "contour,heatmap,surface3d", "--out", pictures, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    made = sorted(p.name for p in pictures.iterdir())
    assert len(made) == 6 and all(p.stat().st_size > 1000 for p in pictures.iterdir()), made
    assert all("acc" not in name for name in made), made


def test_a_users_loss_function_mean_or_sum_and_count(reg, tmp_path):
    """Batches of 32 over 70 examples (32, 32, 6): a batch mean is weighted by its examples."""
    points = [(-1.0, 0.0), (0.0, 0.0), (1.0, 0.0)]
    for name, per_example in (("l1", 1), ("l1_sum", 2)):
        got = surface(reg, tmp_path / f"{name}.h5", "--model.name=anyreg:model", "--data.name=anyreg:stream",
                      "--data.splits=test", f"--evaluation.loss=mylosses:{name}", "--evaluation.batch_size=32",
                      "--grid.x=-1:1:3")
        assert not any(k.endswith("_acc") for k in got)
        # the mean absolute error per element (l1) or per example (l1_sum: twice that)
        want = reg_values(reg, got, points, "test", lambda o, t: ((o - t).abs().sum(), t.numel()), 32)
        for a, b in points:
            assert at(got, "test_loss", a) == pytest.approx(per_example * want[(a, b)], rel=1e-5), (name, a)
    assert len({round(at(got, "test_loss", a), 6) for a, _ in points}) == 3


# ---------------------------------------------------------------- refused in one line, nothing written

BAD_MODULE = '''
"""A 3-class MLP: inputs a run must refuse, next to ones that work."""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def model():
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _xy():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen)


def plain(split):
    return DataLoader(TensorDataset(*_xy()), batch_size=16)


def shuffled(split):
    return DataLoader(TensorDataset(*_xy()), batch_size=16, shuffle=True)


class Noisy(Dataset):
    """Random augmentation: every reading differs."""

    def __init__(self):
        self.x, self.y = _xy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(4), self.y[i]


def noisy(split):
    return Noisy()


class Dicts(Dataset):
    def __init__(self):
        self.x, self.y = _xy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"features": self.x[i], "labels": self.y[i]}


def dicts(split):
    return Dicts()


def floats(split):
    x, y = _xy()
    return DataLoader(TensorDataset(x, y.float()), batch_size=16)


class NumpyLabels(Dataset):
    """Items as numpy gives them: float32 features, labels of another integer type than int64."""

    def __init__(self, dtype):
        x, y = _xy()
        self.x, self.y = x.numpy(), y.numpy().astype(dtype)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def int32_labels(split):
    return NumpyLabels(np.int32)


def uint8_labels(split):
    return NumpyLabels(np.uint8)


def float_counts(outputs, targets):
    """Cross-entropy as (sum, count, correct) with the counts as float tensors."""
    scored = torch.ones(len(targets))
    correct = (outputs.argmax(1) == targets).float()
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum"), scored.sum(), correct.sum()


def negative(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum"), -(len(targets) / 2 + 0.5)


def raises(outputs, targets):
    raise ValueError("my loss is broken")


def per_example(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")
'''

BASE_ARGS = ["--model.name=anybad:model", "--data.name=anybad:plain", "--grid.x=-1:1:3"]
BAD = {
    # case: (arguments that replace BASE_ARGS' of the same option, words of the one-line error)
    "shuffling loader": (["--data.name=anybad:shuffled"], ["data.name", "shuffle=False"]),
    "random augmentation": (["--data.name=anybad:noisy"], ["data.name", "different batches on two readings"]),
    "loss that raises": (["--evaluation.loss=anybad:raises"], ["ValueError", "my loss is broken"]),
    "loss per example": (["--evaluation.loss=anybad:per_example"], ["evaluation.loss", "shape (16,)"]),
    "dict batch the model rejects": (["--data.name=anybad:dicts"], ["unexpected keyword", "features"]),
    "float targets for cross_entropy": (["--data.name=anybad:floats"], ["cross_entropy needs class indices"]),
    "a negative count": (["--evaluation.loss=anybad:negative"], ["anybad:negative", "count -8.5"]),
    "checkpoint keys": (["--model.checkpoint={ckpt}"], ["model.checkpoint", "does not fit the model", "missing"]),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "anybad.py").write_text(BAD_MODULE)
    torch.save({"layer.weight": torch.zeros(8, 4), "layer.bias": torch.zeros(8)}, d / "other.pt")
    return d


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_is_one_line_and_leaves_no_file(bad, tmp_path, case):
    """Each is found on the first batch (or before it), before the surface file exists; the same
    output then takes the corrected run."""
    changes, words = BAD[case]
    changes = [c.format(ckpt=bad / "other.pt") for c in changes]
    keys = {c.split("=")[0] for c in changes}
    args = [a for a in BASE_ARGS if a.split("=")[0] not in keys] + changes
    out = tmp_path / "out" / "s.h5"
    result = run_surface(bad, out, *args)
    assert_one_line_error(result, *words)
    assert not out.exists() and not list(tmp_path.rglob("*.h5")), list(tmp_path.rglob("*"))

    got = surface(bad, out, *BASE_ARGS)
    assert got["train_done"].all() and np.isfinite(got["train_loss"]).all() and "train_acc" in got
    assert not math.isnan(at(got, "train_acc", 0.0))


@torch.no_grad()
def test_class_labels_of_any_integer_type_and_a_users_floating_counts(bad, tmp_path):
    """A Dataset's int32 or uint8 labels (batches keep their dtypes) score as int64 labels do, with
    cross_entropy and the original code's mse; a user's loss may count in float tensors."""
    args = ["--model.name=anybad:model", "--grid.x=-1:1:3", "--evaluation.batch_size=16"]
    ref = {loss: surface(bad, tmp_path / f"int64_{loss}.h5", *args, "--data.name=anybad:plain",
                         f"--evaluation.loss={loss}") for loss in ("cross_entropy", "mse")}
    for labels in ("int32_labels", "uint8_labels"):
        for loss in ("cross_entropy", "mse"):
            got = surface(bad, tmp_path / f"{labels}_{loss}.h5", *args, f"--data.name=anybad:{labels}",
                          f"--evaluation.loss={loss}")
            np.testing.assert_allclose(got["train_loss"], ref[loss]["train_loss"], rtol=1e-6)
            np.testing.assert_array_equal(got["train_acc"], ref[loss]["train_acc"])
    got = surface(bad, tmp_path / "counts.h5", *args, "--data.name=anybad:plain",
                  "--evaluation.loss=anybad:float_counts")
    np.testing.assert_allclose(got["train_loss"], ref["cross_entropy"]["train_loss"], rtol=1e-6)
    np.testing.assert_array_equal(got["train_acc"], ref["cross_entropy"]["train_acc"])

    # and the int64 reference itself against an independent loop
    model = factory(bad, "anybad", "model")().eval()
    x, y = factory(bad, "anybad", "_xy")()
    base = snapshot(model)
    for a in (-1.0, 0.0, 1.0):
        move(model, base, {"dx": ref["cross_entropy"]["dx"], "dy": None}, a, 0.0)
        out = model(x)  # (40, 3)
        loss, acc = F.cross_entropy(out, y).item(), 100.0 * (out.argmax(1) == y).double().mean().item()
        assert at(ref["cross_entropy"], "train_loss", a) == pytest.approx(loss, rel=1e-5), a
        assert at(ref["cross_entropy"], "train_acc", a) == pytest.approx(acc), a


def test_a_failed_python_call_leaves_nothing_and_the_corrected_call_works(tmp_path):
    """The probe runs before anything is written: a regression given to cross_entropy is one
    UserError, with no surface file and no weights file left; the corrected call to the same
    `out` then computes (it used to be refused: 'these weights are not the ones ...')."""
    import losslandscape as ll
    from losslandscape.errors import UserError

    torch.manual_seed(0)
    x, y = torch.randn(40, 5), torch.randn(40, 1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    out = tmp_path / "reg.h5"
    with pytest.raises(UserError, match="cross_entropy needs class indices"):
        ll.compute_surface(model, (x, y), x="-1:1:3", out=out, threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with torch.no_grad():  # another model now: the earlier call must not have pinned its weights
        model[0].weight.mul_(2)
    s = ll.compute_surface(model, (x, y), x="-1:1:3", out=out, threads=1, loss="mse")
    with torch.no_grad():
        want = F.mse_loss(model(x).double(), y.double()).item()
    assert s.train_loss[1] == pytest.approx(want, rel=1e-5)
    assert s.train_acc is None


def test_a_hugging_face_safetensors_file_is_a_checkpoint(lm, tmp_path):
    """model.checkpoint = the model.safetensors of a save_pretrained folder: read without
    unpickling; the output weights it leaves out (tied to the embedding) come from their twin.
    The centre equals the model loaded by from_pretrained; a fresh model moved away from it
    by its checkpoint gives the same surface as the folder's model itself."""
    from transformers import GPT2Config, GPT2LMHeadModel

    (lm / "fresh.py").write_text("from anylm import *\nfrom transformers import GPT2Config, GPT2LMHeadModel\n\n"
                                 "def other():\n    torch.manual_seed(5)\n"
                                 "    return GPT2LMHeadModel(GPT2Config.from_pretrained(HERE / 'gpt2-tiny'))\n")
    ckpt = lm / "gpt2-tiny" / "model.safetensors"
    a = surface(lm, tmp_path / "a.h5", "--model.name=anylm:model", "--data.name=anylm:data",
                "--evaluation.loss=model", "--grid.x=-1:1:3")
    b = surface(lm, tmp_path / "b.h5", "--model.name=fresh:other", f"--model.checkpoint={ckpt}",
                "--data.name=anylm:data", "--evaluation.loss=model", "--grid.x=-1:1:3")
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-6)


def _refuse_unpickling(monkeypatch) -> list[str]:
    """Make every way to unpickle fail in this process for the rest of the test: torch.load and the
    pickle module's loaders. Returns the list of the attempts (which the test expects empty)."""
    import pickle

    attempts = []

    def refuse(name):
        def refused(*args, **kwargs):
            attempts.append(name)
            raise AssertionError(f"{name} called: something was unpickled")
        return refused

    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse(f"pickle.{name}"))
    return attempts


def test_a_safetensors_checkpoint_loads_without_unpickling(lm, tmp_path, monkeypatch):
    """README: "`.safetensors` checkpoints load without unpickling anything": the run with
    model.checkpoint = model.safetensors succeeds while torch.load and pickle refuse to work,
    and a .pt checkpoint of the same weights fails under the same refusal (so the refusal bites)."""
    (lm / "fresh.py").write_text("from anylm import *\nfrom transformers import GPT2Config, GPT2LMHeadModel\n\n"
                                 "def other():\n    torch.manual_seed(5)\n"
                                 "    return GPT2LMHeadModel(GPT2Config.from_pretrained(HERE / 'gpt2-tiny'))\n")
    ckpt = lm / "gpt2-tiny" / "model.safetensors"
    pt = tmp_path / "model.pt"
    torch.save(factory(lm, "anylm", "model")().state_dict(), pt)
    attempts = _refuse_unpickling(monkeypatch)
    common = ("--model.name=fresh:other", "--data.name=anylm:data", "--evaluation.loss=model", "--grid.x=0:0:1")
    got = surface(lm, tmp_path / "safe.h5", f"--model.checkpoint={ckpt}", *common)
    assert attempts == [] and got["train_done"].all()
    refused = run_surface(lm, tmp_path / "pickled.h5", f"--model.checkpoint={pt}", *common)
    assert refused.returncode != 0 and attempts, refused.stderr[-2000:]


def test_an_untied_safetensors_checkpoint_sets_the_output_layer_too(lm, tmp_path):
    """A GPT-2 whose lm_head is not tied to its embedding: the safetensors file holds lm_head.weight,
    and a loader that skipped it would leave the fresh model's own random head. The surface of a
    fresh model given the file equals the surface of the saved model itself, and the centre's
    loss equals the saved model's own loss, computed here."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=256, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, initializer_range=0.1,
                        tie_word_embeddings=False)
    saved = GPT2LMHeadModel(config)
    saved.save_pretrained(lm / "gpt2-untied", safe_serialization=True)
    from safetensors.torch import load_file

    assert "lm_head.weight" in load_file(lm / "gpt2-untied" / "model.safetensors")
    (lm / "untied.py").write_text(
        "from anylm import *\nfrom transformers import GPT2Config, GPT2LMHeadModel\n\n"
        "def saved():\n    return GPT2LMHeadModel.from_pretrained(HERE / 'gpt2-untied')\n\n"
        "def fresh():\n    torch.manual_seed(5)\n"
        "    return GPT2LMHeadModel(GPT2Config.from_pretrained(HERE / 'gpt2-untied'))\n")
    fresh = factory(lm, "untied", "fresh")()
    assert not torch.equal(fresh.lm_head.weight, saved.lm_head.weight)  # the head must come from the file
    assert fresh.lm_head.weight.data_ptr() != fresh.transformer.wte.weight.data_ptr()  # untied
    common = ("--data.name=anylm:data", "--evaluation.loss=model", "--grid.x=-1:1:3")
    a = surface(lm, tmp_path / "a.h5", "--model.name=untied:saved", *common)
    b = surface(lm, tmp_path / "b.h5", "--model.name=untied:fresh",
                f"--model.checkpoint={lm / 'gpt2-untied' / 'model.safetensors'}", *common)
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-6)
    loss, _, _ = lm_token_loss(saved.eval(), factory(lm, "anylm", "data")("train"), True)
    assert b["train_loss"][1] == pytest.approx(loss, rel=1e-5)  # the centre: the saved model's own loss


class _Seg(torch.nn.Module):
    """A tiny segmentation net: logits (N, C, H, W) for targets (N, H, W), given back as `how`."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        logits = self.conv(x)
        if self.how == "dict":
            return {"logits": logits, "extra": logits.sum()}
        if self.how == "tuple":
            return logits, logits.mean()
        return logits


@pytest.mark.parametrize("how", ["tensor", "dict", "tuple"])
def test_cross_entropy_of_a_segmentation_layout_and_of_each_output_form(tmp_path, how):
    """cross_entropy on (N, C, H, W) logits against (N, H, W) targets with some pixels -100, the
    logits given as a tensor, a dict with "logits" or a tuple: mean over the counted pixels,
    pixel accuracy, against F.cross_entropy of the plain model."""
    import losslandscape as ll

    torch.manual_seed(0)
    x, y = torch.randn(12, 2, 5, 5), torch.randint(0, 3, (12, 5, 5))
    y[:, 0, :] = -100  # an unlabelled row of every image
    model = _Seg(how)
    s = ll.compute_surface(model, (x, y), x="-1:1:3", out=tmp_path / "seg.h5", threads=1, batch_size=5)
    with torch.no_grad():
        logits = model.conv(x)
        want = F.cross_entropy(logits.double(), y, ignore_index=-100).item()
        scored = y != -100
        acc = 100.0 * ((logits.argmax(1) == y) & scored).sum().item() / scored.sum().item()
    assert s.train_loss[1] == pytest.approx(want, rel=1e-6)
    assert s.train_acc[1] == pytest.approx(acc, abs=1e-9)


def test_logits_that_fit_both_layouts_are_refused_in_one_line(tmp_path):
    """(N, 4, 4) logits against (N, 4) targets could be (N, C, L) or (N, L, C): one line, no file."""
    import losslandscape as ll
    from losslandscape.errors import UserError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 16), torch.nn.Unflatten(1, (4, 4)))
    with pytest.raises(UserError, match="could be"):
        ll.compute_surface(model, (torch.randn(6, 8), torch.randint(0, 4, (6, 4))), x="-1:1:3",
                           out=tmp_path / "amb.h5", threads=1)
    assert list(tmp_path.iterdir()) == []
