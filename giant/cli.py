"""`giant <command> ...`: dispatch only; each command's parser and main live in giant/commands/.

User errors (GiantError, argparse's own) print as one line `giant <command>: error: ...` and
exit 2 instead of a traceback (giant.console holds the contract).
"""
from __future__ import annotations

import importlib
import logging
import sys

from giant.commands import COMMANDS
from giant.console import fail


def _usage() -> str:
    lines = ["usage: giant <command> [options]   (giant <command> --help for details)", "",
             "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail("giant", f"unknown command {name!r} (one of {', '.join(COMMANDS)}; see `giant --help`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mod_name, _, func = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(mod_name), func or "main")
    from giant.errors import GiantError

    try:
        return int(entry(rest) or 0)
    except GiantError as exc:
        return fail(f"giant {name}", exc)


if __name__ == "__main__":
    sys.exit(main())
