"""Masking strategies: exact counts and structure (docs/reference.md §3)."""
import pytest
import torch

from giant.config import MaskConfig, load_config
from giant.errors import ConfigError
from giant.masking import (MaskGenerator, block_keep, frame_keep, keep_to_mask, random_keep,
                           running_cell_count, running_cell_keep, running_cell_masked, tube_keep)
from _reference import reference_file

G_GRID, B_GRID = (8, 16, 16), (8, 14, 14)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_tube_counts_vit_g_and_vit_b():
    keep = tube_keep(G_GRID, 0.9, gen())
    assert keep.numel() == 208
    per_slice = keep_to_mask(keep, 2048).view(8, 256)
    assert ((~per_slice).sum(1) == 26).all()
    assert (per_slice == per_slice[0]).all()  # same spatial positions in every slice
    assert tube_keep(B_GRID, 0.9, gen()).numel() == 160
    assert torch.equal(keep, torch.sort(keep).values)


def test_random_frame_block_fixed_counts():
    for seed in range(5):
        assert random_keep(B_GRID, 0.9, gen(seed)).numel() == int(1568 * 0.1)
        fk = frame_keep(B_GRID, 0.5, gen(seed))
        assert fk.numel() == 4 * 196
        masked = keep_to_mask(fk, 1568).view(8, 196)
        # whole slices only: 4 slices fully masked, the other 4 fully visible
        assert int(masked.all(1).sum()) == 4 and int((~masked).all(1).sum()) == 4
        bk = block_keep(B_GRID, 0.9, gen(seed))
        assert bk.numel() == 1568 - int(0.9 * 1568)
        assert len(set(bk.tolist())) == bk.numel()


def test_block_mask_is_contiguous_in_time():
    masked = keep_to_mask(block_keep((8, 14, 14), 0.5, gen(3)), 1568).view(8, 14, 14)
    # cube masking: a masked token usually has a masked temporal neighbour
    neigh = masked[1:] & masked[:-1]
    assert neigh.sum() > 0.5 * masked[1:].sum()


def test_running_cell_properties():
    for seed in range(8):
        keep = running_cell_keep(G_GRID, 0.5, gen(seed))
        assert keep.numel() == 1024
        kept = ~keep_to_mask(keep, 2048).view(8, 16, 16)
        assert (kept.flatten(1).sum(1) == 128).all()  # exactly 50% of every slice
        for t0 in range(8 - 3):
            assert (kept[t0:t0 + 4].sum(0) == 2).all()  # 2 of every 4 consecutive slices


def test_running_cell_matches_official_masks():
    ref = torch.load(reference_file("videomaev2/videomaev2_parity_small.pt"), weights_only=False)
    for row in ref["decoder_mask"]:
        assert any(torch.equal(running_cell_masked((4, 4, 4), 0.5, s), row) for s in range(4))


def official_running_cell(grid, ratio: float, start: int) -> torch.Tensor:
    """The official RunningCellMaskingGenerator's map for pointer `start`, from its definition:
    a queue of int(4·ratio) ones then zeros, read from (start + t + 1) mod 4 for slice t,
    laid out as a 2×2 cell and tiled over the slice (1 = not reconstructed)."""
    t, h, w = grid
    n = int(4 * ratio)
    queue = torch.tensor([1] * n + [0] * (4 - n), dtype=torch.bool)
    rows = [queue.roll(-(start + ti + 1)).view(2, 2).repeat(h // 2, w // 2).flatten()
            for ti in range(t)]
    return torch.cat(rows)


@pytest.mark.parametrize("ratio, dropped", [(0.25, 1), (0.5, 2), (0.7, 2), (0.75, 3), (0.9, 3)])
def test_running_cell_uses_the_official_truncated_count(ratio, dropped):
    # round(4·0.9) = 4 would keep no decoder token (loss 0, no learning); int() keeps one per cell
    assert running_cell_count(ratio) == dropped
    grid = (4, 4, 6)
    for start in range(4):
        assert torch.equal(running_cell_masked(grid, ratio, start), official_running_cell(grid, ratio, start))
    mg = MaskGenerator(MaskConfig(decoder="running_cell", decoder_ratio=ratio), G_GRID)
    assert mg(gen())[1].numel() == 2048 * (4 - dropped) // 4


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.2499])
def test_running_cell_ratio_leaving_no_dropped_cell_is_refused(ratio):
    # int(4·ratio) = 0: the official generator asserts 0 < n < 4; here a clear config error
    with pytest.raises(ConfigError, match=f"mask.decoder_ratio={ratio}: .* must be 1..3"):
        load_config(None, [f"mask.decoder_ratio={ratio}"])
    with pytest.raises(ConfigError, match=f"mask.decoder_ratio={ratio}: .* must be 1..3"):
        MaskGenerator(MaskConfig(decoder_ratio=ratio), G_GRID)
    load_config(None, [f"mask.decoder_ratio={ratio}", "mask.decoder=none"])  # unused under V1
    load_config(None, ["mask.decoder_ratio=0"])  # ratio 0 = V1, still legal


def test_dual_masking_decoder_tokens_vit_g():
    mg = MaskGenerator(MaskConfig(encoder="tube", ratio=0.9, decoder="running_cell",
                                  decoder_ratio=0.5), G_GRID)
    enc, dec = mg.batch(3, gen())
    assert enc.shape == (3, 208) and dec.shape == (3, 1024)
    assert enc.shape[1] + dec.shape[1] == 1232


def test_decoder_ratio_zero_is_videomae_v1():
    mg = MaskGenerator(MaskConfig(decoder_ratio=0.0), B_GRID)
    enc, dec = mg(gen())
    assert enc.numel() + dec.numel() == 1568
    assert not set(enc.tolist()) & set(dec.tolist())
    mg2 = MaskGenerator(MaskConfig(decoder="none"), B_GRID)
    assert mg2(gen())[1].numel() == 1568 - 160


def test_seeded_and_independent_per_draw():
    mg = MaskGenerator(MaskConfig(), B_GRID)
    a, b = mg(gen(7)), mg(gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g = gen(7)
    assert not torch.equal(mg(g)[0], mg(g)[0])


def test_odd_grid_running_cell_error():
    with pytest.raises(ConfigError, match="even token grid"):
        MaskGenerator(MaskConfig(), (8, 7, 7))
    MaskGenerator(MaskConfig(decoder="none"), (8, 7, 7))  # V1 works on odd grids


def test_unknown_strategy_error():
    with pytest.raises(ConfigError, match="mask.encoder"):
        MaskGenerator(MaskConfig(encoder="checker"), B_GRID)
