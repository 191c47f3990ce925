"""One error type for problems the user can fix (bad params, bad data), printed as one paragraph."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable


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
