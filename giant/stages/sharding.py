"""Evaluation sharding: every rank runs the same number of forwards (ZeRO-3 gathers parameters
collectively, so a rank with one batch fewer would hang its peers), and the padding duplicates
are flagged so that every video counts exactly once in the gathered result.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class PaddedShardSampler(Sampler):
    """Rank r gets positions r, r+W, r+2W ... of [0..n) padded to a multiple of W·batch by
    repeating the last index; `real(k)` says whether this rank's k-th item is not padding."""

    def __init__(self, n: int, rank: int, world: int, batch: int = 1):
        self.n, self.rank, self.world = n, rank, world
        per = -(-n // world)  # items per rank, rounded up
        self.per_rank = -(-per // batch) * batch
        total = self.per_rank * world
        self.positions = list(range(rank, total, world))

    def __iter__(self) -> Iterator[int]:
        return iter(min(p, self.n - 1) for p in self.positions)

    def __len__(self) -> int:
        return self.per_rank

    def real_mask(self) -> torch.Tensor:
        return torch.tensor([p < self.n for p in self.positions])


def all_reduce_sum(values, device: torch.device) -> list[float]:
    """Sum a list or tensor over ranks; one device→host copy at the end."""
    buf = torch.as_tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(buf)
    return buf.tolist()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's equally-shaped tensor along dim 0, in rank order."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)
