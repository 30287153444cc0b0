"""A received surface file runs no code of its sender (issue #22, part 5).

A surface file records the factories it was made with ("module:factory" names) and the
folders they were found in (`import_dirs`). Here its maker's folder holds `craftmod.py`, a
model factory whose import writes a marker file; the file is then received in another
folder. `hessian` imports from a folder the file names only where it is the user's own (the
file's folder, the working directory) or with --trust-file; `render`, `summary`, `status`,
`merge` and `open_surface` import nothing from a file. The Hessian verb opens its file a
stated number of times (counted by wrapping h5py.File).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import BIN

pytestmark = pytest.mark.slow  # real processes, and a surface computed by one for the whole file

CRAFTMOD = '''
from pathlib import Path

import torch
from torch import nn

Path(__file__).with_name("MARKER").write_text("craftmod ran")


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


def cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "losslandscape"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The maker's folder: craftmod.py, a spec naming craftmod:build, and its 3x3 surface s.h5
    (computed there, by a process of its own, so this one never imports craftmod)."""
    maker = tmp_path_factory.mktemp("maker")
    (maker / "craftmod.py").write_text(CRAFTMOD)
    (maker / "job.toml").write_text(f'''
[model]
name = "craftmod:build"
[data]
name = "digits"
max_samples = 40
[grid]
x = "-1:1:3"
y = "-1:1:3"
[evaluation]
device = "cpu"
[output]
surface = "{maker / 's.h5'}"
''')
    proc = cli("surface", maker / "job.toml", cwd=maker)
    assert proc.returncode == 0, proc.stderr
    (maker / "MARKER").unlink()
    with h5py.File(maker / "s.h5", "r") as f:
        assert str(maker) in json.loads(f.attrs["import_dirs"])  # the crafted situation: it names the folder
    return maker


def with_maps(path: Path) -> Path:
    """`path` with finished eigenvalue maps of `hessian --samples 20` (written here): the verb
    then loads the model (imports its factory) and has nothing left to compute."""
    with h5py.File(path, "r+") as f:
        for name in ("max_eig", "min_eig"):
            f.create_dataset(name, data=np.ones((3, 3)))
        f.create_dataset("eig_done", data=np.ones((3, 3), dtype="u1"))
        f.attrs.update({"hessian_split": "train", "hessian_samples": 20, "hessian_params": "all",
                        "hessian_tol": 1e-3})
    return path


