"""AdaMAE adaptive token sampling: parity with the official code (reference/adamae), the draw,
the sampling loss and its gradients, config/masking/flops wiring, and a 2-rank demo run."""
import json

import pytest
import torch
import yaml

from _launch import tail, torchrun
from _reference import reference_file
from giant import flops
from giant.config import MaskConfig, ModelConfig, load_config
from giant.errors import ConfigError
from giant.masking import MaskGenerator
from giant.models import AdaptiveMaskedAutoencoder, VideoClassifier, build_model
from giant.models.sampler import complement_keep, draw_visible, sampling_loss

# the official tiny config (reference/adamae/README.md §2): 16 × 32 × 32, patch 8 → 8×4×4 = 128 tokens
PARITY_CFG = ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=16, embed_dim=64, depth=2,
                         num_heads=4, mlp_ratio=4.0, decoder_embed_dim=32, decoder_depth=1,
                         decoder_num_heads=2, decoder_mlp_ratio=4.0, sampler="adaptive")


@pytest.fixture(scope="module")
def ref():
    return torch.load(reference_file("adamae/adamae_parity_small.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official(ref):
    """The official weights in giant's model (strict: the official names), official draw injected."""
    model = build_model(PARITY_CFG).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    return model, model(ref["video"], ref["visible_idx"], None)


def test_official_state_dict_loads_and_tables_match(official, ref):
    model, _ = official
    assert isinstance(model, AdaptiveMaskedAutoencoder)
    assert torch.equal(model.encoder.pos_embed, ref["enc_pos_embed"])
    assert torch.equal(model.decoder_pos_embed, ref["dec_pos_embed"])


def test_parity_probs_prediction_and_losses(official, ref):
    _, out = official
    assert (out.token_probs - ref["token_probs"]).abs().max() < 1e-6
    assert torch.equal(out.enc_keep, ref["visible_idx"])  # injected rows are used as given
    assert torch.equal(out.dec_keep, ref["masked_idx"])  # V1 decoder: every masked token
    tgt = torch.gather(ref["target"], 1, ref["masked_idx"][..., None].expand(-1, -1, 384))
    assert (out.target - tgt).abs().max() < 1e-5
    assert out.pred.shape == ref["pred"].shape == (2, 96, 384)
    assert (out.pred - ref["pred"]).abs().max() < 1e-5
    for ours, theirs in ((out.recon_loss, "recon_loss"), (out.sampling_loss, "sampling_loss"),
                         (out.loss, "total_loss")):
        assert ours.item() == pytest.approx(ref[theirs].item(), rel=1e-5), theirs
    assert (1e-4 * out.sampling_loss).item() == pytest.approx(ref["sampling_loss_weighted"].item(), rel=1e-5)


def test_parity_gradients(official, ref):
    model, out = official
    model.zero_grad()
    out.loss.backward(retain_graph=True)
    scale = max(g.abs().max().item() for g in ref["grads_total"].values())
    for name, p in model.named_parameters():
        ours = torch.zeros_like(p) if p.grad is None else p.grad
        assert (ours - ref["grads_total"][name]).abs().max() < 1e-5 * scale, name


def test_official_draw_reproduced_on_this_torch(ref):
    """torch CPU multinomial without replacement == exponential keys + top-K (same RNG stream)."""
    if torch.__version__ != ref["config"]["torch_version"]:
        pytest.skip(f"the reference draw was made with torch {ref['config']['torch_version']}")
    torch.manual_seed(123)
    assert torch.equal(draw_visible(ref["token_probs"], 32), ref["visible_idx_sorted"])


def test_exactly_k_distinct_visible_tokens_per_sample():
    cfg = ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=8, sampler="adaptive")
    model = build_model(cfg).eval()
    gen = MaskGenerator(MaskConfig(encoder="adaptive", ratio=0.75, decoder="none"), (4, 4, 4))
    enc, dec = gen.batch(6, torch.Generator().manual_seed(0))
    assert enc.shape == (6, 16) and dec.shape == (6, 48) and (enc < 0).all() and (dec == -1).all()
    video = torch.randn(6, 3, 8, 32, 32)
    with torch.no_grad():
        out = model(video, enc, dec)
        again = model(video, enc, dec)
    keep = out.enc_keep
    assert keep.shape == (6, 16) and keep.dtype == torch.long
    for row, rest in zip(keep, out.dec_keep):
        assert len(set(row.tolist())) == 16 and torch.equal(row, row.sort().values)
        assert sorted(row.tolist() + rest.tolist()) == list(range(64))  # decoder: the other 48
    assert torch.equal(keep, again.enc_keep)  # the placeholder's seed fixes the draw
    assert len({tuple(r.tolist()) for r in keep}) == 6  # ...and differs per clip


def test_draw_follows_the_probabilities():
    probs = torch.full((1, 64), 1e-4)
    probs[0, :8] = 1.0
    probs = probs / probs.sum()
    drawn = draw_visible(probs.expand(200, -1), 8, seeds=list(range(200)))
    assert (drawn < 8).float().mean() > 0.9  # the 8 heavy tokens dominate every draw


def test_sampler_gets_gradient_only_through_the_sampling_loss(official, ref):
    model, out = official
    sampler = {n: p for n, p in model.named_parameters() if "token_probs" in n or "pos_embed_probs" in n}
    assert len(sampler) == 14
    model.zero_grad()
    out.recon_loss.backward(retain_graph=True)
    for n, p in sampler.items():
        assert p.grad is None or not p.grad.any(), n
    model.zero_grad()
    out.sampling_loss.backward(retain_graph=True)
    for n, p in sampler.items():
        if n.endswith("get_token_probs.1.bias"):  # softmax is shift-invariant: zero up to rounding
            assert p.grad.abs().max() < 1e-7
        else:
            assert p.grad.abs().sum() > 0, n
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # input not detached
    assert model.decoder.head.weight.grad is None or not model.decoder.head.weight.grad.any()


def test_sampler_runs_in_the_encoder_precision():
    """The engine autocasts `model.encoder`; the sampler lives there, so it is low precision too,
    while its probabilities, the decoder and the three losses stay FP32."""
    from giant.engine.precision import apply_precision

    model = build_model(ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=8, sampler="adaptive"))
    apply_precision(model, "bf16", "cpu")
    seen = {}
    model.encoder.get_token_probs[1].register_forward_hook(lambda m, i, o: seen.update(logits=o.dtype))
    model.decoder.head.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    enc, dec = MaskGenerator(MaskConfig(encoder="adaptive", ratio=0.75, decoder="none"), (4, 4, 4)).batch(
        2, torch.Generator().manual_seed(0))
    out = model(torch.randn(2, 3, 8, 32, 32), enc, dec)
    assert seen == {"logits": torch.bfloat16, "head": torch.float32}
    assert out.token_probs.dtype == out.loss.dtype == out.sampling_loss.dtype == torch.float32
    out.loss.backward()
    assert model.encoder.pos_embed_probs.grad.dtype == torch.float32


