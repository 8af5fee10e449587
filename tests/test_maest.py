"""MAE-ST as model.arch=maest: parity with facebookresearch/mae_st (reference/maest), the official
key layout and parameter counts, the checkpoint converter, its augmentation, flops, and a
2-rank demo run."""
import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from _launch import tail, torchrun
from _reference import reference_file
from giant import flops
from giant.config import MaskConfig, ModelConfig, load_config
from giant.errors import ConfigError
from giant.interop import maest as interop
from giant.masking import MaskGenerator, complement
from giant.models import MAESTAutoencoder, MAESTClassifier, build_model
from giant.models.maest import target_frame_indices


def _cfg(official: dict, **extra) -> ModelConfig:
    """giant config from the official constructor kwargs of the reference file."""
    return ModelConfig(name="tiny", arch="maest", img_size=official["img_size"], patch_size=official["patch_size"],
                       num_frames=official["num_frames"], tubelet_size=official["t_patch_size"],
                       embed_dim=official["embed_dim"], depth=official["depth"], num_heads=official["num_heads"],
                       mlp_ratio=official["mlp_ratio"], decoder_embed_dim=official.get("decoder_embed_dim", 32),
                       decoder_depth=official.get("decoder_depth", 1),
                       decoder_num_heads=official.get("decoder_num_heads", 4),
                       decoder_mlp_ratio=official["mlp_ratio"], pred_t_dim=official.get("pred_t_dim"), **extra)


@pytest.fixture(scope="module")
def ref():
    return torch.load(reference_file("maest/maest_parity_small.pt"), weights_only=False)


@pytest.fixture(scope="module")
def keys():
    return json.loads(reference_file("maest/maest_state_dict_keys.json").read_text())


def _pretrain_parity(case: dict, dtype=torch.float32):
    model = build_model(_cfg(case["config"])).eval().to(dtype)
    model.load_state_dict(interop.official_to_giant(case["pretrain_state_dict"]), strict=True)
    keep = case["ids_keep"]  # injected in the official (shuffled) order
    dec = torch.stack([complement(k, case["mask"].shape[1]) for k in keep])  # every removed token
    video = case["video"].to(dtype)
    with torch.no_grad():
        latent = model.encoder(video, keep)
        out = model(video, keep, dec)
    return model, dec, latent, out


def _rows(t, idx):
    return torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))


@pytest.mark.parametrize("case", ["main", "extra_u2"])
def test_pretrain_parity(ref, case):
    data = ref if case == "main" else ref["extra_u2"]
    model, dec, latent, out = _pretrain_parity(data)
    assert torch.equal(target_frame_indices(8, data["config"]["pred_t_dim"]), data["target_frame_indices"])
    assert (latent - data["latent"]).abs().max() < 1e-5  # rows in ids_keep order
    assert torch.equal(out.loss_mask, _rows(data["mask"][..., None], dec)[..., 0].bool())
    assert (model.target(data["video"]) - data["target"]).abs().max() < 1e-5
    assert (out.pred - _rows(data["pred"], dec)).abs().max() < 1e-5  # the removed tokens
    assert out.loss.item() == pytest.approx(data["loss"].item(), rel=1e-5)


def test_pretrain_parity_float64(ref):
    _, dec, latent, out = _pretrain_parity(ref, torch.float64)
    assert (latent - ref["fp64"]["latent"]).abs().max() < 1e-12
    assert (out.pred - _rows(ref["fp64"]["pred"], dec)).abs().max() < 1e-12
    # the target and loss are FP32 by the precision policy, whatever the model dtype
    assert out.loss.item() == pytest.approx(ref["fp64"]["loss"].item(), rel=1e-6)


def test_finetune_parity_and_pretrain_to_finetune(ref):
    fc = ref["finetune_config"]
    cfg = _cfg(fc, num_classes=fc["num_classes"], drop_path_rate=fc["drop_path_rate"], head_drop_rate=fc["dropout"])
    model = build_model(cfg, "classifier").eval()
    assert isinstance(model, MAESTClassifier)
    model.load_state_dict(ref["finetune_state_dict"], strict=True)  # official fine-tuning keys as they are
    with torch.no_grad():
        assert (model(ref["video"]) - ref["finetune_logits"]).abs().max() < 1e-5
    # a giant MAE-ST pre-training export fine-tunes like the official one: `encoder.` off,
    # only the head missing, the decoder unused
    giant_pre = interop.official_to_giant(ref["pretrain_state_dict"])
    enc = {k[len("encoder."):]: v for k, v in giant_pre.items() if k.startswith("encoder.")}
    missing, unexpected = model.load_state_dict(enc, strict=False)
    assert sorted(missing) == sorted(ref["pretrain_to_finetune_load"]["missing_keys"]) and not unexpected
    assert len(giant_pre) - len(enc) == len(ref["pretrain_to_finetune_load"]["unexpected_keys"])


@pytest.mark.parametrize("official,kind,classes", [("mae_vit_large_patch16", "pretrain", 0),
                                                   ("vit_large_patch16", "classifier", 400)])
def test_official_vit_l_keys_shapes_counts_and_converter(keys, official, kind, classes):
    ref = keys[official]
    with torch.device("meta"):
        model = build_model(ModelConfig(name="vit_l", arch="maest", decoder_num_heads=16, num_classes=classes), kind)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    converted = interop.official_to_giant(ref["keys"], kind)
    assert converted == ours  # every official name maps onto a giant parameter of its shape
    assert interop.giant_to_official(ours, kind) == ref["keys"]  # and back, order kept
    stage = "finetune" if kind == "classifier" else "pretrain"
    mask = MaskConfig(encoder="random", ratio=0.9, decoder="none")
    counted = flops.count(ModelConfig(name="vit_l", arch="maest", num_classes=classes), stage, mask)
    assert counted["params"] == ref["num_params"]


