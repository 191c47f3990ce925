"""One error type for problems the user can fix (bad params, bad data), printed as one paragraph; the runner and
the path arguments of stages and commands.

Exit codes of every stage and of the `steeldefect` command, one meaning each:

    0  everything done
    1  some images could not be read (`steeldefect predict` only: their rows hold the error)
    2  a usage, param or data error (bad arguments, bad params.yaml, missing or bad input): the message says
       what to fix
    3  an unexpected error: a bug; one line names it, STEELDEFECT_DEBUG=1 shows the traceback
  130  interrupted (Ctrl-C)

STEELDEFECT_DEBUG=1 prints the traceback of errors 2 and 3 too; the exit code stays the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Callable
from pathlib import Path

USER_ERROR, BUG = 2, 3  # exit codes (see above)


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it."""


def run(main: Callable[[], object]) -> None:
    """Run a stage or command: a UserError prints one paragraph and exits 2, any other exception one line and
    exits 3 (a traceback first with STEELDEFECT_DEBUG=1). SystemExit and KeyboardInterrupt pass through."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = os.environ.get("STEELDEFECT_DEBUG") == "1"
    try:
        main()
    except Exception as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(USER_ERROR)
        what = textwrap.shorten(f"{type(e).__name__}: {e}", 300)
        hint = "the traceback is above" if debug else "rerun with STEELDEFECT_DEBUG=1 for the traceback"
        print(f"steeldefect: unexpected error ({what}); this is a bug - {hint}", file=sys.stderr)
        sys.exit(BUG)


def paths(*names: str) -> argparse.Namespace:
    """A stage's input and output paths, from its command line: dvc.yaml passes each as `--name PATH` (`--train-metrics`
    for the name `train_metrics`), so the paths are written once, in dvc.yaml."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    return parser.parse_args()
