"""The installed `losslandscape` console script: the zoo listing and one-line errors with exit status 1."""

import pytest
import torch

from losslandscape.frontends import cli
from losslandscape.inputs.models import build_model

from helpers import assert_one_line_error, console, losslandscape

ZOO_NAMES = [
    *(f"resnet{d}" for d in (20, 32, 44, 56, 110)),
    *(f"resnet{d}_noshort" for d in (20, 32, 44, 56, 110)),
    *(f"wrn56_{k}" for k in (2, 4, 8)),
    *(f"wrn56_{k}_noshort" for k in (2, 4, 8)),
    "vgg9",
    "densenet121",
]


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_models_lists_the_zoo(tmp_path):
    result = console("models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert [row[0] for row in rows if not row[0].startswith("original_")] == ZOO_NAMES  # then original_*
    # He et al.'s ResNet-20 for CIFAR-10 (option A shortcuts) has 0.27M parameters
    assert rows[0][1] == "0.27M"


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """A whole pickled resnet20 (1 input channel, as for digits) and its weights."""
    torch.manual_seed(5)
    model = build_model("resnet20", in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "whole_model.pt"
    torch.save(model, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_missing_spec_file(tmp_path):
    assert_one_line_error(console("train", tmp_path / "absent.toml", cwd=tmp_path), "absent.toml")


def test_unknown_model(tmp_path):
    assert_one_line_error(
        losslandscape("train", "--model.name=resnet21", "--train.epochs=1", f"--train.out_dir={tmp_path / 'o'}",
                      cwd=tmp_path),
        "model.name", "resnet21", "resnet20")


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nonexistent"
    assert_one_line_error(
        losslandscape("train", "--data.name=cifar10", f"--data.root={missing}", "--train.epochs=1",
                      f"--train.out_dir={tmp_path / 'o'}", cwd=tmp_path),
        "data.root", str(missing))


def test_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(range(256)) * 16)
    assert_one_line_error(
        losslandscape("train", f"--model.checkpoint={bad}", "--train.epochs=1", f"--train.out_dir={tmp_path / 'o'}",
                      cwd=tmp_path),
        "model.checkpoint", str(bad), "not a PyTorch checkpoint")


def test_bad_spec_value(tmp_path):
    spec = tmp_path / "job.toml"
    spec.write_text("[train]\nbatch_size = \"a\"\n")
    assert_one_line_error(losslandscape("train", spec, cwd=tmp_path), "train.batch_size", "'a'", "integer")


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_pickled_checkpoint_needs_trust(tmp_path, pickled_model):
    path, state = pickled_model
    out = tmp_path / "out"
    common = [f"--model.checkpoint={path}", "--train.epochs=1", "--train.batch_size=32", "--data.max_samples=64",
              f"--train.out_dir={out}"]
    assert_one_line_error(console("train", *common, cwd=tmp_path), str(path), "--trust-checkpoint")
    assert not out.exists()

    result = losslandscape("train", "--trust-checkpoint", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model_0.pt", "model_1.pt"]
    # training started from the trusted file's weights
    start = torch.load(out / "model_0.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(start) == set(state) and all(torch.equal(start[k], state[k]) for k in state)


CASES = {  # verb and options with {f} for the file a user names
    "spec": ["surface", "{f}"],
    "model.checkpoint": ["surface", "--model.checkpoint={f}", "--grid.x=0:0:1"],
    "model.checkpoint2": ["surface", "--directions.kind=interpolate", "--model.checkpoint={ok}",
                          "--model.checkpoint2={f}", "--grid.x=0:1:2"],
    "directions.file": ["surface", "--directions.kind=file", "--directions.file={f}", "--grid.x=0:0:1"],
    "data.root": ["surface", "--data.name=cifar10", "--data.root={f}", "--grid.x=0:0:1"],
    "output.surface": ["surface", "--output.surface={f}", "--grid.x=0:0:1"],
    "status": ["status", "{f}"],
    "merge": ["merge", "{f}"],
    "render": ["render", "{f}"],
    "summary": ["summary", "{f}"],
    "train spec": ["train", "{f}"],
}


def test_a_surface_file_that_does_not_exist_yet_is_made(tmp_path):
    result = losslandscape("surface", f"--output.surface={tmp_path / 'named'}", "--grid.x=0:0:1",
                           "--data.max_samples=16", "--evaluation.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import h5py

    with h5py.File(tmp_path / "named", "r") as f:
        assert f["train_done"][...].all()


# a surface file that does not exist yet is made (the test above)
@pytest.mark.parametrize("case, what", [(c, w) for c in CASES for w in ("missing", "folder", "empty")
                                        if (c, w) != ("output.surface", "missing")])
def test_every_file_a_user_names_is_one_line_without_traceback(tmp_path, case, what):
    target = tmp_path / "named"
    if what == "folder":
        target.mkdir()
    elif what == "empty":
        target.write_bytes(b"")
    ok = tmp_path / "ok.pt"
    torch.save({"state_dict": build_model("resnet20", in_channels=1).state_dict()}, ok)
    args = [a.format(f=target, ok=ok) for a in CASES[case]]
    if args[0] == "surface" and case != "output.surface":
        args.append(f"--output.surface={tmp_path / 's.h5'}")
    result = losslandscape(*args, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("losslandscape: error: ")]
    assert len(errors) == 1 and "named" in errors[0], result.stderr
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.slow  # many seconds: the full suite runs it, `make check` leaves it out
def test_a_negative_value_after_a_space_is_a_value(tmp_path):
    out = tmp_path / "s.h5"
    result = console("surface", "--grid.x", "-1:1:3", "--data.max_samples", "20", "--output.surface", out,
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import h5py

    with h5py.File(out, "r") as f:
        assert f["xcoordinates"][...].tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("args, words", [
    (["surface", "--gird.x=-1:1:3"], ["unknown option --gird.x; did you mean --grid.x?"]),
    (["surface", "--tasks", "3"], ["--tasks is an option of `submit`, not of `surface`"]),
    (["surfce"], ["unknown verb 'surfce'; did you mean surface?"]),
    (["surface", "--evaluation.threads"], ["--evaluation.threads: expected one argument"]),
])
def test_command_line_mistakes_are_one_line_exit_1(tmp_path, args, words):
    assert_one_line_error(losslandscape(*args, cwd=tmp_path), *words)


@pytest.mark.parametrize("verb", ["models", "train", "surface", "directions", "submit", "task", "merge", "status",
                                  "render", "summary", "hessian", "trajectory", "paper", "from-original"])
def test_every_verb_describes_itself(tmp_path, verb):
    result = losslandscape(verb, "--help", cwd=tmp_path)
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert len(description.split()) >= 5 and not description.lstrip().startswith(("positional", "options")), result.stdout


# --- the verbs hessian, trajectory and paper describe themselves ------------------------------

@pytest.mark.parametrize("verb, word", [("hessian", "eigenvalue"), ("trajectory", "PCA"), ("paper", "paper")])
def test_hessian_trajectory_and_paper_describe_themselves(capsys, verb, word):
    """`losslandscape VERB --help` (the README's table of verbs): a description under the usage
    line, as the other verbs have (tests/test_cli.py::test_every_verb_describes_itself)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([verb, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: losslandscape {verb}"), text
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, text
    assert not description.lstrip().startswith(("positional", "options", "usage")), text
    assert word.lower() in description.lower(), description
