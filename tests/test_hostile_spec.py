"""Hostile spec values and paths (issue 29, items 8 and 11): each is one line on stderr naming
the field, exit 1, and nothing is left where the run would write.

Every case runs the real command line in this process (`cli.main`, as `losslandscape` runs it)
in an empty working directory, and then lists that directory: a refused run leaves only what
the test put there.
"""

from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from losslandscape import spec as specs
from losslandscape.errors import UserError
from losslandscape.frontends import cli
from helpers import PX, tiny_job, write_surface


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def job(here) -> str:
    """The tiny job (a linear model on 32 digits, a 3-point line): a value the run takes runs in a second."""
    return str(tiny_job(here / "job", Path("out/surface.h5"), "-1:1:3").relative_to(here))


JOB = ["job", "job/dftiny.py", "job/job.toml"]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(capsys, argv: list[str], field: str) -> str:
    """Run `argv`: exit 1 and exactly one line, which names `field`, no traceback."""
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"losslandscape: error: {field}"), lines[0][:500]
    assert "Traceback" not in err and len(lines[0]) < 600
    return lines[0]


# --- the spec file itself -------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"\xff\xfe[grid]\nx = '-1:1:3'\n", b"[grid]\nx = '-1:1:3' # \xe9t\xe9\n",
                                     bytes(range(256))])
def test_a_spec_that_is_not_utf8_text_is_one_line(here, capsys, content):
    (here / "job.toml").write_bytes(content)
    line = refused(capsys, ["surface", "job.toml"], "spec:")
    assert "job.toml" in line
    assert listing(here) == ["job.toml"]


# --- paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, field", [
    ("", "output.surface"), ("out/", "output.surface"), (".", "output.surface"), ("out/..", "output.surface"),
    ("out/a\\u0000b.h5", "output.surface"), ("out/a\\nb.h5", "output.surface"),
    ("out/" + "s" * 300 + ".h5", "output.surface"), ("out/" + "s" * 200 + ".h5", "output.surface"),
])
def test_an_output_surface_that_cannot_be_a_file_name_is_one_line(here, job, capsys, value, field):
    text = (here / job).read_text().replace('surface = "out/surface.h5"', f'surface = "{value}"')
    (here / job).write_text(text)
    refused(capsys, ["surface", job], field)
    assert listing(here) == JOB


PATH_FIELDS = ["model.checkpoint", "model.checkpoint2", "model.checkpoint3", "data.root", "directions.file",
               "directions.checkpoints", "directions.also", "train.out_dir"]
HOSTILE_PATHS = ["a\0b", "a\x1bb", "x" * 200_000, "x/" * 3000, "d/" + "n" * 256]


@pytest.mark.parametrize("key, value", [(key, HOSTILE_PATHS[i % len(HOSTILE_PATHS)])
                                        for i, key in enumerate(PATH_FIELDS)]
                         + [("model.checkpoint", v) for v in HOSTILE_PATHS[1:]])
def test_every_path_field_refuses_nul_control_characters_and_overlong_names(here, job, capsys, key, value):
    verb = "train" if key.startswith("train.") else "surface"  # in-process, a NUL can be an argument
    line = refused(capsys, [verb, job, f"--{key}={value}"], key)
    assert len(line) < 400  # a 200,000-character value is not a 200,000-character line
    assert listing(here) == JOB


def test_a_nul_in_a_path_of_the_spec_file_is_one_line(here, job, capsys):
    text = (here / job).read_text().replace("[data]", '[data]\nroot = "data\\u0000/x"')
    (here / job).write_text(text)
    refused(capsys, ["surface", job], "data.root")
    assert listing(here) == JOB


def test_a_checkpoint_path_of_200000_characters_on_the_command_line_is_one_line(here, job, capsys):
    line = refused(capsys, ["surface", job, "--model.checkpoint", "c" * 200_000], "model.checkpoint")
    assert "200,000" in line and "4095" in line
    assert listing(here) == JOB


