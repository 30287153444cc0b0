"""`losslandscape VERB ...`: the console entry point.

The verbs and their arguments are `verbs.py`'s; this adds the paper verb, which runs the
others as its steps. User errors (`UserError`) become one line on stderr and exit 1; anything
else is a bug and keeps its traceback. Exit codes: 0 done, 1 error, 3 stopped early but
resumable, 4 finished with missing points.
"""

from __future__ import annotations

import argparse
import sys

from losslandscape.frontends import verbs
from losslandscape.paper.run import run as run_paper


def cmd_paper(args: argparse.Namespace) -> int:
    return run_paper(args.scale, args.out, args.mpi)


def build_parser() -> argparse.ArgumentParser:
    return verbs.build_parser(run_paper=cmd_paper)


def main(argv: list[str] | None = None) -> int:
    return verbs.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