def received(made: Path, folder: Path) -> Path:
    """The surface file as received in `folder` (no craftmod.py there)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(made / "s.h5", folder / "s.h5")
    (made / "MARKER").unlink(missing_ok=True)
    return folder / "s.h5"


@pytest.mark.slow
def test_a_received_file_is_refused_unless_trusted(made, tmp_path):
    path = received(made, tmp_path / "inbox")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("hessian", path, "--centre", "--samples", "20", "--top-k", "1", cwd=elsewhere)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"names model.name = 'craftmod:build', which would be imported from {made / 'craftmod.py'}" in lines[0]
            and "--trust-file" in lines[0]), lines[0]
    assert not (made / "MARKER").exists()
    proc = cli("hessian", path, "--samples", "20", cwd=elsewhere)  # the maps: refused the same way
    assert proc.returncode == 1 and "--trust-file" in proc.stderr and not (made / "MARKER").exists()

    proc = cli("hessian", with_maps(path), "--samples", "20", "--trust-file", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "9 of 9 points done" in proc.stderr and (made / "MARKER").exists()  # the user said so: it ran


@pytest.mark.slow
def test_the_python_interface_trusts_a_file_only_when_told(made, tmp_path):
    path = with_maps(received(made, tmp_path / "inbox"))
    code = ("import sys, losslandscape as ll\n"
            "try:\n"
            f"    ll.compute_hessian({str(path)!r}, samples=20, trust_file=sys.argv[1] == 'yes')\n"
            "except ll.UserError as e:\n"
            "    print(e); sys.exit(3)\n")
    run = lambda answer: subprocess.run([str(BIN / "python"), "-c", code, answer], capture_output=True, text=True,
                                        timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc = run("no")
    assert proc.returncode == 3 and "--trust-file" in proc.stdout and not (made / "MARKER").exists(), proc
    proc = run("yes")
    assert proc.returncode == 0, proc.stderr
    assert (made / "MARKER").exists()


@pytest.mark.slow
def test_the_files_own_folder_and_the_working_directory_are_the_users(made, tmp_path):
    path = with_maps(received(made, tmp_path / "inbox"))
    proc = cli("hessian", path, "--samples", "20", cwd=made)  # the factory in the working directory
    assert proc.returncode == 0, proc.stderr
    assert "9 of 9 points done" in proc.stderr and (made / "MARKER").exists()

    path = with_maps(received(made, tmp_path / "beside"))
    (path.parent / "craftmod.py").write_text(CRAFTMOD)  # the factory beside the file
    proc = cli("hessian", path, "--samples", "20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (path.parent / "MARKER").exists() and not (made / "MARKER").exists()


def edit_spec(path: Path, **fields) -> None:
    with h5py.File(path, "r+") as f:
        spec = json.loads(f.attrs["spec"])
        for key, value in fields.items():
            section, name = key.split("__")
            spec[section][name] = value
        f.attrs["spec"] = json.dumps(spec)


def test_a_standard_library_function_or_a_trusted_checkpoint_in_a_file_is_refused(made, tmp_path, capsys,
                                                                                monkeypatch):
    from losslandscape.frontends import cli as main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()  # shutil.rmtree("train") would delete it
    path = received(made, tmp_path / "inbox")
    shutil.copy(made / "craftmod.py", path.parent)  # the model is the user's: only the data factory is refused
    edit_spec(path, data__name="shutil:rmtree")
    assert main.main(["hessian", str(path), "--centre"]) == 1
    err = capsys.readouterr().err.strip()
    assert "names data.name = 'shutil:rmtree', a function of Python's standard library" in err
    assert len(err.splitlines()) == 1 and (tmp_path / "train").is_dir()

    path = received(made, tmp_path / "inbox2")
    shutil.copy(made / "craftmod.py", path.parent)
    edit_spec(path, model__trust_checkpoint=True, model__checkpoint=str(tmp_path / "pickled.pt"))
    assert main.main(["hessian", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "model.trust_checkpoint = true" in err and "--trust-file" in err and len(err.splitlines()) == 1
    assert "craftmod" not in sys.modules


def test_reading_verbs_import_nothing_from_a_file(made, tmp_path, capsys, monkeypatch):
    """render, summary, status, merge and open_surface on a file whose folders hold craftmod."""
    import losslandscape as ll
    from losslandscape.frontends import cli as main

    path = received(made, tmp_path / "inbox")
    monkeypatch.chdir(tmp_path)
    for argv in (["render", str(path), "--out", str(tmp_path / "plots")], ["summary", str(path)],
                 ["status", str(path)], ["merge", str(path)]):
        assert main.main(argv) == 0, (argv, capsys.readouterr().err)
        assert not (made / "MARKER").exists() and "craftmod" not in sys.modules, argv
    assert any((tmp_path / "plots").iterdir())
    s = ll.open_surface(path)
    assert s.values["train_loss"].shape == (3, 3)
    assert not (made / "MARKER").exists() and "craftmod" not in sys.modules


def test_hessian_opens_its_file_three_times_then_twice(made, tmp_path, monkeypatch, capsys):
    """Rank 0 of the maps: read, create, evaluate on a new run; read, evaluate on a resume
    (five and four before #19); read alone when nothing is left. Counted by wrapping h5py.File."""
    from losslandscape.frontends import cli as main

    path = received(made, tmp_path / "inbox")
    shutil.copy(made / "craftmod.py", path.parent)
    opened: list[str] = []
    original = h5py.File.__init__

    def counting(self, name, *args, **kwargs):
        if isinstance(name, (str, os.PathLike)):  # not h5py's own re-wrapping of an open file id
            opened.append(str(name))
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.File, "__init__", counting)
    monkeypatch.chdir(tmp_path)
    quick = ["--samples", "10", "--tol", "0.1"]
    assert main.main(["hessian", str(path), *quick]) == 0, capsys.readouterr().err
    assert opened == [str(path)] * 3
    opened.clear()
    assert main.main(["hessian", str(path), *quick]) == 0  # nothing left to compute
    assert opened == [str(path)]
    with h5py.File(path, "r+") as f:
        f["eig_done"][0, 0] = 0
    opened.clear()
    assert main.main(["hessian", str(path), *quick]) == 0  # a resume
    assert opened == [str(path)] * 2
    with h5py.File(path, "r") as f:
        assert f["eig_done"][...].all()
