"""The command-line output layer: commands write results here, library code logs instead.

Its own module so that command implementations living next to their library code (flops,
bench, convert, data, pipeline) can print without importing the CLI dispatcher.
"""
from __future__ import annotations

import sys


def out(text: str = "", err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()
