"""Fixed 1-D sine-cosine position table over the flattened (t, h, w) token index (docs/reference.md §1).

The table is a non-persistent buffer: it is not a parameter and not in the state dict, so the
official checkpoints load unchanged. Other grids resample the table built at the pre-training
grid instead of building a new one, so a position keeps its meaning across frame counts and
resolutions.

Shapes: N tokens = T'·H'·W', D width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_table(num_positions: int, dim: int) -> torch.Tensor:
    """(N, D) float32; dims 0::2 = sin(pos / 10000^(2i/D)), 1::2 = cos (float64 maths)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    # Pair index i = j // 2 for column j, exactly as the transformer formula states.
    pair = torch.arange(dim, dtype=torch.float64) // 2
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * pair / dim)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def resample_table(table_ND: torch.Tensor, src_grid: tuple[int, int, int],
                   dst_grid: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly resample a (T·H·W, D) table from `src_grid` to `dst_grid`."""
    if tuple(src_grid) == tuple(dst_grid):
        return table_ND
    t, h, w = src_grid
    dim = table_ND.shape[-1]
    grid_1DTHW = table_ND.reshape(t, h, w, dim).permute(3, 0, 1, 2)[None]
    out = F.interpolate(grid_1DTHW, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return out[0].permute(1, 2, 3, 0).reshape(-1, dim).contiguous()


def position_table(grid: tuple[int, int, int], dim: int,
                   src_grid: tuple[int, int, int] | None = None) -> torch.Tensor:
    """(1, N, D) table for `grid`, defined at `src_grid` (default: `grid` itself)."""
    src = tuple(src_grid) if src_grid else tuple(grid)
    table = sincos_table(src[0] * src[1] * src[2], dim)
    return resample_table(table, src, tuple(grid))[None]
