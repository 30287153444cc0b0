"""The stages' layering: the numerics and the inputs import neither h5py nor mpi4py nor any later
stage (the run, the surface file, the front ends), so that they run and are tested without MPI
or a file (STYLE.md, lessons 3 and 4).

The modules are imported in a fresh interpreter, one after the other, and the forbidden ones
looked for after each: an import another test already made in this process cannot hide one, and
the first module that pulls one in is named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "losslandscape"
STAGES = ("numerics", "inputs")
FORBIDDEN = ("h5py", "mpi4py", "losslandscape.run", "losslandscape.surfacefile", "losslandscape.frontends")

CHECK = """
import importlib, json, sys
modules, forbidden = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for module in modules:
    importlib.import_module(module)
    found = {m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)}
    if found:
        print(json.dumps([module, sorted({m if m.startswith("losslandscape.") else m.split(".")[0] for m in found})]))
        break
else:
    print(json.dumps([len(modules), []]))
"""


def modules(stage: str) -> list[str]:
    return sorted("losslandscape." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                  for p in (PACKAGE / stage).rglob("*.py"))


def test_the_stages_have_their_modules():
    # a moved package would otherwise leave the test below checking nothing
    assert {"losslandscape.numerics.evaluate", "losslandscape.numerics.hessian", "losslandscape.numerics.train",
            "losslandscape.numerics.directions"} <= set(modules("numerics"))
    assert {"losslandscape.inputs.data", "losslandscape.inputs.batches", "losslandscape.inputs.models",
            "losslandscape.inputs.checkpoints"} <= set(modules("inputs"))


def test_numerics_and_inputs_import_no_file_no_mpi_no_later_stage():
    every = [m for stage in STAGES for m in modules(stage)]
    done = subprocess.run([sys.executable, "-c", CHECK, json.dumps(every), json.dumps(FORBIDDEN)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    module, found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == [], f"{module} imports {', '.join(found)}"
    assert module == len(every)


def test_the_surface_file_imports_no_run_and_no_front_end_not_even_lazily():
    """The surface file sits below the run: no module of `surfacefile/` names a run or front-end
    module in any import statement, at the top or inside a function (read from the source, so
    that an import a code path makes only sometimes is found too)."""
    import ast

    for path in sorted((PACKAGE / "surfacefile").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("losslandscape.run", "losslandscape.frontends", "losslandscape.render")), \
                    f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}"
