"""docs/architecture.md matches the tree: every module of the package is named on the page, and
every module the page names exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

PACKAGE = REPO / "src" / "losslandscape"
PAGE = REPO / "docs" / "architecture.md"


def test_every_module_is_on_the_page_and_every_named_module_exists():
    text = PAGE.read_text()
    modules = {p.stem for p in PACKAGE.rglob("*.py") if p.stem not in {"__init__", "__main__", "_version"}}
    modules |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    missing = sorted(m for m in modules if not re.search(rf"\b{re.escape(m)}\b", text))
    assert not missing, f"modules the page does not name: {missing}"
    named = set(re.findall(r"`([a-z_]+)\.py`", text))
    stems = {p.stem for p in PACKAGE.rglob("*.py")} | {p.stem for p in (REPO / "tools").glob("*.py")}
    assert named <= stems, f"the page names modules that do not exist: {sorted(named - stems)}"


@pytest.mark.slow  # runs a small surface job
def test_the_crossings_tool_counts_the_modules_of_one_job(tmp_path):
    """docs/architecture.md: `python -m tools.crossings` lists the modules one `surface` job runs
    code in and the calls between them, from the command line to the first point written."""
    proc = subprocess.run([sys.executable, "-m", "tools.crossings", "--show"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    modules = [line for line in lines if line.startswith("losslandscape.") and " -> " not in line]
    calls = [line for line in lines if " -> " in line]
    m = re.fullmatch(r"(\d+) modules, (\d+) distinct calls between modules, (\d+) pairs of modules that call each other",
                     lines[-1])
    assert m and (int(m[1]), int(m[2])) == (len(modules), len(calls)), lines[-1]
    # the job's path: the verb, the driver, the evaluator, the writer; nothing of the render verbs' drawing
    for name in ("frontends.verbs", "run.driver", "numerics.evaluate", "surfacefile.write"):
        assert f"losslandscape.{name}" in modules, name
    assert "losslandscape.render.plot2d" not in modules
    assert any(c.startswith("losslandscape.run.driver:") and "surfacefile.write:PointWriter.write" in c for c in calls)
