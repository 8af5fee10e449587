"""Masking strategies (docs/reference.md §3) as sorted index tensors with a fixed count per sample.

Fixed counts let a batch stack without padding and keep encoder cost constant; sorted indices
keep tokens in raster order, which is what the official code's boolean gathers produce.
Every function draws from an explicit `torch.Generator`, so loader workers are reproducible.

Grid = (T', H', W') token grid; N = T'·H'·W'. Keep = visible (encoder) or reconstructed
(decoder) token indices. `mask.encoder: adaptive` (AdaMAE) is the exception: the model draws
the visible tokens, and the loader sends negative placeholders (`adaptive_placeholder`).
"""
from __future__ import annotations

from typing import Callable

import torch

from giant.config import MaskConfig
from giant.errors import ConfigError
from giant.config import token_grid  # re-exported: data code asks masking for the grid

__all__ = ["MaskGenerator", "token_grid", "tube_keep", "random_keep", "frame_keep", "block_keep",
           "running_cell_keep", "running_cell_masked", "running_cell_count", "keep_to_mask",
           "mask_to_keep", "complement", "adaptive_placeholder"]

Grid = tuple[int, int, int]


def _sorted(idx: torch.Tensor) -> torch.Tensor:
    return torch.sort(idx.long()).values


def mask_to_keep(masked_N: torch.Tensor) -> torch.Tensor:
    """Bool mask (True = masked) → sorted indices of the unmasked tokens."""
    return torch.nonzero(~masked_N.bool()).flatten()


