"""Fuzz: a few hundred random-but-plausible job specs, each a valid spec with one or two fields
(or the file's bytes, or its path) replaced by a hostile value, given to the real command line.

For each: exit 1 with exactly one stderr line "losslandscape: error: ..." and no traceback, or
exit 0 where the mutation happened to be valid (and then the library's own validation,
`spec.load`, takes the spec too); either way nothing is left in the working directory but the
spec. The verb is `submit --dry-run` on a new surface: the spec's whole validation, then the
scripts printed and nothing written, so a case takes milliseconds, in this process.

Seeded: the test id names the seed and the case (`seed29-017`); LL_FUZZ_SEED=<n> draws another
set, and a failure reproduces with the same seed and id.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
from pathlib import Path

import pytest

from losslandscape import spec as specs
from losslandscape.frontends import cli, verbs
from helpers import fast_sample

SEED = int(os.environ.get("LL_FUZZ_SEED", "29"))
CASES = 300
FAST = 30  # the first cases run in `make check`, all of them in `make test`

BASE = {
    "model": {"name": "resnet20", "checkpoint": "ckpt/model.pt", "num_classes": 10, "trust_checkpoint": False},
    "data": {"name": "digits", "root": "data", "splits": ["train", "test"], "max_samples": 64, "seed": 1,
             "workers": 0, "transform": "standard", "image_size": 32, "parts": 1, "part": 0},
    "directions": {"kind": "random", "dir_type": "weights", "norm": "filter", "ignore": "biasbn", "seed": 3,
                   "orthogonal": False, "include": ["conv*"], "exclude": [], "same_dir": False},
    "grid": {"x": "-1:1:11", "y": "-1:1:9", "auto_factor": 10.0, "auto_samples": 256},
    "evaluation": {"loss": "cross_entropy", "batch_size": 64, "precision": "fp32", "fold_batchnorm": True,
                   "device": "cpu", "threads": 1, "unit_size": 4},
    "output": {"surface": "out/surface.h5"},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
              "lr_steps": [1], "lr_gamma": 0.1, "warmup_epochs": 0, "save_every": 1, "out_dir": "out/train",
              "seed": 0},
}

NUMBERS = [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30, -(10**30), 1e20, -1e20, 1e308, -1e308, 1e-320,
           5e-324, -0.0, math.nan, math.inf, -math.inf, 0.5]
TEXTS = ["", " ", "\x00", "a\x00b", "a\nb", "\r", "\x1b[31mred", "\x7f", "\u202e", "\U0001f4a5", "x" * 5000,
         "y" * 200_000, "d/" * 3000, "n" * 300, "/", ".", "..", "../../etc/passwd", "out/", "os:system",
         "shutil:rmtree", "a:b:c", ":x", "x:", "mod:fn", "auto", "auto:0", "auto:1e9", "-1:1:0",
         "1e308:-1e308:3", "-1e308:1e308:5", "0:1e-320:3", "-1:1:1000000000", "nan:1:3", "-1:inf:3",
         "1:1.0000000000000002:3", "cuda:x", "cuda:99", "python:x", "$(touch PWNED)", "'; rm -rf ~; '"]
OTHERS = [True, [], [1, 2], ["a", "\x00"], {"a": 1}, datetime.datetime(1979, 5, 27, 7, 32),
          datetime.date(2026, 1, 1)]
HOSTILE = [*NUMBERS, *TEXTS, *OTHERS]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # TOML's basic string: its escapes are JSON's
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    raise TypeError(v)


def toml(table: dict) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for section, values in table.items())


def case(seed: int, k: int) -> tuple[str, bytes, str, list[str]]:
    """(what was changed, the spec file's bytes, its name, command-line overrides) of case k of `seed`."""
    rng = random.Random(seed * 100_003 + k)
    table = json.loads(json.dumps(BASE))
    changes, overrides = [], []
    if rng.random() < 0.15:  # a hostile value on the command line instead, as text
        section = rng.choice([s for s in specs.SURFACE_TABLES if s in table])
        key, value = rng.choice(list(table[section])), rng.choice(HOSTILE)
        text = toml_value(value) if not isinstance(value, str) else value
        overrides.append(f"--{section}.{key}={text}")
        changes.append(f"--{section}.{key}={text!r:.60}")
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.random()
        section = rng.choice(list(table))
        if kind < 0.06:
            key = rng.choice(["bogus", "seeed", "x y", "\u00e9"])
            table[section][key] = rng.choice(HOSTILE)
            changes.append(f"unknown key {section}.{key}")
        elif kind < 0.09:
            table[rng.choice(["bogus", "Model"])] = {"x": 1}
            changes.append("unknown table")
        else:
            key = rng.choice(list(table[section]))
            value = rng.choice(HOSTILE)
            if isinstance(table[section][key], list) and rng.random() < 0.5:
                value = [value]
            table[section][key] = value
            changes.append(f"{section}.{key} = {value!r:.60}")
    data = toml(table).encode("utf-8", "surrogatepass")
    name = "job.toml"
    kind = rng.random()
    if kind < 0.05:  # bytes that are not UTF-8 inside a value
        at = data.index(b'"') + 1
        data = data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + data[at:]
        changes.append("non-UTF-8 bytes")
    elif kind < 0.07:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        changes.append("random bytes")
    elif kind < 0.09:
        data = data[:rng.randrange(len(data))]
        changes.append("truncated")
    elif kind < 0.11:
        name = rng.choice(["s" * 300 + ".toml", "job\n.toml", "a" * 250 + ".toml"])
        changes.append(f"spec file name of {len(name)} characters")
    return "; ".join(changes), data, name, overrides


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def parser():
    """cli.main is `verbs.run(cli.build_parser(), argv)`: the parser is built once for every case."""
    return cli.build_parser()


@pytest.mark.parametrize("k", fast_sample(range(CASES), range(FAST)), ids=lambda k: f"seed{SEED}-{k:03d}")
def test_a_hostile_spec_is_one_line_or_valid_and_leaves_nothing(k, parser, tmp_path, monkeypatch, capsys):
    what, data, name, overrides = case(SEED, k)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    try:
        path.write_bytes(data)
    except OSError:  # a name this file system refuses: the spec is given by that name all the same
        pass
    before = listing(tmp_path)
    code = verbs.run(parser, ["submit", "--tasks", "2", "--dry-run", name, *overrides])
    out, err = capsys.readouterr()
    context = f"LL_FUZZ_SEED={SEED} case {k}: {what}\n{err[-2000:]}"
    assert "Traceback" not in err, context
    given = dict(o[2:].split("=", 1) for o in overrides)
    if code == 0:
        specs.load(name, given)  # the library's own validation takes it too (raises otherwise)
        assert "losslandscape: error:" not in err, context
    else:
        assert code == 1, context
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("losslandscape: error: "), context
        assert len(lines[0]) < 1000, context
    assert listing(tmp_path) == before, context


def test_the_fuzz_set_is_seeded_and_hostile():
    assert [case(SEED, k) for k in range(5)] == [case(SEED, k) for k in range(5)]
    assert case(SEED, 0) != case(SEED + 1, 0)
    whats = [case(SEED, k)[0] for k in range(CASES)]
    assert sum("non-UTF-8" in w or "random bytes" in w for w in whats) >= 5
    assert sum("unknown" in w for w in whats) >= 5
