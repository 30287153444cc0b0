"""The job spec: TOML tables, defaults, field docs, one-line errors, dotted command-line overrides."""

import argparse
import dataclasses
import textwrap
import typing

import pytest

from losslandscape import spec as specs
from losslandscape.errors import UserError

FULL_TOML = """
[model]
name = "resnet56"
checkpoint = "ckpt/a.pt"
checkpoint2 = "ckpt/b.pt"
trust_checkpoint = true
num_classes = 100

[data]
name = "cifar10"
root = "/data/cifar-10-batches-py"
splits = ["train", "test"]
max_samples = 500
seed = 3

[directions]
kind = "random"
dir_type = "states"
norm = "layer"
ignore = "none"
seed = 7
orthogonal = true

[grid]
x = "-0.5:1.5:21"
y = "-1:1:11"

[evaluation]
loss = "mse"
batch_size = 256
precision = "bf16"
fold_batchnorm = false
device = "cpu"
threads = 2
unit_size = 8

[output]
surface = "out/s.h5"

[train]
epochs = 3
batch_size = 32
lr = 1
momentum = 0.5
weight_decay = 0.0
lr_steps = [1, 2]
lr_gamma = 0.5
warmup_epochs = 1
save_every = 2
out_dir = "out/t"
seed = 9
"""


