"""Location of the shared reference data (parity files, Kinetics label maps)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GIANT_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def reference_file(rel: str) -> Path:
    path = REFERENCE / rel
    if not path.exists():
        pytest.skip(f"reference file {path} not present (set GIANT_REFERENCE_DIR)")
    return path
