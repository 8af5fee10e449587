"""argparse under the one error contract (giant.console), and the argument types and help
text several commands share. Imports only the standard library and giant.console, so building
a parser (and answering --help) never loads torch."""
from __future__ import annotations

import argparse
import sys

from giant.console import fail

# shown under every command that may load a checkpoint (why a foreign run dir needs trust)
TRUST_NOTE = ("Resuming (checkpoint.resume=auto over a run dir that holds checkpoints, a run dir\n"
              "or a step_* dir) loads the DeepSpeed checkpoint with DeepSpeed's own loader, which\n"
              "unpickles unrestricted and so runs code stored in the files: train into or resume\n"
              "from a run dir only if you made it or trust whoever did. Weights (checkpoint.init_from,\n"
              "distill.teacher, giant export, giant reshard, giant convert) load without running code.")


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
