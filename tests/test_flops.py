"""Analytic counts vs the papers (docs/reference.md §6), the official parameter counts (docs/reference.md §1) and a
measured count on real tiny modules, so the formula and the models cannot drift apart."""
import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from giant import flops
from giant.commands import flops as flops_command
from giant.config import MaskConfig, ModelConfig
from giant.models import resolve as resolve_model


def _mask(decoder_ratio):
    return MaskConfig(encoder="tube", ratio=0.9, decoder="running_cell", decoder_ratio=decoder_ratio)


@pytest.mark.parametrize(
    "name,stage,decoder_ratio,paper",
    [
        ("vit_b", "pretrain", 0.0, 35.48e9),
        ("vit_b", "pretrain", 0.5, 25.87e9),
        ("vit_g", "pretrain", 0.0, 263.93e9),
        ("vit_g", "pretrain", 0.5, 241.61e9),
        ("vit_g", "finetune", None, 38.16e12 / 15),
    ],
)
def test_macs_match_papers(name, stage, decoder_ratio, paper):
    mask = None if decoder_ratio is None else _mask(decoder_ratio)
    r = flops.count(ModelConfig(name=name, num_classes=710), stage, mask)
    assert abs(r["macs"] / paper - 1) < 0.01
    assert r["train_flops"] == 6 * r["macs"] == flops.train_flops_per_clip(ModelConfig(name=name, num_classes=710), mask, stage)
    assert sum(r["parts_macs"].values()) == r["macs"]


def test_vit_g_dual_masking_breakdown():
    r = flops.count(ModelConfig(name="vit_g"), "pretrain", _mask(0.5))
    assert (r["encoder_tokens"], r["decoder_tokens"]) == (208, 1232)
    assert abs(r["encoder_macs"] / 214.8e9 - 1) < 0.001
    assert abs(r["decoder_macs"] / 22.7e9 - 1) < 0.005


@pytest.mark.parametrize(
    "name,stage,expected",
    [
        ("vit_g", "finetune", 1_012_611_142),
        ("vit_b", "finetune", 86_773_190),
        ("vit_g", "pretrain", 1_026_306_560),
        ("vit_b", "pretrain", 94_210_944),
    ],
)
def test_params_match_official(name, stage, expected):
    assert flops.count(ModelConfig(name=name, num_classes=710), stage)["params"] == expected


def test_cli_json(capsys):
    assert flops_command.main(["vit_g", "--json", "--decoder-mask-ratio", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 1_026_306_560 and abs(out["macs"] / 241.61e9 - 1) < 0.01
    assert flops_command.main(["vit_g", "--stage", "finetune", "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["macs"] / 2.544e12 - 1) < 0.01


def test_cli_human_and_errors(capsys):
    assert flops_command.main(["vit_b", "--decoder-mask-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert "94,210,944" in out and "35.44 G" in out
    assert flops_command.main(["vit_zz"]) == 2
    assert "vit_zz" in capsys.readouterr().err


def test_module_entry_point():
    p = subprocess.run([sys.executable, "-m", "giant.cli", "flops", "vit_b", "--json"], capture_output=True, text=True, check=True)
    assert {"params", "macs", "train_flops"} <= set(json.loads(p.stdout))


# ---- measured cross-checks on real modules ----------------------------------------------

TINY = ModelConfig(name="tiny", num_frames=4, img_size=64, num_classes=7)  # grid 2×4×4 = 32 tokens


def _measured_flops(fn) -> int:
    """Forward FLOPs counted by torch; CPU SDPA kernels need a formula registered by hand."""
    aten = torch.ops.aten

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    extra = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn()
    return counter.get_total_flops()


def _masks(cfg, mask_cfg, batch):
    """Stacked (enc_keep, dec_keep) from the project's generator, as the loader draws them."""
    from giant.masking import MaskGenerator

    return MaskGenerator(mask_cfg, flops.token_grid(cfg)).batch(batch, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("encoder", ["tube", "random", "frame", "block"])
@pytest.mark.parametrize("ratio,decoder_ratio", [(0.9, 0.5), (0.75, 0.0), (0.95, 0.25), (0.9, 0.9)])
def test_token_counts_match_mask_generator(encoder, ratio, decoder_ratio):
    from giant.masking import MaskGenerator

    cfg = resolve_model(ModelConfig(name="vit_b"))
    mask = MaskConfig(encoder=encoder, ratio=ratio, decoder="running_cell", decoder_ratio=decoder_ratio)
    enc, dec = MaskGenerator(mask, flops.token_grid(cfg))(torch.Generator().manual_seed(0))
    r = flops.count(cfg, "pretrain", mask)
    assert (r["encoder_tokens"], r["decoder_tokens"]) == (len(enc), len(enc) + len(dec))


@pytest.mark.parametrize("decoder_ratio", [0.0, 0.5])
def test_pretrain_macs_match_measured(decoder_ratio):
    from giant.models import mae

    cfg = resolve_model(TINY)
    mask = _mask(decoder_ratio)
    if decoder_ratio == 0:
        mask.decoder = "none"
    enc_keep, dec_keep = _masks(cfg, mask, batch=2)
    r = flops.count(cfg, "pretrain", mask)
    assert enc_keep.shape[1] == r["encoder_tokens"]
    assert enc_keep.shape[1] + dec_keep.shape[1] == r["decoder_tokens"]
    model = mae.MaskedVideoAutoencoder(cfg).eval()
    video = torch.randn(2, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    assert _measured_flops(lambda: model(video, enc_keep, dec_keep)) == 2 * 2 * r["macs"]


def test_finetune_macs_match_measured():
    from giant.models import classifier

    cfg = resolve_model(TINY)
    model = classifier.VideoClassifier(cfg).eval()
    video = torch.randn(2, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    assert _measured_flops(lambda: model(video)) == 2 * 2 * flops.count(cfg, "finetune")["macs"]


@pytest.mark.parametrize("name", ["tiny", "vit_b", "vit_g"])
def test_params_match_real_modules(name):
    from giant.models import classifier, mae

    cfg = resolve_model(ModelConfig(name=name, num_classes=710))
    with torch.device("meta"):
        built = {"pretrain": mae.MaskedVideoAutoencoder(cfg), "finetune": classifier.VideoClassifier(cfg)}
    for stage, model in built.items():
        assert sum(p.numel() for p in model.parameters()) == flops.count(cfg, stage)["params"], stage
