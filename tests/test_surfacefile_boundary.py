"""The surface file is one package: no module outside src/losslandscape/surfacefile/ opens an
HDF5 file or names one of its datasets (issue 28, item 2). Checked by reading the source (ast),
so that it stays true as the code grows.

What counts: importing h5py; opening a file (h5py.File, or surfacefile.format's open_h5,
writing, creating); indexing anything with a name of the format (`f[ff.EIG_DONE]`) or with
the literal name of one of the file's datasets (`f["xcoordinates"]`, `f["directions/x"]`).
Reading a loaded Surface's `values` by value name (a dict in memory) is not file access.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from losslandscape.surfacefile import format as ff

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "losslandscape"
INSIDE = PACKAGE / "surfacefile"
OPENERS = {"open_h5", "writing", "creating"}  # surfacefile.format's ways to open a file
# names that only a surface, shard or direction file uses: indexing by one is reading that file
# (not max_eig / min_eig: a summary's keys too, nor dir_file: the original code's option)
DATASETS = {ff.X, ff.Y, ff.POINT_SECONDS, ff.EIG_DONE, ff.HESSIAN_CENTRE, ff.DIRECTIONS,
            *(ff.done_name(s) for s in ff.SPLITS), "xdirection", "ydirection"}

# Not yet behind the package, each named with why (the lead removes an entry once it is):
PENDING: dict[str, set[str]] = {}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if INSIDE not in p.parents)


def _format_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(aliases of surfacefile.format, names imported from it) in a module."""
    aliases, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "losslandscape.surfacefile":
            aliases |= {a.asname or a.name for a in node.names if a.name == "format"}
        elif isinstance(node, ast.ImportFrom) and node.module == "losslandscape.surfacefile.format":
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "losslandscape.surfacefile.format" and a.asname}
    return aliases, names


def _dataset_constant(name: str) -> bool:
    """A constant of surfacefile.format naming a dataset or group (its attribute names, A_*, are
    also the keys of the notes a run passes around)."""
    return name.isupper() and not name.startswith("A_") and isinstance(getattr(ff, name, None), (str, tuple))


def violations(path: Path) -> list[tuple[str, int, str]]:
    """[(kind, line, text)]: kind "import" (h5py), "open" (a file opened), "dataset" (named)."""
    tree = ast.parse(path.read_text(), str(path))
    aliases, imported = _format_names(tree)
    found = []

    def is_format_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            return _dataset_constant(node.attr)
        return isinstance(node, ast.Name) and node.id in imported and _dataset_constant(node.id)

    def is_dataset_literal(node: ast.AST) -> bool:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return False
        return node.value in DATASETS or node.value.startswith(f"{ff.DIRECTIONS}/")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "h5py" for a in node.names):
            found.append(("import", node.lineno, "import h5py"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "h5py":
            found.append(("import", node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            base = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
            if (base == "h5py" and name == "File") or (name in OPENERS and (base in aliases or name in imported)):
                found.append(("open", node.lineno, ast.unparse(fn)))
            elif name == "get" and node.args and (is_format_name(node.args[0]) or is_dataset_literal(node.args[0])):
                found.append(("dataset", node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Subscript) and (is_format_name(node.slice) or is_dataset_literal(node.slice)):
            found.append(("dataset", node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_package_opens_the_file_or_names_a_dataset(path):
    rel = str(path.relative_to(PACKAGE))
    allowed = PENDING.get(rel, set())
    bad = [f"{rel}:{line}: {kind}: {text}" for kind, line, text in violations(path) if kind not in allowed]
    assert not bad, "outside surfacefile/:\n" + "\n".join(bad)


def test_the_check_sees_what_it_forbids(tmp_path):
    """The reader of the source finds each kind of access (so an empty result means something)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import h5py\n"
        "from losslandscape.surfacefile import format as ff\n"
        "from losslandscape.surfacefile.format import EIG_DONE, open_h5\n"
        "with h5py.File('s.h5', 'r') as f:\n"
        "    a = f['xcoordinates'][()]\n"
        "    b = f[ff.POINT_SECONDS]\n"
        "    c = f.get(EIG_DONE)\n"
        "    d = f['directions/x']\n"
        "with ff.writing('s.h5') as g, open_h5('t.h5', 'r') as h:\n"
        "    pass\n"
        "values = {'train_loss': 1.0}\n"
        "loss = values['train_loss']  # a loaded Surface's values: not the file\n")
    got = sorted((kind, line) for kind, line, _ in violations(probe))
    assert got == [("dataset", 5), ("dataset", 6), ("dataset", 7), ("dataset", 8),
                   ("import", 1), ("open", 4), ("open", 9), ("open", 9)]


def test_pending_entries_are_still_needed():
    """An entry of PENDING that its module no longer needs is removed (the list only shrinks)."""
    for rel, kinds in PENDING.items():
        path = PACKAGE / rel
        if not path.exists():
            continue
        have = {kind for kind, _, _ in violations(path)}
        assert kinds <= have, f"{rel}: {sorted(kinds - have)} no longer needed in PENDING"