def test_sampling_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 6, generator=g).softmax(-1)
    dec = torch.tensor([[0, 2, 3, 5], [1, 2, 4, 5]])
    err = torch.rand(2, 4, generator=g)
    mask = torch.tensor([[True, True, False, True], [True, True, True, True]])  # dual: 1 visible
    want = []
    for b in range(2):
        terms = [torch.log(probs[b, dec[b, j]]) * err[b, j] for j in range(4) if mask[b, j]]
        want.append(-sum(terms) / len(terms))
    got = sampling_loss(probs, err, dec, mask)
    assert torch.allclose(got, torch.stack(want), rtol=1e-6)


def test_probability_rises_where_the_error_is_high():
    """Descending the sampling loss makes a badly reconstructed masked token more likely to be
    drawn next time, and more so than well reconstructed ones (README §1.4: dl/dz = W·p − w)."""
    logits = torch.zeros(1, 8, requires_grad=True)
    keep = torch.tensor([[0, 1]])
    dec = complement_keep(keep, 8)  # tokens 2..7 masked
    err = torch.tensor([[0.1, 0.1, 0.1, 5.0, 0.1, 0.1]])  # token 5 is hard
    p0 = logits.softmax(-1).detach()
    for _ in range(5):
        loss = sampling_loss(logits.softmax(-1), err, dec, torch.ones(1, 6, dtype=torch.bool)).mean()
        logits.grad = None
        loss.backward()
        with torch.no_grad():
            logits -= 0.5 * logits.grad
    change = logits.softmax(-1).detach() - p0
    assert change[0, 5] > 0 and change[0, 5] == change.max()
    assert (change[0, :2] < 0).all()  # the visible ones lose probability


