"""Count the module crossings of one `losslandscape surface` job (issue #28's measure).

    python -m tools.crossings [--tree DIR] [--show]

Runs one small job in this process, from the command line's entry point to the first
point written, under `sys.setprofile`, and counts
- the package's modules whose code runs (code run while a module is imported is left out),
- the distinct calls between them: (caller function, callee function) pairs whose
  modules differ,
- the ordered pairs of modules with such a call.
`--tree DIR` counts another checkout's `src/` (an older commit, for a like-for-like
comparison). Nothing here is part of the installed package.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

SPEC = """
[model]
name = "resnet20"

[data]
name = "digits"
splits = ["train"]
max_samples = 64

[directions]
kind = "random"
seed = 0

[grid]
x = "-1:1:3"
y = "-1:1:3"

[output]
surface = "{out}"
"""

def trace(src: Path, show: bool) -> tuple[set[str], set[tuple[str, str]]]:
    sys.path.insert(0, str(src))
    pkg = str((src / "losslandscape").resolve())
    modules: set[str] = set()
    calls: set[tuple[str, str]] = set()
    done = False

    def name(code) -> str | None:
        path = os.path.realpath(code.co_filename)
        if not path.startswith(pkg):
            return None
        rel = os.path.relpath(path, str(src.resolve()))
        return rel[:-3].replace(os.sep, ".")

    def importing(frame) -> bool:
        while frame is not None:
            if frame.f_code.co_name == "<module>" and name(frame.f_code) is not None:
                return True
            frame = frame.f_back
        return False

    def hook(frame, event, arg):
        nonlocal done
        if done or event != "call":
            return
        callee = name(frame.f_code)
        if callee is None or importing(frame):
            return
        modules.add(callee)
        back = frame.f_back
        # the nearest caller inside the package (library frames in between are skipped)
        while back is not None and name(back.f_code) is None:
            back = back.f_back
        if back is not None:
            caller = name(back.f_code)
            if caller != callee:
                calls.add((f"{caller}:{back.f_code.co_qualname}", f"{callee}:{frame.f_code.co_qualname}"))
        if "PointWriter" in frame.f_code.co_qualname and frame.f_code.co_name.startswith("write"):
            done = True

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "job.toml"
        spec.write_text(SPEC.format(out=Path(tmp) / "s.h5"))
        import importlib  # imported before tracing: import time is not counted
        try:
            cli = importlib.import_module("losslandscape.frontends.cli")
            importlib.import_module("losslandscape.run.driver")
        except ModuleNotFoundError:  # a tree from before the stage layout
            cli = importlib.import_module("losslandscape.cli")
            importlib.import_module("losslandscape.distributed")
        assert Path(cli.__file__).resolve().is_relative_to(src.resolve()), cli.__file__
        sys.setprofile(hook)
        try:
            cli.main(["surface", str(spec)])
        finally:
            sys.setprofile(None)
    if not done:
        raise SystemExit("the job wrote no point: nothing to count")
    if show:
        for c in sorted(calls):
            print(f"{c[0]} -> {c[1]}")
        for m in sorted(modules):
            print(m)
    return modules, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--show", action="store_true", help="list the modules and the calls")
    a = ap.parse_args()
    modules, calls = trace(a.tree / "src", a.show)
    pairs = {(a.split(":")[0], b.split(":")[0]) for a, b in calls}
    print(f"{len(modules)} modules, {len(calls)} distinct calls between modules, "
          f"{len(pairs)} pairs of modules that call each other")


if __name__ == "__main__":
    main()
