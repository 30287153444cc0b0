"""The README and docs/ hold together: every link and picture resolves, every page is reachable
from the README, every job spec shown is a valid spec, and the README stays a short read."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from helpers import REPO
from losslandscape import spec as specs

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links and headings live outside them)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", prose(page), re.M)}


def links(page: Path) -> list[str]:
    """Targets of the page's markdown links and pictures, without those to other sites."""
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", prose(page)) if not re.match(r"[a-z]+://", t)]


def test_the_slug_is_githubs():
    assert slug('"auto" axes') == "auto-axes"
    assert slug("Running on many processes: MPI") == "running-on-many-processes-mpi"
    assert slug("Reproducing the paper (`make paper`)") == "reproducing-the-paper-make-paper"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_and_picture_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_file(), f"{page.name}: {target}"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file), f"{page.name}: {target}"


def test_every_page_and_picture_under_docs_is_reachable_from_the_readme():
    seen, todo = set(), [REPO / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in links(page):
            path = target.partition("#")[0]
            if path:
                file = (page.parent / path).resolve()
                if file.suffix == ".md":
                    todo.append(file)
                else:
                    seen.add(file)
    docs = {p.resolve() for p in (REPO / "docs").iterdir() if p.suffix in (".md", ".png")}
    assert docs <= seen, sorted(p.name for p in docs - seen)


def test_every_job_spec_shown_is_a_valid_spec():
    """Each toml block that is a whole spec (it opens with a table) loads as the command line would."""
    checked = []
    for page in PAGES:
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S):
            if block.startswith("["):
                specs.from_dict(tomllib.loads(block))
                checked.append(page.name)
    assert {"README.md", "spec.md", "models-and-data.md", "trajectories.md"} <= set(checked)


def test_the_full_example_spec_shows_the_defaults_it_claims():
    """docs/spec.md: the fields it comments as defaults are the spec's defaults."""
    block = (REPO / "docs" / "spec.md").read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    shown = specs.from_dict(tomllib.loads(block))
    default = specs.from_dict({})
    assert (shown.grid.auto_factor, shown.grid.auto_samples) == (default.grid.auto_factor, default.grid.auto_samples)
    assert (shown.evaluation.batch_size, shown.evaluation.threads) == (0, 0) == (
        default.evaluation.batch_size, default.evaluation.threads)


def test_the_readme_is_a_short_read():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300
