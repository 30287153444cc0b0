"""Errors in and around a model's forward: the one line names the user's own line (not torch's),
and the tool's own checks say what a real Hugging Face model (a tiny GPT-2 and BERT built from a
config) was given wrong, each before anything is written: labels of another length than the
inputs, inputs longer than the model's positions, floating labels to a sequence classifier; a
tuple output that starts with the loss (return_dict=False with labels) is read as Hugging Face
lays it out."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import losslandscape as ll
from helpers import assert_one_line_error, losslandscape
from losslandscape import errors
from losslandscape.errors import UserError

transformers = pytest.importorskip("transformers")

VOCAB = 50


def gpt2(positions: int = 16):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def bert(**config):
    torch.manual_seed(0)
    config = {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 16, "num_labels": 3, **config}
    return transformers.BertForSequenceClassification(transformers.BertConfig(**config)).eval()


def tokens(seed: int, length: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, length), generator=torch.Generator().manual_seed(seed))


def refused(tmp_path, model, batch, loss="model") -> str:
    """The one line compute_surface raises for a single batch; nothing written."""
    out = tmp_path / "out" / "s.h5"
    with pytest.raises(UserError) as err:
        ll.compute_surface(model, train=[batch], x="-1:1:3", out=out, threads=1, loss=loss)
    assert not out.exists() and not list(tmp_path.rglob("*.pt")), list(tmp_path.rglob("*"))
    assert "\n" not in str(err.value)
    return str(err.value)


# --- where: the user's line ----------------------------------------------------------------------

USER_MODEL = '''
import torch
import torch.nn.functional as F


class Lookup(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(10, 4))
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.embedding(x, self.table))  # FAILS


def build():
    torch.manual_seed(0)
    return Lookup()


def data(split):
    return torch.tensor([[1], [2], [30], [4]]), torch.tensor([0, 1, 2, 0])  # 30: no such row
'''


def test_an_error_inside_torch_names_the_users_line_that_called_it(tmp_path, monkeypatch):
    (tmp_path / "lookup.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    line = next(i for i, text in enumerate(USER_MODEL.splitlines(), 1) if "# FAILS" in text)
    try:
        result = losslandscape("surface", "--model.name=lookup:build", "--data.name=lookup:data",
                               "--data.splits=train", "--grid.x=-1:1:3", f"--output.surface={tmp_path / 's.h5'}",
                               "--evaluation.device=cpu", "--evaluation.threads=1", cwd=tmp_path)
    finally:
        sys.modules.pop("lookup", None)
    assert_one_line_error(result, "IndexError: index out of range in self", f"at lookup.py:{line};")
    assert "functional.py" not in result.stderr and not (tmp_path / "s.h5").exists()


def test_a_traceback_without_the_users_code_names_its_innermost_frame():
    torch_file, json_file = torch.nn.functional.__file__, __import__("json").__file__
    assert errors.user_frame([(errors.__file__, 10), (torch_file, 20), (json_file, 30)]) == (json_file, 30)
    assert errors.user_frame([(errors.__file__, 10), (__file__, 20), (torch_file, 30)]) == (__file__, 20)


# --- the tool's own checks -----------------------------------------------------------------------

def test_labels_one_shorter_than_the_inputs_of_a_causal_lm_or_a_token_classifier(tmp_path):
    ids = tokens(1)
    line = refused(tmp_path, gpt2(), {"input_ids": ids, "labels": ids[:, 1:]})
    assert line == ("evaluation: the first batch of train at the centre: labels of shape (4, 7) against input_ids "
                    "of shape (4, 8); expected labels of the inputs' shape; the model shifts them itself to score "
                    "each position against the next: labels = input_ids (-100 where nothing is scored)")
    torch.manual_seed(0)
    tagger = transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3)).eval()
    ids = tokens(8)
    line = refused(tmp_path, tagger, {"input_ids": ids, "labels": ids[:, 1:] % 3})
    assert line == ("evaluation: the first batch of train at the centre: labels of shape (4, 7) against input_ids "
                    "of shape (4, 8); expected labels of the inputs' shape, one label a token (-100 where nothing "
                    "is scored)")


def test_targets_one_position_shorter_than_the_logits_for_cross_entropy(tmp_path):
    ids = tokens(2)
    line = refused(tmp_path, gpt2(), (ids, ids[:, 1:]), loss="cross_entropy")
    assert line.startswith("evaluation.loss: targets of shape (4, 7) are one position shorter than the logits "
                           f"(4, 8, {VOCAB}); cross_entropy scores each position against the target at that "
                           "position"), line


@pytest.mark.parametrize("make, attr", [(lambda: gpt2(positions=6), "n_positions"),
                                        (lambda: bert(max_position_embeddings=6), "max_position_embeddings")])
def test_inputs_longer_than_the_models_positions(tmp_path, make, attr):
    ids = tokens(3)
    labels = ids if attr == "n_positions" else torch.tensor([0, 1, 2, 0])
    line = refused(tmp_path, make(), {"input_ids": ids, "labels": labels})
    assert line == ("evaluation: the first batch of train at the centre: inputs of 8 tokens (shape (4, 8)) are longer "
                    f"than the model's 6 positions (config.{attr}); expected sequences of at most 6 tokens: cut or "
                    "split them")


@pytest.mark.parametrize("labels", [torch.tensor([0.0, 1.0, 2.0, 0.0]),
                                    F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()])
def test_floating_labels_to_a_sequence_classifier_are_refused_unless_multi_label_is_configured(tmp_path, labels):
    """(N,) floats made Hugging Face fail deep in binary cross-entropy; (N, 3) floats were scored as
    multi-label targets without a word. With config.problem_type = "multi_label_classification"
    they are what the user meant: the centre is the model's own multi-label loss."""
    ids = tokens(4)
    model = bert()
    line = refused(tmp_path, model, {"input_ids": ids, "labels": labels})
    assert line == ("evaluation: the first batch of train at the centre: floating labels (float32, shape "
                    f"{tuple(labels.shape)}) for BertForSequenceClassification with 3 labels, which scores floating "
                    "labels as multi-label targets (binary cross-entropy per label); expected class indices (an "
                    "integer tensor) for single-label classification, or set the model's config.problem_type = "
                    "\"multi_label_classification\" if that is meant")
    assert model.config.problem_type is None
    if labels.dim() == 2:
        model = bert(problem_type="multi_label_classification")
        s = ll.compute_surface(model, train=[{"input_ids": ids, "labels": labels}], x="-1:1:3",
                               out=tmp_path / "multi.h5", threads=1, loss="model")
        with torch.no_grad():
            want = F.binary_cross_entropy_with_logits(model(input_ids=ids).logits, labels).item()
        assert s.train_loss[1] == pytest.approx(want, rel=1e-6)


