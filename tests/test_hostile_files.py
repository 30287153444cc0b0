"""Crafted surface files are one line, never a traceback or a memory bomb (issue #29, items 5, 6, 11).

Each case writes a small valid surface file with h5py and then breaks one thing in it: a dataset
that declares billions of values (chunked and never written, so the file takes kilobytes), a
string or compound dtype, a group where a dataset belongs, a done flag of the wrong shape, a
`spec`, `identity`, `splits`, `values` or `import_dirs` attribute that is not the JSON expected,
an attribute of 10 MB. Every reader (`summary`, `render`, `status`, `merge`, `hessian` and
`ll.open_surface`) runs in this process on every case and must answer with one line naming the
file and the dataset or attribute, exit 1, nothing left beside the file. One case runs in a
process limited to 2 GiB of address space, to show that the reader refuses before it allocates.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib import font_manager  # noqa: F401 (a fresh machine's font cache is built here, not inside a capped reader)

import losslandscape as ll
from losslandscape.errors import UserError
from losslandscape.frontends import cli
from helpers import fast_sample

X, Y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
SHAPE = (3, 5)  # (ny, nx)
SPEC = {"model": {"name": "resnet56"}, "data": {"name": "digits", "splits": ["train", "test"]},
        "grid": {"x": "-1:1:5", "y": "-1:1:3"}}
HUGE = dict(chunks=(4096,), dtype="f8")  # declared, never written: no chunk on disk


def surface_file(path: Path, shard: bool = False) -> Path:
    """A complete 5 x 3 surface of ours (or a shard of it) that every reader accepts."""
    loss = np.add.outer(Y**2, X**2) + 0.1
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = X, Y
        for split in ("train", "test"):
            f[f"{split}_loss"], f[f"{split}_acc"] = loss, 100 - loss
            f[f"{split}_done"] = np.ones(SHAPE, dtype=np.uint8)
        f["point_seconds"] = np.full(SHAPE, 0.5)
        f.attrs.update({"format": "losslandscape-shard" if shard else "losslandscape-surface", "format_version": 1,
                        "spec": json.dumps(SPEC), "identity": json.dumps({"grid.x": "-1:1:5"}),
                        "directions_sha256": "0" * 64, "splits": '["train", "test"]', "import_dirs": "[]"})
        if shard:
            f["points"] = np.arange(15, dtype=np.int64)
            f.attrs.update({"surface": str(path.parent / "s.h5"), "task": 0, "tasks": 1})
        else:
            f["directions/x/w"] = np.ones(3, dtype=np.float32)
            f["directions/y/w"] = np.ones(3, dtype=np.float32)
    return path


def replace(f, name: str, **kwargs) -> None:
    del f[name]
    f.create_dataset(name, **kwargs)


def huge_grid(f) -> None:
    """1e5 x 1e5 values on axes of 1e5 points each: 80 GB a dataset, if read."""
    replace(f, "xcoordinates", shape=(100_000,), **HUGE)
    replace(f, "ycoordinates", shape=(100_000,), **HUGE)
    for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
        replace(f, name, shape=(100_000, 100_000), chunks=(64, 64), dtype="f8")


def centre(f, **datasets):
    g = f.require_group("hessian_centre")
    for name, kwargs in datasets.items():
        g.create_dataset(name, **kwargs)
    return g


def spec_with_name(f, n: int) -> None:
    f.attrs["spec"] = json.dumps({**SPEC, "model": {"name": "m" * n}})


COMPOUND = np.dtype([("a", "<i4"), ("b", "<f8")])

# name: (what it breaks in a valid surface file, a word the one line must hold)
CASES = {
    "coordinates_2e9": (lambda f: replace(f, "xcoordinates", shape=(2_000_000_000,), **HUGE), "xcoordinates"),
    "grid_1e5_by_1e5": (huge_grid, "ycoordinates"),
    "values_1e5_by_1e5": (lambda f: replace(f, "train_loss", shape=(100_000, 100_000), chunks=(64, 64), dtype="f8"),
                          "train_loss"),
    "string_coordinates": (lambda f: replace(f, "xcoordinates", data=np.array([b"a", b"b", b"c", b"d", b"e"])),
                           "xcoordinates"),
    "compound_values": (lambda f: replace(f, "test_loss", data=np.zeros(SHAPE, dtype=COMPOUND)), "test_loss"),
    "string_values": (lambda f: replace(f, "train_acc", data=np.full(SHAPE, b"9")), "train_acc"),
    "values_a_group": (lambda f: (f.__delitem__("test_acc"), f.create_group("test_acc")), "test_acc"),
    "empty_coordinates": (lambda f: replace(f, "ycoordinates", data=h5py.Empty("f8")), "ycoordinates"),
    "done_flag_wrong_shape": (lambda f: replace(f, "train_done", data=np.ones((5, 3), dtype=np.uint8)), "train_done"),
    "done_flag_compound": (lambda f: replace(f, "test_done", data=np.zeros(SHAPE, dtype=COMPOUND)), "test_done"),
    "spec_not_json": (lambda f: f.attrs.__setitem__("spec", "{model = resnet"), "spec"),
    "spec_a_list": (lambda f: f.attrs.__setitem__("spec", "[1, 2]"), "spec"),
    "spec_of_10_mb": (lambda f: spec_with_name(f, 10_000_000), "spec"),
    "spec_splits_a_number": (lambda f: (f.attrs.__delitem__("splits"),
                                        f.attrs.__setitem__("spec", json.dumps({"data": {"splits": 7}}))), "spec"),
    "identity_not_json": (lambda f: f.attrs.__setitem__("identity", "grid.x=-1:1:5"), "identity"),
    "identity_a_number": (lambda f: f.attrs.__setitem__("identity", "42"), "identity"),
    "splits_not_a_list": (lambda f: f.attrs.__setitem__("splits", '"train"'), "splits"),
    "splits_unknown": (lambda f: f.attrs.__setitem__("splits", '["validation"]'), "splits"),
    "values_attribute": (lambda f: f.attrs.__setitem__("values", '{"loss": 1}'), "values"),
    "import_dirs_numbers": (lambda f: f.attrs.__setitem__("import_dirs", "[1, 2]"), "import_dirs"),
    "compound_attribute": (lambda f: f.attrs.__setitem__("created", np.zeros(2, dtype=COMPOUND)), "created"),
    "digest_an_array": (lambda f: f.attrs.__setitem__("directions_sha256", np.arange(3)), "directions_sha256"),
    "eig_map_wrong_shape": (lambda f: (f.create_dataset("max_eig", data=np.zeros((2, 2))),
                                       f.create_dataset("min_eig", data=np.zeros(SHAPE))), "max_eig"),
    "eig_done_declared_huge": (lambda f: (f.create_dataset("max_eig", data=np.zeros(SHAPE)),
                                          f.create_dataset("min_eig", data=np.zeros(SHAPE)),
                                          f.create_dataset("eig_done", shape=(100_000, 100_000), chunks=(64, 64),
                                                           dtype="u1")), "eig_done"),
    "centre_density_1e9": (lambda f: centre(f, density=dict(shape=(10**9,), **HUGE)), "hessian_centre/density"),
    "trajectory_1e9": (lambda f: f.create_group("trajectory").create_dataset("x", shape=(10**9,), **HUGE),
                       "trajectory/x"),
    "trajectory_names_huge": (lambda f: f.create_group("trajectory").create_dataset(
        "checkpoints", shape=(10**6,), chunks=(1024,), dtype="S100000"), "trajectory/checkpoints"),
}

# read only where the file is loaded whole (summary, render, open_surface)
LOADED_CASES = {
    "centre_trace_text": (lambda f: centre(f).attrs.__setitem__("trace", "a lot"), "trace"),
    "centre_samples_text": (lambda f: centre(f).attrs.__setitem__("hutchinson_samples", "many"),
                            "hutchinson_samples"),
}

READERS = ("summary", "render", "status", "merge", "hessian", "open_surface")
LOADERS = ("summary", "render", "open_surface")


def crafted(tmp_path: Path, breaks) -> Path:
    path = surface_file(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        breaks(f)
    return path


@contextlib.contextmanager
def at_most_1_gib_more():
    """This process's address space capped at its present size + 1 GiB for the block: a reader
    that would allocate what a crafted file declares fails there (MemoryError) instead of taking
    the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmSize:")) * 1024
    limit = size + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def read(reader: str, path: Path, capsys) -> tuple[int, str]:
    """(exit code, stderr) of one reader on `path`, in this process (with at most 1 GiB more memory)."""
    if reader == "open_surface":
        with pytest.raises(UserError) as caught, at_most_1_gib_more():
            ll.open_surface(path)
        return 1, f"losslandscape: error: {caught.value}\n"
    argv = {"render": ["render", str(path), "--kind", "contour"], "hessian": ["hessian", str(path)]}.get(
        reader, [reader, str(path)])
    if reader in ("render", "hessian"):
        # imported outside the cap
        __import__("matplotlib.pyplot" if reader == "render" else "losslandscape.run.hessianmaps")
    with at_most_1_gib_more():
        code = cli.main(argv)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, path: Path, word: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("losslandscape: error: "), err[-2000:]
    assert str(path) in lines[0] and word in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0][:600]
    return lines[0]