def keep_to_mask(keep_K: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Sorted keep indices → bool mask (True = masked)."""
    masked = torch.ones(num_tokens, dtype=torch.bool)
    masked[keep_K] = False
    return masked


def complement(keep_K: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Indices NOT in keep_K, sorted."""
    return torch.nonzero(keep_to_mask(keep_K, num_tokens)).flatten()


def tube_keep(grid: Grid, ratio: float, g: torch.Generator) -> torch.Tensor:
    """VideoMAE tube: the same int(ratio·H'W') spatial positions are masked in every slice."""
    t, h, w = grid
    hw = h * w
    num_visible = hw - int(ratio * hw)
    visible_space = _sorted(torch.randperm(hw, generator=g)[:num_visible])
    return (torch.arange(t)[:, None] * hw + visible_space[None]).flatten()


def random_keep(grid: Grid, ratio: float, g: torch.Generator) -> torch.Tensor:
    """MAE-ST random space-time: keep int(N·(1−ratio)) tokens of a random permutation."""
    n = grid[0] * grid[1] * grid[2]
    return _sorted(torch.randperm(n, generator=g)[:int(n * (1 - ratio))])


def frame_keep(grid: Grid, ratio: float, g: torch.Generator) -> torch.Tensor:
    """Frame masking: drop int(ratio·T') whole temporal slices (at least one slice stays)."""
    t, h, w = grid
    keep_t = max(t - int(ratio * t), 1)
    slices = _sorted(torch.randperm(t, generator=g)[:keep_t])
    return (slices[:, None] * (h * w) + torch.arange(h * w)[None]).flatten()


def block_keep(grid: Grid, ratio: float, g: torch.Generator, min_tokens: int = 16,
               max_aspect: float = 3.0) -> torch.Tensor:
    """Space-time cube masking: mask random cuboids until int(ratio·N) tokens are masked.

    Cubes are added in draw order and the last one is cut so the count is exact; a bounded
    number of draws is followed by a random fill, so a tiny grid can never loop forever.
    """
    t, h, w = grid
    n = t * h * w
    target = int(ratio * n)
    masked = torch.zeros(t, h, w, dtype=torch.bool)
    order: list[torch.Tensor] = []

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    for _ in range(100):
        if int(masked.sum()) >= target:
            break
        remaining = target - int(masked.sum())
        volume = rand(min_tokens, max(min_tokens, remaining))
        bt = int(torch.randint(1, t + 1, (), generator=g))
        area = volume / bt
        aspect = max_aspect ** rand(-1.0, 1.0)
        bh = max(1, min(h, int(round((area * aspect) ** 0.5))))
        bw = max(1, min(w, int(round((area / aspect) ** 0.5))))
        t0 = int(torch.randint(0, t - bt + 1, (), generator=g))
        y0 = int(torch.randint(0, h - bh + 1, (), generator=g))
        x0 = int(torch.randint(0, w - bw + 1, (), generator=g))
        cube = torch.zeros_like(masked)
        cube[t0:t0 + bt, y0:y0 + bh, x0:x0 + bw] = True
        new = cube & ~masked
        order.append(torch.nonzero(new.flatten()).flatten())
        masked |= cube
    chosen = torch.cat(order) if order else torch.empty(0, dtype=torch.long)
    if chosen.numel() < target:  # fill the remainder at random
        rest = torch.nonzero(~masked.flatten()).flatten()
        rest = rest[torch.randperm(rest.numel(), generator=g)]
        chosen = torch.cat([chosen, rest[:target - chosen.numel()]])
    return complement(chosen[:target], n)


def running_cell_keep(grid: Grid, ratio: float, g: torch.Generator, cell: int = 2) -> torch.Tensor:
    """VideoMAE V2 running-cell decoder mask; returns the positions the decoder reconstructs.

    A 2×2 cell queue [1,1,0,0] (1 = not reconstructed) is rolled by (s+t+1) for a start phase s
    drawn per sample, laid row-major over the cell and tiled over the frame: each slice keeps
    exactly (1−ratio) of its tokens and each position is kept in 2 of any 4 consecutive slices.
    """
    t, h, w = grid
    if h % cell or w % cell:
        raise ConfigError(
            f"running-cell decoder masking needs an even token grid, got H'×W'={h}×{w}; "
            f"choose model.img_size so img_size/patch is even (e.g. 224 with patch 16 or 14) "
            f"or set mask.decoder=none")
    start = int(torch.randint(0, cell * cell, (), generator=g))
    return mask_to_keep(running_cell_masked(grid, ratio, start, cell))


def running_cell_count(ratio: float, cell: int = 2) -> int:
    """Positions of each cell the decoder does NOT reconstruct: int(4·ratio), truncated as the
    official RunningCellMaskingGenerator does, which also requires 0 < count < 4. A count of
    4 would leave the decoder nothing to reconstruct (loss 0, no learning), 0 would make it
    reconstruct the whole clip; both are refused here rather than trained on."""
    size = cell * cell
    count = int(size * ratio)
    if not 0 < count < size:
        raise ConfigError(
            f"mask.decoder_ratio={ratio}: the running-cell decoder mask drops int({size}·ratio)="
            f"{count} of the {size} positions of each cell, which must be 1..{size - 1}; use a "
            f"ratio in [{1 / size:g}, 1) (official 0.5), or mask.decoder_ratio=0 / "
            f"mask.decoder=none for VideoMAE V1")
    return count


def running_cell_masked(grid: Grid, ratio: float, start: int, cell: int = 2) -> torch.Tensor:
    """(N,) bool, True = not reconstructed, for start phase `start` (official Cell queue)."""
    t, h, w = grid
    size = cell * cell
    num_masked = running_cell_count(ratio, cell)
    queue = torch.cat([torch.ones(num_masked), torch.zeros(size - num_masked)]).bool()
    slices = []
    for ti in range(t):
        ptr = start + ti + 1
        unit = queue[(torch.arange(size) + ptr) % size].reshape(cell, cell)
        slices.append(unit.repeat(h // cell, w // cell).flatten())
    return torch.cat(slices)


def adaptive_placeholder(grid: Grid, ratio: float, g: torch.Generator) -> torch.Tensor:
    """AdaMAE: the model's sampler draws the visible tokens, so the loader sends K =
    int(N·(1−ratio)) entries of −1−seed: the count to draw and a per-clip seed for the draw
    (giant/models/sampler.py), keeping a resumed run's draws identical."""
    n = grid[0] * grid[1] * grid[2]
    seed = int(torch.randint(0, 2 ** 62, (), generator=g))
    return torch.full((int(n * (1 - ratio)),), -1 - seed, dtype=torch.long)


_ENCODER_MASKS: dict[str, Callable] = {
    "tube": tube_keep, "random": random_keep, "frame": frame_keep, "block": block_keep,
    "adaptive": adaptive_placeholder}


class MaskGenerator:
    """Draws (enc_keep[K], dec_keep[M]) for one clip; dual masking when decoder='running_cell'.

    Decoder 'none' or ratio 0 is VideoMAE V1: the decoder reconstructs exactly the tokens the
    encoder did not see.
    """

    def __init__(self, cfg: MaskConfig, grid: Grid):
        if cfg.encoder not in _ENCODER_MASKS:
            raise ConfigError(f"mask.encoder={cfg.encoder!r}: choose one of {sorted(_ENCODER_MASKS)}")
        if cfg.decoder not in ("running_cell", "none"):
            raise ConfigError(f"mask.decoder={cfg.decoder!r}: choose running_cell or none")
        n = grid[0] * grid[1] * grid[2]
        if cfg.encoder == "adaptive" and not 1 <= int(n * (1 - cfg.ratio)) < n:
            raise ConfigError(f"mask.ratio={cfg.ratio}: leaves {int(n * (1 - cfg.ratio))} of {n} tokens "
                              "for the adaptive sampler to draw; lower mask.ratio")
        self.cfg = cfg
        self.grid = tuple(grid)
        self.num_tokens = grid[0] * grid[1] * grid[2]
        self.dual = cfg.decoder == "running_cell" and cfg.decoder_ratio > 0
        if self.dual:  # validate the grid once, at construction
            running_cell_keep(self.grid, cfg.decoder_ratio, torch.Generator().manual_seed(0))

    def encoder_keep(self, g: torch.Generator) -> torch.Tensor:
        fn = _ENCODER_MASKS[self.cfg.encoder]
        if self.cfg.encoder == "block":
            return fn(self.grid, self.cfg.ratio, g, self.cfg.block_min_tokens)
        return fn(self.grid, self.cfg.ratio, g)

    def __call__(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder_keep(g)
        if self.dual:
            dec = running_cell_keep(self.grid, self.cfg.decoder_ratio, g)
        elif self.cfg.encoder == "adaptive":  # the model reconstructs what its sampler left out
            dec = torch.full((self.num_tokens - enc.numel(),), -1, dtype=torch.long)
        else:
            dec = complement(enc, self.num_tokens)
        return enc, dec

    def batch(self, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (B, K), (B, M) index tensors."""
        pairs = [self(g) for _ in range(batch_size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