class TupleOutputs(torch.nn.Module):
    """A GPT-2 called with return_dict=False: (loss, logits, ...) when it is given labels."""

    def __init__(self):
        super().__init__()
        self.lm = gpt2()

    def forward(self, **batch):
        return self.lm(**batch, return_dict=False)


@pytest.mark.parametrize("loss", ["model", "cross_entropy"])
def test_a_tuple_output_that_starts_with_the_loss(tmp_path, loss):
    """Loss "model" takes the tuple's loss, cross_entropy its logits: the centre equals the model's
    own loss and a plain cross-entropy of its logits against the labels, position by position."""
    ids = tokens(5 if loss == "model" else 6)
    wrapped = TupleOutputs()
    s = ll.compute_surface(wrapped, train=[{"input_ids": ids, "labels": ids}], x="-1:1:3", out=tmp_path / "s.h5",
                           threads=1, loss=loss)
    with torch.no_grad():
        out = wrapped.lm(input_ids=ids, labels=ids)  # a ModelOutput
        want = out.loss if loss == "model" else F.cross_entropy(out.logits.flatten(0, 1), ids.flatten())
    assert s.train_loss[1] == pytest.approx(want.item(), rel=1e-6)


def test_a_tuple_output_without_a_loss_says_so_when_the_batch_has_labels(tmp_path):
    class LogitsOnly(TupleOutputs):
        def forward(self, input_ids, labels):
            return self.lm(input_ids=input_ids, return_dict=False)  # the labels never reach the model

    ids = tokens(7)
    line = refused(tmp_path, LogitsOnly(), {"input_ids": ids, "labels": ids})
    assert line.startswith('evaluation.loss: "model": the model returned a tuple starting with a tensor of shape '
                           f"(4, 8, {VOCAB}) without a scalar loss although the batch has labels"), line
