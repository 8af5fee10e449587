"""Model family: exact parameter counts and key layouts, parity with the official code."""
import dataclasses
import json

import pytest
import torch

from giant.config import ModelConfig
from giant.errors import ConfigError
from giant.models import MaskedVideoAutoencoder, VideoClassifier, build_model
from giant.models.mae import patchify, unpatchify
from giant.models.pos_embed import position_table, sincos_table
from _reference import reference_file
from giant.models import resolve as resolve_model

OFFICIAL = [
    ("vit_g", "classifier", 710, "vit_giant_patch14_224_k710", 1_012_611_142),
    ("vit_b", "classifier", 710, "vit_base_patch16_224_k710", 86_773_190),
    ("vit_g", "pretrain", 0, "pretrain_videomae_giant_patch14_224", 1_026_306_560),
    ("vit_b", "pretrain", 0, "pretrain_videomae_base_patch16_224", 94_210_944),
]

PARITY_CFG = ModelConfig(name="tiny", num_frames=8, img_size=64, patch_size=16, embed_dim=96,
                         depth=2, num_heads=4, mlp_ratio=4.0, decoder_embed_dim=64,
                         decoder_depth=1, decoder_num_heads=2, decoder_mlp_ratio=4.0)


@pytest.mark.parametrize("name,kind,classes,ref_key,expected", OFFICIAL)
def test_official_param_counts_and_keys(name, kind, classes, ref_key, expected):
    with torch.device("meta"):
        model = build_model(ModelConfig(name=name, num_classes=classes), kind)
    assert sum(p.numel() for p in model.parameters()) == expected
    keys = json.loads(reference_file("videomaev2/videomaev2_state_dict_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == keys[ref_key]["keys"]


# docs/reference.md §1 and §2 tables: patch, dim, depth, heads, head dim, MLP hidden, tokens @16×224; decoder
# dim, heads, depth, MLP hidden, values per token
SPEC_SIZES = [
    ("vit_s", (16, 384, 12, 6, 64, 1536, 1568), (192, 3, 4, 768, 1536)),
    ("vit_b", (16, 768, 12, 12, 64, 3072, 1568), (384, 6, 4, 1536, 1536)),
    ("vit_l", (16, 1024, 24, 16, 64, 4096, 1568), (512, 8, 4, 2048, 1536)),
    ("vit_h", (16, 1280, 32, 16, 80, 5120, 1568), (512, 8, 4, 2048, 1536)),
    ("vit_g", (14, 1408, 40, 16, 88, 6144, 2048), (512, 8, 4, 2234, 1176)),
]


@pytest.mark.parametrize("name,encoder,decoder", SPEC_SIZES)
def test_built_shapes_match_the_published_tables(name, encoder, decoder):
    """Read off the built modules, not the size table, so a wrong rounding of mlp_ratio shows."""
    with torch.device("meta"):
        model = build_model(ModelConfig(name=name), "pretrain")
    enc, dec = model.encoder, model.decoder
    blk, dblk = enc.blocks[0], dec.blocks[0]
    dim = blk.attn.proj.out_features
    assert (enc.patch_embed.proj.weight.shape[-1], dim, len(enc.blocks), blk.attn.num_heads,
            dim // blk.attn.num_heads, blk.mlp.fc1.out_features, enc.num_tokens) == encoder
    assert (model.encoder_to_decoder.out_features, dblk.attn.num_heads, len(dec.blocks),
            dblk.mlp.fc1.out_features, dec.head.out_features) == decoder


@pytest.fixture(scope="module")
def parity():
    return torch.load(reference_file("videomaev2/videomaev2_parity_small.pt"), weights_only=False)


def _keeps(masked_BN):
    return torch.stack([torch.nonzero(~m).flatten() for m in masked_BN])


def test_pretrain_parity_with_official(parity):
    model = MaskedVideoAutoencoder(PARITY_CFG).eval()
    model.load_state_dict(parity["pretrain_state_dict"])
    with torch.no_grad():
        out = model(parity["video"], _keeps(parity["encoder_mask"]), _keeps(parity["decoder_mask"]))
    assert out.pred.shape == parity["pretrain_output"].shape == (2, 32, 1536)
    # docs/interop.md's bounds; measured 5.4e-7 (predictions up to 1.37) and 1.2e-7 on an AMD EPYC,
    # the margin is for other CPUs' fp32 summation orders
    assert (out.pred - parity["pretrain_output"]).abs().max() < 2e-6
    assert abs(out.loss.item() - parity["pretrain_loss"].item()) < 1e-6
    assert out.loss.dtype == torch.float32


def test_finetune_parity_with_official(parity):
    model = VideoClassifier(dataclasses.replace(PARITY_CFG, num_classes=7)).eval()
    model.load_state_dict(parity["finetune_state_dict"])
    with torch.no_grad():
        logits = model(parity["video"])
    assert (logits - parity["finetune_logits"]).abs().max() < 1e-6  # measured 4.5e-8


def test_sincos_table_formula():
    table = sincos_table(50, 8)
    pos, i = 7, 3  # column 2i = sin, 2i+1 = cos, both with frequency 10000^(2i/d)
    freq = 10000 ** (2 * i / 8)
    assert torch.isclose(table[pos, 2 * i], torch.tensor(torch.sin(torch.tensor(pos / freq)).item()))
    assert torch.isclose(table[pos, 2 * i + 1], torch.tensor(torch.cos(torch.tensor(pos / freq)).item()))


def test_position_table_not_in_state_dict_and_resamples():
    model = VideoClassifier(dataclasses.replace(PARITY_CFG, num_classes=3))
    assert not any("pos_embed" in k for k in model.state_dict())
    same = position_table((4, 4, 4), 16, (4, 4, 4))
    assert torch.equal(same, position_table((4, 4, 4), 16))
    # 8 slices resampled from a 4-slice table: the spatial pattern is preserved exactly
    up = position_table((8, 4, 4), 16, (4, 4, 4))
    assert up.shape == (1, 128, 16)
    src = position_table((4, 4, 4), 16).reshape(4, 16, 16)
    dst = up.reshape(8, 16, 16)
    assert torch.allclose(dst[0], src[0], atol=1e-6) and torch.allclose(dst[-1], src[-1], atol=1e-6)


def test_other_frame_counts_and_sizes_run():
    """Any config the official code accepts: patch 14, head dim 88-style widths, 4/12 frames."""
    for kw in [dict(num_frames=4, img_size=56, patch_size=14, embed_dim=88, num_heads=1),
               dict(num_frames=12, img_size=32, patch_size=16, mlp_ratio=48 / 11)]:
        cfg = dataclasses.replace(ModelConfig(name="tiny", num_classes=5), **kw)
        model = VideoClassifier(cfg)
        x = torch.randn(2, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
        assert model(x).shape == (2, 5)
    cfg = dataclasses.replace(ModelConfig(name="tiny", num_classes=5), num_frames=16, img_size=64,
                              pos_grid=[4, 4, 4])
    assert VideoClassifier(cfg)(torch.randn(1, 3, 16, 64, 64)).shape == (1, 5)


def test_patchify_roundtrip_and_channel_order():
    x = torch.randn(2, 3, 4, 32, 32)
    tok = patchify(x, 16, 2)
    assert tok.shape == (2, 2 * 2 * 2, 2 * 16 * 16, 3)
    # token 0, first pixel holds the three channels of pixel (0,0,0)
    assert torch.equal(tok[0, 0, 0], x[0, :, 0, 0, 0])
    assert torch.equal(unpatchify(tok.flatten(2), (2, 2, 2), 16, 2), x)


def test_loss_is_on_encoder_masked_and_decoder_kept_only():
    cfg = dataclasses.replace(PARITY_CFG)
    model = MaskedVideoAutoencoder(cfg)
    x = torch.randn(1, 3, 8, 64, 64)
    enc = torch.tensor([[0, 1, 2, 3]])
    dec = torch.tensor([[0, 1, 10, 20]])  # two already visible, two masked
    out = model(x, enc, dec)
    assert out.loss_mask.tolist() == [[False, False, True, True]]
    per_tok = (out.pred - out.target).pow(2).mean(-1)
    assert torch.isclose(out.loss, per_tok[0, 2:].mean())


def test_target_normalisation_is_per_token_per_channel():
    model = MaskedVideoAutoencoder(PARITY_CFG)
    x = torch.randn(1, 3, 8, 64, 64)
    tgt = model.target(x).reshape(1, 64, 2 * 16 * 16, 3)
    assert torch.allclose(tgt.mean(dim=2), torch.zeros(1, 64, 3), atol=1e-5)
    assert torch.allclose(tgt.std(dim=2), torch.ones(1, 64, 3), atol=1e-3)


def test_gradient_reaches_every_parameter():
    from giant.config import MaskConfig
    from giant.masking import MaskGenerator
    model = MaskedVideoAutoencoder(PARITY_CFG)
    gen = MaskGenerator(MaskConfig(ratio=0.75), model.encoder.grid)
    enc, dec = gen.batch(2, torch.Generator().manual_seed(0))
    model(torch.randn(2, 3, 8, 64, 64), enc, dec).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_wrong_input_size_and_unknown_size_raise():
    model = MaskedVideoAutoencoder(PARITY_CFG)
    with pytest.raises(ConfigError, match="tokens"):
        model.encoder(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ConfigError, match="vit_q"):
        resolve_model(ModelConfig(name="vit_q"))


def test_mask_token_init_is_truncated_at_one_std():
    # official modeling_pretrain: trunc_normal_(mask_token, std=.02) with a=-std, b=std
    model = MaskedVideoAutoencoder(PARITY_CFG)
    torch.manual_seed(0)
    draws = []
    for _ in range(16):  # 16 × 64 values; an untruncated N(0, 0.02²) leaves ±0.02 in 32% of them
        model.init_module(model)
        draws.append(model.mask_token.detach().flatten().clone())
    values = torch.cat(draws)
    assert values.abs().max() <= 0.02
    # N(0, 1) truncated to ±1 has std 0.5396: spread as the official init, not squeezed to 0
    assert 0.02 * 0.50 < values.std().item() < 0.02 * 0.58


def test_target_undoes_exactly_the_data_normalisation():
    from giant.config import load_config
    from giant.data import normalize_on_device
    from giant.engine.deepspeed import construct_model

    video = torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
    base = ["model.img_size=32", "model.patch_size=16", "model.num_frames=4"]
    for stats in ([], ["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.5,0.125]"]):
        cfg = load_config(None, base + stats)
        model = construct_model(cfg, resolve_model(cfg.model), "pretrain")  # as the stages build it
        assert model.mean.flatten().tolist() == pytest.approx(cfg.data.mean)
        assert model.std.flatten().tolist() == pytest.approx(cfg.data.std)
        x = normalize_on_device(video, cfg.data.mean, cfg.data.std)
        # the official target starts from the un-normalised clip in [0, 1]
        assert torch.allclose(model.pixels(x), video.float() / 255, atol=1e-6)
    defaults = load_config(None).data  # docs/reference.md §2: the ImageNet statistics
    assert (defaults.mean, defaults.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with pytest.raises(ConfigError, match=r"data.mean=\[0.5, 0.5\]: need 3 numbers"):
        load_config(None, ["data.mean=[0.5,0.5]"])
    with pytest.raises(ConfigError, match="data.std=.*must be > 0"):
        load_config(None, ["data.std=[0.2,0,0.2]"])
    with pytest.raises(ConfigError, match="need model.in_chans=3 values"):
        build_model(PARITY_CFG, "pretrain", mean=(0.5,), std=(0.5,))
