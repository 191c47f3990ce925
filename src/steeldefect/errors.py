"""One error type for problems the user can fix (bad params, bad data), printed as one paragraph; the runner and
the path arguments of stages and commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it."""


def run(main: Callable[[], object]) -> None:
    """Run a stage or command: a UserError prints one paragraph and exits 2 (a traceback only with
    STEELDEFECT_DEBUG=1)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except UserError as e:
        if os.environ.get("STEELDEFECT_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def paths(*names: str) -> argparse.Namespace:
    """A stage's input and output paths, from its command line: dvc.yaml passes each as `--name PATH` (`--train-metrics`
    for the name `train_metrics`), so the paths are written once, in dvc.yaml."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    return parser.parse_args()