def write(tmp_path, text, name="job.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def user_error(fn, *args, **kwargs) -> str:
    """The message of the UserError that fn raises, checked to be one line."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_every_table_and_key_is_read(tmp_path):
    s = specs.load(write(tmp_path, FULL_TOML))
    assert s.model == specs.Model("resnet56", "ckpt/a.pt", "ckpt/b.pt", True, 100)
    assert s.data == specs.Data("cifar10", "/data/cifar-10-batches-py", ["train", "test"], 500, 3)
    assert s.directions == specs.Directions("random", "states", "layer", "none", 7, True, "")
    assert s.grid == specs.Grid("-0.5:1.5:21", "-1:1:11")
    assert s.evaluation == specs.Evaluation("mse", 256, "bf16", False, "cpu", 2, 8)
    assert s.output == specs.Output("out/s.h5")
    assert s.train == specs.Train(epochs=3, batch_size=32, lr=1.0, momentum=0.5, weight_decay=0.0, lr_steps=[1, 2],
                                  lr_gamma=0.5, warmup_epochs=1, save_every=2, out_dir="out/t", seed=9)
    # a TOML integer where a number is expected becomes a float
    assert isinstance(s.train.lr, float)


def test_omitted_tables_and_keys_keep_their_defaults(tmp_path):
    s = specs.load(write(tmp_path, '[train]\nepochs = 4\n'))
    assert s.train.epochs == 4
    assert s.train.batch_size == 128 and s.train.lr_steps == [10, 15]
    assert s.model == specs.Model() and s.data == specs.Data() and s.grid == specs.Grid()
    resolved = specs.Spec()
    resolved.directions.dir_type = "weights"  # "auto" resolves to weights for random directions
    assert specs.load(None) == resolved
    with pytest.raises(UserError, match="spec: .*empty.toml' is empty; expected a TOML job spec"):
        specs.load(write(tmp_path, "", "empty.toml"))  # a truncated or unsaved file, not "all defaults"


def test_defaults_are_not_shared_between_specs():
    a, b = specs.Spec(), specs.Spec()
    a.train.lr_steps.append(99)
    a.data.splits.append("test")
    assert b.train.lr_steps == [10, 15] and b.data.splits == ["train"]


def test_the_spec_has_one_table_per_section():
    assert list(specs.SECTIONS) == ["model", "data", "directions", "grid", "evaluation", "output", "train"]
    for name, cls in specs.SECTIONS.items():
        assert isinstance(getattr(specs.Spec(), name), cls)


@pytest.mark.parametrize("section", list(specs.SECTIONS))
def test_every_field_has_a_default_and_a_docstring(section):
    cls = specs.SECTIONS[section]
    docs = specs.field_docs(cls)
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert docs.get(f.name, "").strip(), f"{section}.{f.name} has no docstring"
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}


def test_json_round_trip_names_every_field():
    s = specs.from_dict({})  # resolved: what a surface file stores
    d = s.to_dict()
    assert set(d) == set(specs.SECTIONS)
    for section, cls in specs.SECTIONS.items():
        assert set(d[section]) == {f.name for f in dataclasses.fields(cls)}
    assert specs.from_dict(d) == s
    assert '"lr_steps": [10, 15]' in s.to_json()


@pytest.mark.parametrize("toml, must_name", [
    # unknown table: its name and the allowed tables
    ('[modle]\nname = "resnet20"\n', ["modle", "model", "train"]),
    # unknown key: the key and the keys allowed in its table
    ("[train]\nepoch = 3\n", ["train.epoch", "epochs", "batch_size"]),
    # a Literal choice: the key, the value, every allowed value
    ('[directions]\nnorm = "filters"\n', ["directions.norm", "filters", "filter", "layer", "dlayer", "none"]),
    ('[evaluation]\nprecision = "fp16"\n', ["evaluation.precision", "fp16", "fp32", "tf32", "bf16"]),
    ('[data]\nsplits = ["train", "val"]\n', ["data.splits", "val", "train", "test"]),
    # wrong types
    ('[train]\nbatch_size = "a"\n', ["train.batch_size", "'a'", "integer"]),
    ("[train]\nepochs = 2.5\n", ["train.epochs", "2.5", "integer"]),
    ("[train]\nepochs = true\n", ["train.epochs", "True", "integer"]),
    ('[train]\nlr = "fast"\n', ["train.lr", "fast", "number"]),
    ('[directions]\northogonal = "yes"\n', ["directions.orthogonal", "yes", "true or false"]),
    ("[train]\nlr_steps = 3\n", ["train.lr_steps", "3", "list"]),
    ("[model]\nname = 20\n", ["model.name", "20", "string"]),
    ("model = 3\n", ["model", "table"]),
    # constraints beyond types
    ("[train]\nepochs = 0\n", ["train.epochs", "0", ">= 1"]),
    ("[data]\nmax_samples = -1\n", ["data.max_samples", "-1", ">= 0"]),
    ('[data]\nsplits = ["train", "train"]\n', ["data.splits", "twice"]),
    ('[evaluation]\ndevice = "tpu"\n', ["evaluation.device", "tpu", "cuda"]),
])
def test_bad_values_give_one_line_naming_key_value_and_allowed(tmp_path, toml, must_name):
    message = user_error(specs.load, write(tmp_path, toml))
    for word in must_name:
        assert word in message, (word, message)


@pytest.mark.parametrize("axis", ["1:0:5", "a:b", "-1:1:0", "a:1:5", "-1:1:2.5", "0:0:3", "-1:inf:3", ""])
def test_bad_grid_axes_are_refused(tmp_path, axis):
    message = user_error(specs.load, write(tmp_path, f'[grid]\nx = "{axis}"\n'))
    assert message.startswith("grid.x:") and repr(axis) in message and "lo:hi:n" in message
    if axis:  # an empty grid.y is valid: a 1-D curve
        message = user_error(specs.load, None, {"grid.y": axis})
        assert message.startswith("grid.y:") and repr(axis) in message


@pytest.mark.parametrize("axis", ["-1:1:51", "0:0:1", "-0.5:2e-1:3"])
def test_good_grid_axes_are_accepted(axis):
    assert specs.load(None, {"grid.x": axis, "grid.y": axis}).grid.y == axis


def test_interpolate_and_file_directions_need_their_inputs():
    assert "model.checkpoint2" in user_error(specs.load, None, {"directions.kind": "interpolate"})
    ok = {"directions.kind": "interpolate", "model.checkpoint": "a.pt", "model.checkpoint2": "b.pt"}
    assert specs.load(None, ok).directions.kind == "interpolate"
    assert "grid.y" in user_error(specs.load, None, {**ok, "grid.y": "-1:1:3"})
    assert "directions.file" in user_error(specs.load, None, {"directions.kind": "file"})


def test_missing_and_malformed_spec_files(tmp_path):
    missing = tmp_path / "nope.toml"
    message = user_error(specs.load, missing)
    assert str(missing) in message
    message = user_error(specs.load, write(tmp_path, "[train\nepochs = 3\n"))
    assert "TOML" in message


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("spec", nargs="?")
    specs.add_override_arguments(parser)
    args = parser.parse_args(argv)
    return args.spec, specs.overrides_from_args(args)


def test_dotted_overrides_replace_the_toml(tmp_path):
    path = write(tmp_path, """
        [grid]
        x = "-2:2:3"
        [data]
        splits = ["train"]
        [directions]
        orthogonal = false
        [train]
        lr_steps = [10]
        epochs = 6
    """)
    spec_path, overrides = parse([str(path), "--grid.x=-1:1:7", "--data.splits=train,test",
                                  "--directions.orthogonal=true", "--train.lr_steps=3,5",
                                  "--train.lr=0.05", "--model.name=resnet32"])
    assert overrides == {"grid.x": "-1:1:7", "data.splits": "train,test", "directions.orthogonal": "true",
                         "train.lr_steps": "3,5", "train.lr": "0.05", "model.name": "resnet32"}
    s = specs.load(spec_path, overrides)
    assert s.grid.x == "-1:1:7"
    assert s.data.splits == ["train", "test"]
    assert s.directions.orthogonal is True
    assert s.train.lr_steps == [3, 5]
    assert s.train.lr == 0.05
    assert s.model.name == "resnet32"
    assert s.train.epochs == 6  # not overridden: the TOML's value stays


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("yes", True), ("on", True),
                                         ("false", False), ("0", False), ("no", False), ("OFF", False)])
def test_boolean_override_spellings(text, value):
    assert specs.load(None, {"directions.orthogonal": text}).directions.orthogonal is value


def test_empty_list_override_clears_the_list():
    assert specs.load(None, {"train.lr_steps": ""}).train.lr_steps == []


@pytest.mark.parametrize("key, text, must_name", [
    ("train.epochs", "three", ["train.epochs", "three", "integer"]),
    ("train.lr_steps", "3,x", ["train.lr_steps", "x", "integer"]),
    ("train.lr", "fast", ["train.lr", "fast", "number"]),
    ("directions.orthogonal", "maybe", ["directions.orthogonal", "maybe", "true or false"]),
    ("data.splits", "train,val", ["data.splits", "val", "train", "test"]),
    ("directions.kind", "gaussian", ["directions.kind", "gaussian", "random", "interpolate", "file"]),
    ("train.nope", "1", ["train.nope", "epochs"]),
    ("nope.x", "1", ["nope", "model", "train"]),
])
def test_bad_overrides_give_one_line_errors(key, text, must_name):
    message = user_error(specs.load, None, {key: text})
    for word in must_name:
        assert word in message, (word, message)


def test_every_field_is_a_command_line_option_with_its_docstring():
    parser = argparse.ArgumentParser()
    specs.add_override_arguments(parser)
    options = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for section, cls in specs.SECTIONS.items():
        docs = specs.field_docs(cls)
        for name in typing.get_type_hints(cls):
            action = options[f"--{section}.{name}"]
            assert docs[name] in action.help and "default:" in action.help
    # nothing given: no overrides, so the TOML's values are never replaced by defaults
    assert specs.overrides_from_args(parser.parse_args([])) == {}


def test_override_options_can_be_limited_to_some_tables():
    parser = argparse.ArgumentParser()
    specs.add_override_arguments(parser, ("train", "model"))
    options = {a.option_strings[0] for a in parser._actions if a.option_strings}
    assert "--train.epochs" in options and "--model.name" in options
    assert "--grid.x" not in options
    with pytest.raises(SystemExit):
        parser.parse_args(["--grid.x=-1:1:3"])
