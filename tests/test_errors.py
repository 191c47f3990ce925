"""Exit codes with one meaning each (steeldefect.errors.run, used by every stage and the command): 2 for a
UserError, 3 for an unexpected error with a one-line hint, the traceback only with STEELDEFECT_DEBUG=1 (same
code); SystemExit and Ctrl-C pass through. `steeldefect predict`'s 0 / 1 / 2 are in test_cli.py."""

from __future__ import annotations

import signal
import sys

import pytest

from helpers import REPO, run

HINT = "; this is a bug - rerun with STEELDEFECT_DEBUG=1 for the traceback"
RUN = "import os, signal, sys\nfrom steeldefect.errors import UserError, run\ndef main():\n    {}\nrun(main)"


# Python started by a pytest-xdist worker inherits its ignored SIGINT and then installs no KeyboardInterrupt
# handler: give the stage the handler a Python started from a shell has
SIGINT_AS_IN_A_SHELL = "signal.signal(signal.SIGINT, signal.default_int_handler)"


def python(body: str, debug: bool = False):
    """Run `body` as the main function of a stage in a fresh Python."""
    env = {"STEELDEFECT_DEBUG": "1" if debug else "0"}
    return run([sys.executable, "-c", RUN.format(body)], REPO, check=False, env=env)


def test_an_unexpected_error_exits_3_with_a_one_line_hint():
    proc = python("1 / 0")
    assert proc.returncode == 3
    assert proc.stderr == f"steeldefect: unexpected error (ZeroDivisionError: division by zero){HINT}\n"

    proc = python("raise RuntimeError('first line\\nsecond line ' + 'word ' * 200)")  # one line, shortened
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1 and len(proc.stderr) < 400
    assert proc.stderr.startswith("steeldefect: unexpected error (RuntimeError: first line second line word word")


def test_debug_shows_the_traceback_and_keeps_the_code():
    proc = python("1 / 0", debug=True)
    assert proc.returncode == 3 and proc.stderr.startswith("Traceback") and ", in main\n" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("steeldefect: unexpected error (ZeroDivisionError")

    proc = python("raise UserError('params.yaml: fix x.')", debug=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and proc.stderr.endswith("error: params.yaml: fix x.\n")


def test_a_user_error_exits_2_with_its_message_only():
    proc = python("raise UserError('params.yaml: fix x.')")
    assert (proc.returncode, proc.stderr) == (2, "error: params.yaml: fix x.\n")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("sys.exit(5)", 5),
        ("return 7", 0),
        (f"{SIGINT_AS_IN_A_SHELL}; os.kill(os.getpid(), signal.SIGINT)", -signal.SIGINT),
    ],
)
def test_exit_and_ctrl_c_pass_through(body, code):
    """A stage's own exit code stays; Ctrl-C ends the process by SIGINT as usual (130 in a shell)."""
    proc = python(body)
    assert proc.returncode == code and "unexpected" not in proc.stderr


def test_a_crash_in_the_command_exits_3(tmp_path):
    """The `steeldefect` command: a crash inside it (injected: the image listing fails) gives 3 and the hint."""
    crash = "from steeldefect.serve import cli; cli.expand_images = lambda inputs: {}['boom']; sys.exit(cli.main())"
    args = ["predict", str(tmp_path), "--output", str(tmp_path / "p.csv")]
    proc = run([sys.executable, "-c", f"import sys\n{crash}", *args], tmp_path, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"steeldefect: unexpected error (KeyError: 'boom'){HINT}"
    assert not (tmp_path / "p.csv").exists()