def test_convert_an_official_checkpoint_file(ref, tmp_path):
    from giant.interop import load_weights

    wrapped = {"model_state": {f"module.{k}": v for k, v in ref["pretrain_state_dict"].items()},
               "args": argparse.Namespace(model="mae_vit_tiny"), "epoch": 3}
    torch.save(wrapped, tmp_path / "k400.pyth")
    interop.convert(tmp_path / "k400.pyth", tmp_path / "out", dataclasses.asdict(_cfg(ref["config"])))
    state, info = load_weights(tmp_path / "out")
    assert info["kind"] == "pretrain" and info["model"]["arch"] == "maest"
    MAESTAutoencoder(ModelConfig(**info["model"])).load_state_dict(state, strict=True)
    (tmp_path / "junk.pyth").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="junk.pyth: is not a PyTorch checkpoint"):
        interop.read_official(tmp_path / "junk.pyth")


def test_target_frames_and_config_errors():
    assert target_frame_indices(16, 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 15]  # truncated linspace
    cfg = load_config("launch/recipes/pretrain_vitl_maest_k400.yaml")
    assert (cfg.model.arch, cfg.mask.encoder, cfg.data.pretrain_crop) == ("maest", "random", "rrc")
    with pytest.raises(ConfigError, match="model.pred_t_dim=6"):
        load_config(None, ["model.arch=maest", "model.pred_t_dim=6"])
    with pytest.raises(ConfigError, match="model.arch='vit'"):
        load_config(None, ["model.arch=vit"])
    with pytest.raises(ConfigError, match="data.pretrain_crop='center'"):
        load_config(None, ["data.pretrain_crop=center"])
    with pytest.raises(ConfigError, match="data.pretrain_crop_scale"):
        load_config(None, ["data.pretrain_crop_scale=[0.5, 1.5]"])


def test_flops_match_measured_on_the_tiny_model():
    from test_flops import _measured_flops

    cfg = ModelConfig(name="tiny", arch="maest", num_frames=4, img_size=64, num_classes=7)
    mask = MaskConfig(encoder="random", ratio=0.75, decoder="none")
    enc, dec = MaskGenerator(mask, (2, 4, 4)).batch(2, torch.Generator().manual_seed(0))
    video = torch.randn(2, 3, 4, 64, 64)
    pre, cls = build_model(cfg).eval(), build_model(cfg, "classifier").eval()
    assert _measured_flops(lambda: pre(video, enc, dec)) == 2 * 2 * flops.count(cfg, "pretrain", mask)["macs"]
    assert _measured_flops(lambda: cls(video)) == 2 * 2 * flops.count(cfg, "finetune")["macs"]


def test_rrc_flip_augmentation(synth_videos):
    """data.pretrain_crop=rrc + flip: the same boxes as without flip, about half the clips mirrored."""
    from giant.data import PretrainClips
    from giant.data.manifest import load_entries

    entries = load_entries(synth_videos.train_manifest, str(synth_videos.root), "pretrain", 0)
    kw = dict(num_frames=4, size=32, sampling_rate=2, num_sample=16, backend="pyav", crop="rrc")
    video = PretrainClips(entries, **kw).decode(entries[0], np.random.default_rng(0))
    plain = PretrainClips(entries, **kw).crops(video, np.random.default_rng(1))
    flipped = PretrainClips(entries, flip=True, **kw).crops(video, np.random.default_rng(1))
    assert plain.shape == (16, 3, 4, 32, 32)
    mirrored = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped, plain)]
    same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or s for m, s in zip(mirrored, same)) and 3 <= sum(mirrored) <= 13


# ---- one 2-rank DeepSpeed run of the demo recipe ----------------------------------------------

STEPS = 10


@pytest.fixture(scope="module")
def demo_run(synth_videos, tmp_path_factory):
    run = tmp_path_factory.mktemp("maest") / "run"
    proc = torchrun("launch/pretrain.py", "--ds", "ds_configs/zero2.json", "--recipe",
                    "launch/recipes/demo_pretrain_maest.yaml", f"data.manifest={synth_videos.train_manifest}",
                    f"stage.run_dir={run}", "data.num_sample=2", "data.num_workers=1", "optim.batch_size=2",
                    f"optim.total_steps={STEPS}", "optim.warmup_steps=2", "checkpoint.every_steps=0",
                    "logging.log_every=1", "logging.image_every=5", "logging.progress=false")
    assert proc.returncode == 0, tail(proc)
    return run


def test_demo_trains_on_two_ranks_with_falling_loss_and_images(demo_run):
    from PIL import Image

    from giant.interop import load_weights

    losses = [json.loads(line)["loss"] for line in (demo_run / "metrics.jsonl").open()]
    assert len(losses) == STEPS
    # mean of the last 3 over the first 3, measured with stage.seed 0-5: 0.687 to 0.737; the
    # bound clears the worst seed by over twice the seeds' spread (room for other CPUs)
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    images = sorted(p.name for p in (demo_run / "images").glob("*.png"))
    assert images == ["reconstruction_step0000005.png", "reconstruction_step0000010.png"]
    assert Image.open(demo_run / "images" / images[-1]).size == (4 * 128, 3 * 128)  # 4 target frames
    state, info = load_weights(demo_run)
    assert info["model"]["arch"] == "maest"
    build_model(ModelConfig(**info["model"])).load_state_dict(state, strict=True)
