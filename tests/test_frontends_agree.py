"""The two front ends agree: the command line (`losslandscape VERB ...`, run by its `main`) and the
Python interface refuse the same bad value of a verb's option with the same one line, which names
the option as the user gave it: `--top-k` on the command line, `top_k` in Python (never a flag).

The options of `hessian` (ll.compute_hessian) and `submit` (slurm.submit) are one dataclass each
in spec.py; both front ends are generated from them. A value is refused before any file is read
or written: the surface named here does not exist, and nothing is created."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import losslandscape as ll
from losslandscape import spec as specs
from losslandscape.frontends import cli
from losslandscape.run.slurm import submit

# (verb, the Python keywords, the command line's words, the line after the option's name)
CASES = {
    "samples=-1": ("hessian", {"samples": -1}, ["--samples", "-1"],
                   "-1 is not valid; expected an integer >= 0"),
    "top_k=0 at the centre": ("hessian", {"centre": True, "top_k": 0}, ["--centre", "--top-k", "0"],
                              "0 is not valid; expected an integer >= 1"),
    "probes=3 at the centre": ("hessian", {"centre": True, "probes": 3}, ["--centre", "--probes", "3"],
                               "3 is not valid; expected an integer >= 4"),
    "a bad split": ("hessian", {"split": "val"}, ["--split", "val"],
                    "'val' is not valid; expected one of train, test"),
    "a bad params": ("hessian", {"params": "biases"}, ["--params", "biases"],
                     "'biases' is not valid; expected one of all, weights"),
    "a bad device": ("hessian", {"device": "tpu"}, ["--device", "tpu"],
                     "'tpu' is not valid; expected auto, cpu, cuda or cuda:N"),
    "tasks=0": ("submit", {"tasks": 0}, ["--tasks", "0"], "0 is not valid; expected an integer >= 1"),
    "two GPUs a worker": ("submit", {"tasks": 2, "gpus_per_task": 2}, ["--tasks", "2", "--gpus-per-task", "2"],
                          "2 is not valid; expected 0 or 1 (a worker evaluates on one GPU: use more ranks for "
                          "more GPUs)"),
    "a bad launcher": ("submit", {"tasks": 2, "launcher": "ssh"}, ["--tasks", "2", "--launcher", "ssh"],
                       "'ssh' is not valid; expected one of mpirun, srun"),
}
KEYWORD = {"samples=-1": "samples", "top_k=0 at the centre": "top_k", "probes=3 at the centre": "probes", "a bad split": "split",
           "a bad params": "params", "a bad device": "device", "tasks=0": "tasks",
           "two GPUs a worker": "gpus_per_task", "a bad launcher": "launcher"}
FLAG = {"samples": "--samples", "top_k": "--top-k", "probes": "--probes", "split": "--split", "params": "--params", "device": "--device",
        "tasks": "--tasks", "gpus_per_task": "--gpus-per-task", "launcher": "--launcher"}


def command_line(tmp_path, capsys, case: str) -> str:
    """The one error line of `losslandscape VERB ...` (exit 1, no traceback), without its prefix."""
    verb, _, words, _ = CASES[case]
    target = [str(tmp_path / "s.h5")] if verb == "hessian" else [f"--output.surface={tmp_path / 's.h5'}",
                                                                  "--dry-run"]
    code = cli.main([verb, *target, *words])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("losslandscape: error: "), err
    return lines[0].removeprefix("losslandscape: error: ")


def python(tmp_path, case: str) -> str:
    """The message of the UserError the Python interface raises."""
    verb, keywords, _, _ = CASES[case]
    with pytest.raises(ll.UserError) as err:
        if verb == "hessian":
            ll.compute_hessian(tmp_path / "s.h5", **keywords)
        else:
            spec = specs.load(None, {"output.surface": str(tmp_path / "s.h5")})
            submit(spec, specs.Submit(**{**keywords, "dry_run": True}))
    return str(err.value)


@pytest.mark.parametrize("front", ["command line", "python"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_value_is_one_line_naming_the_option_as_given(tmp_path, capsys, front, case):
    line = command_line(tmp_path, capsys, case) if front == "command line" else python(tmp_path, case)
    keyword = KEYWORD[case]
    name = FLAG[keyword] if front == "command line" else keyword
    assert line == f"{name}: {CASES[case][3]}"
    if front == "python":
        assert "--" not in line.split(":")[0], line  # the keyword, never a flag
    assert not (tmp_path / "s.h5").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", list(CASES))
def test_both_front_ends_give_the_same_line(tmp_path, capsys, case):
    keyword = KEYWORD[case]
    from_cli = command_line(tmp_path, capsys, case)
    from_python = python(tmp_path, case)
    assert from_cli.removeprefix(FLAG[keyword]) == from_python.removeprefix(keyword)


def test_the_python_keywords_and_the_flags_are_the_same_options(capsys):
    """compute_hessian's keywords are spec.Hessian's fields; `hessian --help` lists each as a flag
    (and --json, the command line's output format); `submit --help` every spec.Submit field."""
    params = list(inspect.signature(ll.compute_hessian).parameters)
    fields = [f.name for f in dataclasses.fields(specs.Hessian)]
    assert params == ["surface", *fields]
    for verb, cls in (("hessian", specs.Hessian), ("submit", specs.Submit)):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        text = capsys.readouterr().out
        for name, flag in specs.flags(cls).items():
            assert f"  {flag} " in text or f"  {flag}\n" in text, (verb, flag)
    with pytest.raises(ll.UserError, match=r"compute_hessian: unknown keyword 'topk'; did you mean top_k\?"):
        ll.compute_hessian("s.h5", topk=3)


def test_a_valid_submit_value_from_text_and_from_python_is_the_same_object():
    """`--sbatch-arg` (repeatable) and the other flags parse to what the keywords give."""
    parser = cli.build_parser()
    args = parser.parse_args(["submit", "--tasks", "3", "--gpus-per-task", "1", "--launcher", "srun",
                              "--sbatch-arg=--qos=low,high", "--sbatch-arg=--mem=4G", "--dry-run"])
    from_text = specs.options_from_args(specs.Submit, args, "submit")
    assert from_text == specs.Submit(tasks=3, gpus_per_task=1, launcher="srun",
                                     sbatch_args=["--qos=low,high", "--mem=4G"], dry_run=True)