def check(reader: str, path: Path, word: str, capsys) -> str:
    before = sorted(os.listdir(path.parent))
    code, err = read(reader, path, capsys)
    line = assert_one_line(code, err, path, word)
    assert sorted(os.listdir(path.parent)) == before  # no picture, no lock, no partial file left
    return line


# every case with every reader in `make test`; `make check` keeps one reader of each front end
# (the command line's summary, the Python interface's open_surface)
@pytest.mark.parametrize("reader", fast_sample(READERS, ("summary", "open_surface")))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_file_is_one_line(case, reader, tmp_path, capsys):
    breaks, word = CASES[case]
    check(reader, crafted(tmp_path, breaks), word, capsys)


@pytest.mark.parametrize("reader", LOADERS)
@pytest.mark.parametrize("case", sorted(LOADED_CASES))
def test_a_crafted_hessian_centre_is_one_line(case, reader, tmp_path, capsys):
    breaks, word = LOADED_CASES[case]
    check(reader, crafted(tmp_path, breaks), word, capsys)


# read by the hessian verb alone: the directions
DIRECTION_CASES = {
    "direction_declared_1e10": (lambda f: f["directions/y"].create_dataset("v", shape=(10**10,), chunks=(4096,),
                                                                          dtype="f4"), "directions/y/v"),
    "direction_as_text": (lambda f: f["directions/x"].create_dataset("t", data=np.array([b"1"])), "directions/x/t"),
    "directions_missing": (lambda f: f.__delitem__("directions"), "directions/x"),
}


