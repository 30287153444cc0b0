"""Fuzz: crafted surface files, each a real surface file (made by the tool, its points computed)
with one or two datasets or attributes replaced by h5py: wrong dtypes (strings, compounds,
integers), wrong shapes, declared shapes far beyond memory (chunked, nothing written: a few KB
on disk), NaN and infinite coordinates, attributes that are not the JSON expected, missing or
extra parts. Each is given to `summary` through the real command line, in this process.

For each: exit 0 (the change was harmless) or exit 1 with exactly one stderr line
"losslandscape: error: ..." and no traceback; the file is unchanged and nothing is added
beside it. Seeded like test_fuzz_hostile (LL_FUZZ_SEED; ids `seed29-017`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from losslandscape.frontends import cli, verbs
from helpers import fast_sample, in_process, tiny_job

SEED = int(os.environ.get("LL_FUZZ_SEED", "29"))
CASES = 120
FAST = 15  # the first cases run in `make check`, all of them in `make test`
HUGE = [(2**40,), (10**6, 10**6), (2**37, 8)]  # declared only (chunked, never written), terabytes: beyond any memory


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A real 2-D surface of the tiny linear model, every point computed."""
    folder = tmp_path_factory.mktemp("made")
    spec = tiny_job(folder, folder / "surface.h5", "-1:1:3", "-1:1:3", module="fuzztiny")
    assert in_process(spec) == 0
    return folder / "surface.h5"


@pytest.fixture(scope="module")
def parser():
    """cli.main is `verbs.run(cli.build_parser(), argv)`: the parser is built once for every case."""
    return cli.build_parser()


def _replace(f: h5py.File, name: str, **kwargs) -> None:
    if name in f:
        del f[name]
    f.create_dataset(name, **kwargs)


def _dataset_mutations(rng: random.Random, f: h5py.File) -> str:
    names = [n for n in ("xcoordinates", "ycoordinates", "train_loss", "train_acc", "train_done") if n in f]
    name = rng.choice(names)
    shape = f[name].shape
    choice = rng.randrange(10)
    if choice == 0:
        _replace(f, name, data=np.array([rng.choice([b"a", b"bc", b"\xff"]) for _ in range(int(np.prod(shape)))]
                                        ).reshape(shape))  # strings
    elif choice == 1:
        _replace(f, name, data=np.zeros(shape, dtype=[("a", "<f8"), ("b", "<i4")]))
    elif choice == 2:
        _replace(f, name, shape=rng.choice(HUGE), dtype="<f8", chunks=True)
    elif choice == 3:
        _replace(f, name, data=np.zeros(tuple(n + rng.choice((-1, 1, 5)) for n in shape) or (2,)))
    elif choice == 4:
        _replace(f, name, data=np.float64(1.5))  # a scalar
    elif choice == 5:
        _replace(f, name, data=np.full(shape, rng.choice([np.nan, np.inf, -np.inf, 1e308])))
    elif choice == 6:
        _replace(f, name, data=np.zeros((*shape, 2)))  # one dimension too many
    elif choice == 7:
        del f[name]
        f.create_group(name)  # a group where a dataset is
    elif choice == 8:
        del f[name]
    else:
        _replace(f, name, data=np.arange(int(np.prod(shape)), dtype="<i8").reshape(shape)[::-1])
    return f"dataset {name}: mutation {choice}"


ATTR_VALUES = ["{", "[1, 2]", "null", "5", '"text"', '{"grid": 5}', '{"model": []}', '{"grid": {"x": 5}}',
               "x" * 100_000, "", np.bytes_(b"a\x00b"), np.void(b"\xff\xfe"), np.array([1, 2, 3]), np.float64(np.nan),
               b"\xff\xfe", 12, json.dumps({"grid": {"x": "-1:1:1000000000", "y": "auto"}}),
               json.dumps(["bogus"]), json.dumps(["train", "train", "valid"])]


def _attribute_mutations(rng: random.Random, f: h5py.File) -> str:
    name = rng.choice(["format", "format_version", "spec", "identity", "splits", "values", "created", "versions",
                       "directions_sha256", "point_seconds"])
    if rng.random() < 0.15:
        if name in f.attrs:
            del f.attrs[name]
        return f"attribute {name} removed"
    value = rng.choice(ATTR_VALUES)
    f.attrs[name] = value
    return f"attribute {name} = {value!r:.50}"


def case(seed: int, k: int, original: Path, target: Path) -> str:
    """Write case k of `seed` to `target` (a mutated copy of `original`); what was changed."""
    rng = random.Random(seed * 100_019 + k)
    shutil.copyfile(original, target)
    changes = []
    with h5py.File(target, "r+", locking=False) as f:
        for _ in range(rng.choice((1, 1, 2))):
            mutate = _dataset_mutations if rng.random() < 0.5 else _attribute_mutations
            changes.append(mutate(rng, f))
    return "; ".join(changes)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("k", fast_sample(range(CASES), range(FAST)), ids=lambda k: f"seed{SEED}-{k:03d}")
def test_a_crafted_file_is_one_line_or_summarised_and_left_as_it_was(k, made, parser, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "crafted.h5"
    what = case(SEED, k, made, path)
    before, sha = listing(tmp_path), digest(path)
    try:
        code = verbs.run(parser, ["summary", str(path)])
    except Exception as exc:  # a bug: the command line would print its traceback
        pytest.fail(f"LL_FUZZ_SEED={SEED} case {k}: {what}: traceback {type(exc).__name__}: {str(exc)[:300]}")
    out, err = capsys.readouterr()
    context = f"LL_FUZZ_SEED={SEED} case {k}: {what}\n{err[-2000:]}"
    assert "Traceback" not in err, context
    assert code in (0, 1), context
    if code == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("losslandscape: error: "), context
        assert len(lines[0]) < 1000, context
    assert listing(tmp_path) == before and digest(path) == sha, context
