"""The command-line output layer: commands write results here, library code logs instead.

Its own module so that command implementations living next to their library code (flops,
bench, convert, data, pipeline) can print without importing the CLI dispatcher. It also holds
the one error contract every entry point shares: a user error is one stderr line
`giant <command>: error: <what> (<how to fix>)` and exit code 2 — never a usage dump or a
traceback (`ArgumentParser` for argparse's own errors, `fail` / `run` for GiantError).
"""
from __future__ import annotations

import argparse
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
    """`main(argv)` with a GiantError turned into the contract line (for `python -m` entry points
    that do not go through giant.cli)."""
    try:
        return int(main(argv) or 0)
    except GiantError as exc:
        return fail(prog, exc)


class ArgumentParser(argparse.ArgumentParser):
    """argparse under the contract: an unknown option or a bad value is one line naming it plus
    where the usage is, exit 2; the usage itself only with --help. Subparsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        sys.exit(fail(self.prog, f"{message} (see `{self.prog} --help`)"))


def _number(kind: type, text: str, low: float, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}")
    if not value >= low:  # also NaN, which compares false
        raise argparse.ArgumentTypeError(f"{text} must be {what}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a count or size that must be >= 1."""
    return _number(int, text, 1, ">= 1")


def nonnegative_int(text: str) -> int:
    """argparse type: >= 0 (0 means none, e.g. loader workers in this process)."""
    return _number(int, text, 0, ">= 0")


def ratio(text: str) -> float:
    """argparse type: a fraction in [0, 1) (mask ratios: 1 would keep no token)."""
    value = _number(float, text, 0.0, "in [0, 1)")
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1)")
    return value
