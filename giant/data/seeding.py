"""Seed mixing shared by the datasets and the sampler (no torch/video imports, no cycles)."""
from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers; SeedSequence mixes them so neighbouring inputs differ
    (unlike `seed + epoch`, where seed s at epoch e+1 equals seed s+1 at epoch e)."""
    a, b = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


__all__ = ["derive_seed"]