@pytest.mark.parametrize("case", sorted(DIRECTION_CASES))
def test_crafted_directions_are_one_line(case, tmp_path, capsys):
    breaks, word = DIRECTION_CASES[case]
    check("hessian", crafted(tmp_path, breaks), word, capsys)


# a shard of the surface in <surface>.shards, broken: status and merge read it
SHARD_CASES = {
    "points_outside_the_grid": (lambda f: replace(f, "points", data=np.array([0, 99], dtype=np.int64)), "points"),
    "points_declared_2e9": (lambda f: replace(f, "points", shape=(2_000_000_000,), chunks=(4096,), dtype="i8"),
                            "points"),
    "points_as_text": (lambda f: replace(f, "points", data=np.array([b"0", b"1"])), "points"),
    "done_flag_wrong_shape": (lambda f: replace(f, "test_done", data=np.ones((15,), dtype=np.uint8)), "test_done"),
    "values_compound": (lambda f: replace(f, "train_loss", data=np.zeros(SHAPE, dtype=COMPOUND)), "train_loss"),
    "surface_an_array": (lambda f: f.attrs.__setitem__("surface", np.arange(4)), "surface"),
}


@pytest.mark.parametrize("reader", ("status", "merge"))
@pytest.mark.parametrize("case", sorted(SHARD_CASES))
def test_a_crafted_shard_is_one_line(case, reader, tmp_path, capsys):
    breaks, word = SHARD_CASES[case]
    surface = surface_file(tmp_path / "s.h5")
    (tmp_path / "s.h5.shards").mkdir()
    shard = surface_file(tmp_path / "s.h5.shards" / "task_0.h5", shard=True)
    with h5py.File(shard, "a") as f:
        breaks(f)
    before = sorted(os.listdir(tmp_path))
    code, err = read(reader, surface, capsys)
    assert_one_line(code, err, shard, word)
    assert sorted(os.listdir(tmp_path)) == before


