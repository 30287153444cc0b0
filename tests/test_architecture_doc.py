"""docs/architecture.md matches the tree: every module of the package is named on the page, and
every module the page names exists."""

from __future__ import annotations

import re

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
