"""The command-line output layer: commands write results here, library code logs instead.

Its own module, below everything, so that any command prints without importing the CLI
dispatcher. It also holds the one error contract every entry point shares: a user error is one
stderr line `giant <command>: error: <what> (<how to fix>)` and exit code 2 — never a usage dump
or a traceback (`fail` / `run` for GiantError; giant.commands._args.ArgumentParser applies the
same line to argparse's own errors).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from giant.errors import GiantError

USAGE_ERROR = 2  # the exit code of every error a person has to fix


def out(text: str = "", err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def error_line(prog: str, message: object) -> str:
    """`PROG: error: MESSAGE` on one line: a message of several lines (a list of refusals) is
    joined with '; ', so a script reading the last line, or grepping it, sees all of it."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return f"{prog}: error: {text}"


def fail(prog: str, message: object) -> int:
    """Print the contract line for `message` (a GiantError or text); returns the exit code."""
    out(error_line(prog, message), err=True)
    return USAGE_ERROR


def run(prog: str, main: Callable[[Optional[list]], Optional[int]], argv: Optional[list]) -> int:
    """`main(argv)` with a GiantError turned into the contract line (for entry points that do not
    go through giant.cli: launch/*.py, the `distill` script)."""
    try:
        return int(main(argv) or 0)
    except GiantError as exc:
        return fail(prog, exc)