def test_config_masking_and_errors():
    cfg = load_config(None, ["mask.encoder=adaptive", "mask.ratio=0.95"])
    assert cfg.model.sampler == "adaptive"
    with pytest.raises(ConfigError, match="model.sampler=adaptive with mask.encoder=tube"):
        load_config(None, ["model.sampler=adaptive"])
    with pytest.raises(ConfigError, match="model.arch=maest"):
        load_config(None, ["mask.encoder=adaptive", "model.arch=maest"])
    with pytest.raises(ConfigError, match="mask.ratio=0.99"):
        MaskGenerator(MaskConfig(encoder="adaptive", ratio=0.99, decoder="none"), (2, 2, 2))
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_model(ModelConfig(name="tiny", embed_dim=36, num_heads=4, sampler="adaptive"))
    # dual masking: real running-cell decoder indices, placeholders only for the encoder
    enc, dec = MaskGenerator(MaskConfig(encoder="adaptive", ratio=0.75), (4, 4, 4))(torch.Generator())
    assert (enc < 0).all() and len(enc) == 16 and (dec >= 0).all() and len(dec) == 32
    assert isinstance(build_model(ModelConfig(name="tiny", sampler="adaptive", num_classes=3), "classifier"),
                      VideoClassifier)


def test_flops_count_the_sampler():
    mask = MaskConfig(encoder="adaptive", ratio=0.95, decoder="none")
    r = flops.count(ModelConfig(name="vit_b"), "pretrain", mask)
    assert (r["encoder_tokens"], r["decoder_tokens"]) == (78, 1568)
    d, n = 768, 1568
    assert r["parts_macs"]["sampler"] == n * (4 * d * d + 8 * d * d) + 2 * n * n * d + n * d
    with torch.device("meta"):
        model = build_model(ModelConfig(name="vit_b", sampler="adaptive"))
    assert sum(p.numel() for p in model.parameters()) == r["params"] == 94_210_944 + r["parts_params"]["sampler"]


def test_flops_match_measured_on_the_tiny_model():
    from test_flops import _measured_flops

    cfg = ModelConfig(name="tiny", num_frames=4, img_size=64, sampler="adaptive")
    mask = MaskConfig(encoder="adaptive", ratio=0.75, decoder="none")
    enc, dec = MaskGenerator(mask, (2, 4, 4)).batch(2, torch.Generator().manual_seed(0))
    model = build_model(cfg).eval()
    video = torch.randn(2, 3, 4, 64, 64)
    assert _measured_flops(lambda: model(video, enc, dec)) == 2 * 2 * flops.count(cfg, "pretrain", mask)["macs"]


# ---- one 2-rank DeepSpeed run of the demo recipe ----------------------------------------------

STEPS = 10


@pytest.fixture(scope="module")
def demo_run(synth_videos, tmp_path_factory):
    run = tmp_path_factory.mktemp("adamae") / "run"
    proc = torchrun("launch/pretrain.py", "--ds", "ds_configs/zero2.json", "--recipe",
                    "launch/recipes/demo_pretrain_adamae.yaml", f"data.manifest={synth_videos.train_manifest}",
                    f"stage.run_dir={run}", "data.num_sample=2", "data.num_workers=1", "optim.batch_size=2",
                    f"optim.total_steps={STEPS}", "optim.warmup_steps=2", "checkpoint.every_steps=0",
                    "logging.log_every=1", "logging.image_every=5", "logging.progress=false")
    assert proc.returncode == 0, tail(proc)
    return run


def test_demo_trains_on_two_ranks_with_falling_loss(demo_run):
    losses = [json.loads(line)["loss"] for line in (demo_run / "metrics.jsonl").open()]
    assert len(losses) == STEPS
    # mean of the last 3 over the first 3, measured with stage.seed 0-5: 0.817 to 0.837; the
    # bound clears the worst seed by over twice the seeds' spread (room for other CPUs)
    assert sum(losses[-3:]) / 3 < 0.92 * sum(losses[:3]) / 3, losses
    cfg = yaml.safe_load((demo_run / "config.yaml").read_text())
    assert cfg["model"]["sampler"] == "adaptive" and cfg["mask"]["encoder"] == "adaptive"


def test_demo_writes_images_and_trains_the_sampler(demo_run):
    from PIL import Image

    from giant.interop import load_weights

    images = sorted(p.name for p in (demo_run / "images").glob("*.png"))
    assert images == ["reconstruction_step0000005.png", "reconstruction_step0000010.png"]
    assert Image.open(demo_run / "images" / images[-1]).size == (4 * 128, 3 * 128)  # T' × 3 rows
    state, info = load_weights(demo_run)
    assert info["model"]["sampler"] == "adaptive"
    assert state["encoder.pos_embed_probs"].abs().max() > 0  # zero init, moved by the sampling loss
    build_model(ModelConfig(**info["model"])).load_state_dict(state, strict=True)