def test_path_limits_are_the_file_systems(here):
    path_max, name_max = specs.path_limits(str(here / "x"))
    assert (path_max, name_max) == (os.pathconf(here, "PC_PATH_MAX"), os.pathconf(here, "PC_NAME_MAX"))
    specs.check_path("d/" + "n" * name_max, "f")  # the limits themselves are allowed
    specs.check_path("n/" * ((path_max - 1) // 2), "f")
    with pytest.raises(UserError, match="too long"):
        specs.check_path("n/" * (path_max // 2), "f")


# --- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, field", [
    ("--directions.seed", str(2**64), "directions.seed"),
    ("--directions.seed", "99999999999999999999999", "directions.seed"),
    ("--directions.seed", "-1", "directions.seed"),
    ("--data.seed", str(2**64), "data.seed"),
    ("--evaluation.batch_size", "100000000000000000000", "evaluation.batch_size"),
    ("--evaluation.batch_size", str(2**31 + 1), "evaluation.batch_size"),
    ("--data.max_samples", str(2**63), "data.max_samples"),
    ("--evaluation.threads", "1" + "0" * 40, "evaluation.threads"),
    ("--grid.auto_factor", "nan", "grid.auto_factor"),
    ("--grid.auto_factor", "inf", "grid.auto_factor"),
])
def test_numbers_beyond_what_the_run_can_take_are_one_line(here, job, capsys, flag, value, field):
    refused(capsys, ["surface", job, f"{flag}={value}"], field)
    assert listing(here) == JOB


def test_the_largest_seeds_and_batches_are_taken():
    spec = specs.from_dict({"directions": {"seed": 2**64 - 1}, "data": {"seed": 2**64 - 1},
                            "evaluation": {"batch_size": 2**31}})
    assert spec.directions.seed == 2**64 - 1 and spec.evaluation.batch_size == 2**31
    spec = specs.from_dict({"train": {"seed": 0, "batch_size": 2**31}})
    with pytest.raises(UserError, match=r"train.batch_size: .* from 1 to 2\*\*31"):
        specs.from_dict({"train": {"batch_size": 2**31 + 1}})
    with pytest.raises(UserError, match=r"train.lr: inf is not valid; expected a finite number"):
        specs.from_dict({"train": {"lr": float("inf")}})
    with pytest.raises(UserError, match=r"train.seed: an integer of \d+ hex digits is not valid"):
        specs.from_dict({"train": {"seed": 10**5000}})  # the Python interface takes any int


@pytest.mark.parametrize("axis, what", [
    ("-1e308:1e308:5", "hi - lo is beyond the largest number"),
    ("0:1e-320:3", "below the smallest normal number"),
    ("-1e-320:1e-320:3", "below the smallest normal number"),
    ("1:1.0000000000000002:3", "not distinct"),
    ("-1:1:1000000000", "1,000,000,000 points; expected at most 1,000,000 on an axis"),
    ("auto:1000000000", "N from 2 to 1,000,000"),
])
def test_grid_axes_that_overflow_underflow_or_cannot_be_allocated_are_one_line(here, capsys, axis, what):
    # the tiny job would run to the end: a refused axis leaves no surface file and no folder
    spec = tiny_job(here / "job", Path("out/surface.h5"), axis)
    verb = "directions" if "1000000000" in axis else "surface"  # (before the fix, only the file was made)
    line = refused(capsys, [verb, str(spec)], "grid.x")
    assert what in line
    assert listing(here) == ["job", "job/dftiny.py", "job/job.toml"]


def test_a_grid_of_more_points_in_all_than_the_cap_is_one_line(here, job, capsys):
    line = refused(capsys, ["directions", job, "--grid.x=-1:1:4001", "--grid.y=-1:1:2501"], "grid.y")
    assert "4,001 x 2,501 = 10,006,501 points; expected at most 10,000,000" in line
    assert listing(here) == JOB
    spec = specs.from_dict({"grid": {"x": "-1:1:1000000"}})  # the caps themselves are allowed
    assert spec.grid.x == "-1:1:1000000"


# --- factories --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["model.name", "data.name"])
def test_a_standard_library_function_is_never_called_as_a_factory(here, capsys, monkeypatch, key):
    # os.system("train") (a data factory is called with the split's name) would run this `train`
    bin_dir = here / "bin"
    bin_dir.mkdir()
    (bin_dir / "train").write_text(f"#!/bin/sh\ntouch {here / 'RAN'}\n")
    (bin_dir / "train").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = tiny_job(here / "job", Path("out/surface.h5"), "-1:1:3")
    line = refused(capsys, ["surface", str(spec), f"--{key}=os:system"], key)
    assert "standard library" in line
    assert not (here / "RAN").exists()
    assert listing(here) == ["bin", "bin/train", "job", "job/dftiny.py", "job/job.toml"]


@pytest.mark.parametrize("name", ["a b:build", "mod:", ":build", "mod:a.b", "m/x:build", "mod:build:x"])
def test_a_factory_name_of_the_wrong_form_is_one_line_before_anything_runs(here, job, capsys, name):
    refused(capsys, ["surface", job, f"--model.name={name}"], "model.name")
    assert listing(here) == JOB


def test_a_device_of_the_wrong_form_is_one_line(here, job, capsys):
    refused(capsys, ["surface", job, "--evaluation.device=cuda:x"], "evaluation.device")
    refused(capsys, ["hessian", "s.h5", "--device=cuda0"], "--device")


# --- item 11: a failed first run leaves no folder it made ------------------------------------

def test_a_failed_first_run_removes_the_empty_folders_it_made_and_only_those(here, capsys):
    spec = tiny_job(here / "job", Path("new/deeper/surface.h5"), "-1:1:3")
    # the lock (and so the folder) comes before the model, whose checkpoint is missing
    refused(capsys, ["surface", str(spec), "--model.checkpoint=missing.pt"], "model.checkpoint")
    assert listing(here) == ["job", "job/dftiny.py", "job/job.toml"]

    (here / "mine").mkdir()  # made by the user: it stays, empty or not
    refused(capsys, ["surface", str(spec), "--model.checkpoint=missing.pt", "--output.surface=mine/s/t.h5"],
            "model.checkpoint")
    assert listing(here) == ["job", "job/dftiny.py", "job/job.toml", "mine"]

    assert cli.main(["surface", str(spec), "--output.surface=mine/s/t.h5"]) == 0  # a run that succeeds keeps them
    capsys.readouterr()
    assert (here / "mine/s/t.h5").is_file()


def test_a_raw_pickle_checkpoint_is_refused_in_one_line_without_torchs_warning(here, capsys):
    with open(here / "raw.pt", "wb") as fh:
        pickle.dump({"state_dict": {"w": np.zeros(2)}}, fh, protocol=4)
    spec = tiny_job(here / "job", Path("out/surface.h5"), "-1:1:3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = refused(capsys, ["surface", str(spec), "--model.checkpoint=raw.pt"], "model.checkpoint")
    assert "raw.pt" in line
    assert [str(w.message) for w in caught] == []  # the command line would print torch's warning first
    assert listing(here) == ["job", "job/dftiny.py", "job/job.toml", "raw.pt"]


# --- render's names ---------------------------------------------------------------------------

def curve(path: Path) -> Path:
    return write_surface(path, PX, values={"train_loss": PX**2}, done={"train_done": np.ones_like(PX)})


def test_render_of_a_file_with_a_240_character_stem_is_one_line_and_writes_nothing(here, capsys):
    curve(here / ("s" * 240 + ".h5"))
    line = refused(capsys, ["render", "s" * 240 + ".h5"], "SURFACE")
    assert "too long" in line
    assert listing(here) == ["s" * 240 + ".h5"]
    curve(here / ("a" * 120 + ".h5"))  # each fits; their comparison's name a_vs_b would not
    curve(here / ("b" * 120 + ".h5"))
    refused(capsys, ["render", "a" * 120 + ".h5", "b" * 120 + ".h5", "--out", "pics"], "SURFACE: the comparison")
    assert "pics" not in listing(here)


def test_render_to_an_out_of_300_characters_is_one_line_and_writes_nothing(here, capsys):
    curve(here / "a.h5")
    line = refused(capsys, ["render", "a.h5", "--out", "o" * 300], "--out")
    assert "300 bytes" in line
    assert listing(here) == ["a.h5"]
    assert cli.main(["render", "a.h5", "--out", "o" * 200]) == 0  # a long name that fits is drawn
    assert (here / ("o" * 200) / "a_curve.png").is_file()


@pytest.mark.parametrize("verb", ["hessian", "merge", "status", "summary", "render"])
def test_a_file_verb_given_a_name_too_long_for_the_file_system_is_one_line(here, capsys, verb):
    refused(capsys, [verb, "q" * 300 + ".h5"], "SURFACE")
    assert listing(here) == []


def test_open_surface_given_a_name_too_long_for_the_file_system_is_a_user_error(here):
    import losslandscape as ll

    with pytest.raises(UserError, match="cannot be a file name"):
        ll.open_surface("q" * 300 + ".h5")