def test_the_valid_file_reads(tmp_path, capsys):
    """The file the cases break is one that the readers accept (so each case is refused for its one defect)."""
    path = surface_file(tmp_path / "s.h5")
    assert ll.open_surface(path).model_name == "resnet56"
    for verb in ("summary", "status", "merge"):
        assert cli.main([verb, str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_a_long_model_name_is_cut_where_it_is_shown(tmp_path, capsys):
    """A model.name of 500,000 characters (a spec under the 1 MiB cap) is shown cut to 200 characters,
    in the middle: in the summary, in open_surface's model_name, in the picture's title."""
    path = crafted(tmp_path, lambda f: spec_with_name(f, 500_000))
    s = ll.open_surface(path)
    assert len(s.model_name) == 200 and "..." in s.model_name
    assert cli.main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) < 400
    assert cli.main(["render", str(path), "--kind", "contour", "--split", "train", "--out",
                     str(tmp_path / "pics")]) == 0
    (picture,) = (tmp_path / "pics").iterdir()
    assert picture.stat().st_size < 1_000_000  # a title of 500,000 characters would be a picture of gigapixels


def test_a_long_model_name_in_an_error_line_is_cut(tmp_path, capsys):
    """`hessian` refuses the model name of a file's spec (too long for a spec value) in one line that
    names the field and quotes the name cut (spec.shown), not its 900,000 characters."""
    code, err = read("hessian", crafted(tmp_path, lambda f: spec_with_name(f, 900_000)), capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "attribute spec: model.name: " in lines[0] and "(900,000 characters) is too long" in lines[0]
    assert len(lines[0]) < 600


def test_summary_json_is_standard_json(tmp_path, capsys):
    """Values whose mean overflows (1e308 each) and a maps' setting of inf: null, never Infinity."""
    path = surface_file(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        loss = np.full(SHAPE, 1.5e308)
        loss[1, 2] = 0.1  # the centre
        f["train_loss"][...] = loss
        f["max_eig"], f["min_eig"], f["eig_done"] = np.ones(SHAPE), -np.ones(SHAPE), np.ones(SHAPE, dtype=np.uint8)
        f.attrs.update({"hessian_split": "train", "hessian_samples": 10, "hessian_params": "all",
                        "hessian_tol": np.inf})
    assert cli.main(["summary", str(path), "--json"]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and "NaN" not in text
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert summary["hessian"]["maps"]["tol"] is None
    assert summary["splits"]["train"]["rings"][-1]["mean_loss"] is None


BOMB = """
import resource, sys
limit = 2 << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from losslandscape.frontends import cli
assert cli.main(["summary", sys.argv[2]]) == 0  # a valid file first: every module imported
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = peak()
code = cli.main(["summary", sys.argv[1]])
print("maxrss_kib", before, peak())
sys.exit(code)
"""


def test_a_memory_bomb_is_refused_before_it_allocates(tmp_path):
    """A file of kilobytes declaring 5e8 chunked coordinates (4 GB if read: the red team measured
    `summary` at 4.4 GB) is refused in a process limited to 2 GiB of address space, its peak
    resident memory that of the interpreter and h5py."""
    valid = surface_file(tmp_path / "valid.h5")
    path = crafted(tmp_path, lambda f: replace(f, "xcoordinates", shape=(500_000_000,), **HUGE))
    assert path.stat().st_size < 100_000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BOMB, str(path), str(valid)], capture_output=True, text=True,
                          timeout=120, env=env)
    err = proc.stderr.replace(str(valid), "")  # the valid file's summary is on stdout; stderr holds the refusal
    line = assert_one_line(proc.returncode, err, path, "xcoordinates")
    assert "500,000,000" in line
    before, after = (int(v) / 1024 for v in proc.stdout.split()[-2:])
    assert after - before < 32, (before, after)  # MiB: nothing of the 4 GB declared was allocated
    print(f"peak resident memory of summary: {before:.0f} MiB after a valid file, {after:.0f} MiB after the bomb")


# --- a seeded fuzz: random but plausible damage, every reader one line or a result -------------

DATASETS = ("xcoordinates", "ycoordinates", "train_loss", "train_acc", "test_loss", "test_acc", "train_done",
            "test_done", "point_seconds", "max_eig", "min_eig", "eig_done", "hessian_centre/density",
            "hessian_centre/density_grid", "hessian_centre/top_eigenvalues", "trajectory/x", "trajectory/y",
            "trajectory/error", "trajectory/checkpoints")
ATTRIBUTES = ("format", "spec", "identity", "splits", "values", "import_dirs", "directions_sha256", "file_sha256",
              "explained_variance_ratio", "hessian_split", "hessian_samples", "hessian_params", "hessian_tol")


def random_damage(rng: np.random.Generator, f) -> str:
    """One random change to an open surface file; what it did, to reproduce a failure."""
    if rng.random() < 0.55:
        name = str(rng.choice(DATASETS))
        shape = [(), (0,), (5,), (3, 5), (5, 3), (15,), (3, 5, 1), (2_000_000_000,), (100_000, 100_000)][
            rng.integers(9)]
        dtype = [np.float64, np.float32, np.int64, np.uint8, np.bool_, "S3", COMPOUND, np.complex128][rng.integers(8)]
        if name in f:
            del f[name]
        big = int(np.prod(shape)) > 10**6
        if big:
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=(64,) * len(shape))
        else:
            f.create_dataset(name, data=np.zeros(shape, dtype=dtype) if shape != () else np.zeros((), dtype=dtype))
        return f"dataset {name} {shape} {np.dtype(dtype)}"
    name = str(rng.choice(ATTRIBUTES))
    values = ['{"data": {"splits": ["train"]}}', "{", "[]", "null", '["train", 3]', '{"model": 3}', "x" * 300,
              np.arange(3), np.zeros(2, dtype=COMPOUND), 7, -1.5, np.inf, b"\xff\xfe", '["loss"]', '["acc"]']
    value = values[rng.integers(len(values))]
    f.attrs[name] = value
    return f"attribute {name} = {str(value)[:40]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_fuzz_crafted_files(seed, tmp_path, capsys):
    """50 files a seed, each valid but for 1 to 3 random changes: summary, status and open_surface
    give their result or one line, exit 1, never a traceback, never more than 1 GiB."""
    rng = np.random.default_rng(seed)
    for k in range(50):
        path = surface_file(tmp_path / f"f{k}.h5")
        with h5py.File(path, "a") as f:
            done = [random_damage(rng, f) for _ in range(rng.integers(1, 4))]
        for reader in ("summary", "status", "open_surface"):
            if reader == "open_surface":
                try:
                    with at_most_1_gib_more():
                        ll.open_surface(path)
                    continue
                except UserError as exc:
                    code, err = 1, f"losslandscape: error: {exc}\n"
            else:
                with at_most_1_gib_more():
                    code = cli.main([reader, str(path)])
                err = capsys.readouterr().err
                if code == 0:
                    continue
            lines = err.strip().splitlines()
            assert code == 1 and len(lines) == 1 and "Traceback" not in err, (seed, k, reader, done, err[-1500:])
            assert lines[0].startswith("losslandscape: error: ") and len(lines[0]) < 600, (seed, k, reader, done)
