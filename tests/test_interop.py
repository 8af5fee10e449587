"""Interop: official VideoMAE / V2 checkpoint layouts and HF transformers, with output parity.

Official layouts are built from the shared parity fixture (weights + outputs of the official
code) by renaming / nesting / casting, and must reproduce the fixture's outputs. HF parity runs
the installed transformers on the same random weights, both directions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging

import pytest
import torch
import transformers

from giant import cli
from giant.config import ModelConfig
from giant.errors import CheckpointError
from giant.interop import load_any, load_weights, save_giant
from giant.interop.hf import key_table, match_norm_eps, save_hf
from giant.interop.videomae import save_official
from giant.models import build_model
from giant.models.pos_embed import sincos_table
from _reference import reference_file
from giant.models import resolve as resolve_model

GEOM = {"num_frames": 8, "img_size": 64}  # the fixture's input: 8 x 64 x 64, 4 x 4 x 4 tokens


@pytest.fixture(scope="module")
def parity():
    return torch.load(reference_file("videomaev2/videomaev2_parity_small.pt"), weights_only=False)


def _keeps(masked_BN):
    return torch.stack([torch.nonzero(~m).flatten() for m in masked_BN])


def _model(state, info):
    model = build_model(ModelConfig(**info["model"]), info["kind"]).eval()
    model.load_state_dict(state, strict=True)
    return model


@torch.no_grad()
def _outputs(state, info, parity):
    model = _model(state, info)
    if info["kind"] == "pretrain":
        out = model(parity["video"], _keeps(parity["encoder_mask"]), _keeps(parity["decoder_mask"]))
        return out.pred, out.loss
    return model(parity["video"]), None


def _check_fixture(state, info, parity, tol=1e-5):
    pred, loss = _outputs(state, info, parity)
    if info["kind"] == "pretrain":
        assert (pred - parity["pretrain_output"]).abs().max() < tol
        assert abs(loss.item() - parity["pretrain_loss"].item()) < tol
    else:
        assert (pred - parity["finetune_logits"]).abs().max() < tol


def _qkv_bias(sd, k_value=0.0):
    """V1-port layout: one qkv.bias = [q_bias, k (zero), v_bias]."""
    out = {}
    for key, v in sd.items():
        if key.endswith("attn.q_bias"):
            base = key[: -len("q_bias")]
            out[base + "qkv.bias"] = torch.cat([v, torch.full_like(v, k_value), sd[base + "v_bias"]])
        elif not key.endswith("attn.v_bias"):
            out[key] = v
    return out


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


LAYOUTS = {
    "whole_file": lambda sd: sd,
    "under_model": lambda sd: {"model": sd, "epoch": 299, "optimizer": {"lr": 1e-3}},
    "under_module": lambda sd: {"module": sd},  # DeepSpeed saves
    "under_state_dict": lambda sd: {"state_dict": sd},
    "ddp_prefix": lambda sd: {"model": _prefixed(sd, "module.")},
    "compile_prefix": lambda sd: {"model": _prefixed(sd, "_orig_mod.")},
    "deepspeed_in_model": lambda sd: {"model": {"module": _prefixed(sd, "_orig_mod.")}},
    "v1_qkv_bias": lambda sd: {"model": _qkv_bias(sd)},
}


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_official_layouts_reproduce_fixture(parity, tmp_path, kind, name):
    sd = parity[f"{kind}_state_dict"]
    torch.save(LAYOUTS[name](dict(sd)), tmp_path / "ckpt.pth")
    state, info, fmt = load_any(tmp_path / "ckpt.pth", GEOM)
    assert fmt == "official" and info["kind"] == ("pretrain" if kind == "pretrain" else "classifier")
    assert set(state) == set(sd) and all(torch.equal(state[k], sd[k]) for k in sd)
    _check_fixture(state, info, parity)


def test_classifier_under_encoder_or_backbone_prefix(parity, tmp_path):
    sd = parity["finetune_state_dict"]
    for prefix in ("encoder.", "backbone."):
        torch.save({"module": _prefixed(sd, prefix)}, tmp_path / "ft.pth")
        state, info, _ = load_any(tmp_path / "ft.pth", GEOM)
        assert info["model"]["num_classes"] == 7
        _check_fixture(state, info, parity)


def test_fp16_files_load_as_fp32(parity, tmp_path, caplog):
    for kind in ("pretrain", "finetune"):
        sd = parity[f"{kind}_state_dict"]
        torch.save({"model": {k: v.half() for k, v in sd.items()}}, tmp_path / "half.pth")
        with caplog.at_level(logging.INFO, logger="giant.interop.videomae"):
            state, info, _ = load_any(tmp_path / "half.pth", GEOM)
        assert "float16" in caplog.text
        assert all(v.dtype == torch.float32 and torch.equal(v, sd[k].half().float())
                   for k, v in state.items())
        _check_fixture(state, info, parity, tol=5e-3)  # the weights themselves were rounded


def test_nonzero_key_bias_is_dropped_exactly(parity, tmp_path, caplog):
    """softmax(q·(k + b)) = softmax(q·k): a key bias cannot change the output."""
    torch.save(_qkv_bias(parity["finetune_state_dict"], k_value=0.3), tmp_path / "kb.pth")
    with caplog.at_level(logging.WARNING, logger="giant.interop.videomae"):
        state, info, _ = load_any(tmp_path / "kb.pth", GEOM)
    assert "non-zero" in caplog.text and "0.3" in caplog.text
    _check_fixture(state, info, parity)


def test_geometry_from_args_or_position_table(parity, tmp_path):
    sd = dict(parity["pretrain_state_dict"])
    args = argparse.Namespace(num_frames=8, input_size=64, lr=1e-3)
    torch.save({"model": sd, "args": args}, tmp_path / "args.pth")  # loads with weights_only
    state, info, _ = load_any(tmp_path / "args.pth")
    assert (info["model"]["num_frames"], info["model"]["img_size"]) == (8, 64)
    _check_fixture(state, info, parity)

    with_pos = {**sd, "encoder.pos_embed": sincos_table(64, 96)[None]}
    torch.save(with_pos, tmp_path / "pos.pth")
    state, info, _ = load_any(tmp_path / "pos.pth", {"img_size": 64})
    assert info["model"]["num_frames"] == 8 and "encoder.pos_embed" not in state
    _check_fixture(state, info, parity)
    with pytest.raises(CheckpointError, match=r"holds 64 tokens.*--model-override img_size=N"):
        load_any(tmp_path / "pos.pth")

    learned = {**sd, "encoder.pos_embed": torch.randn(1, 64, 96)}
    torch.save(learned, tmp_path / "learned.pth")
    with pytest.raises(CheckpointError, match="learned position table"):
        load_any(tmp_path / "learned.pth", GEOM)


def test_missing_geometry_and_heads_are_asked_for(parity, tmp_path):
    torch.save(parity["finetune_state_dict"], tmp_path / "ft.pth")
    with pytest.raises(CheckpointError, match=r"--model-override num_frames=N --model-override img_size=N"):
        load_any(tmp_path / "ft.pth")
    odd = {k: v for k, v in parity["finetune_state_dict"].items()}
    odd["patch_embed.proj.weight"] = torch.zeros(80, 3, 2, 16, 16)
    torch.save(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"width 80.*--model-override num_heads=N"):
        load_any(tmp_path / "odd.pth", GEOM)


class _Opaque:  # a pickled object weights_only refuses
    pass


def test_untrusted_pickle_is_refused_with_the_fix(parity, tmp_path):
    torch.save({"model": parity["finetune_state_dict"], "extra": _Opaque()}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_any(tmp_path / "obj.pth", GEOM)
    state, info, _ = load_any(tmp_path / "obj.pth", GEOM, trust_pickle=True)
    _check_fixture(state, info, parity)


class _Planted:  # unpickled unrestricted, it would create a folder: proof that code ran
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _loads(monkeypatch) -> list:
    """Record the weights_only argument of every torch.load."""
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_trust_pickle_unpickles_unrestricted_only_what_needs_it(parity, tmp_path, monkeypatch):
    torch.save({"model": parity["finetune_state_dict"], "args": argparse.Namespace(num_frames=8)},
               tmp_path / "plain.pth")
    calls = _loads(monkeypatch)
    load_any(tmp_path / "plain.pth", {"img_size": 64}, trust_pickle=True)
    assert calls == [True]  # the flag does not unpickle a file weights_only reads
    marker = tmp_path / "ran"
    torch.save({"model": parity["finetune_state_dict"], "x": _Planted(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as err:
        load_any(tmp_path / "evil.pth", GEOM)
    assert "posix.mkdir" in str(err.value) and "--trust-pickle" in str(err.value)
    assert not marker.exists()


def test_legacy_format_pickles_are_told_apart_too(parity, tmp_path):
    """torch.save's pre-zip format: a refused type is named (needs trust), not 'damaged'."""
    torch.save({"model": parity["finetune_state_dict"], "extra": _Opaque()}, tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"holds Python objects beyond tensors \(.*_Opaque\)"):
        load_any(tmp_path / "old.pth", GEOM)
    state, info, _ = load_any(tmp_path / "old.pth", GEOM, trust_pickle=True)
    _check_fixture(state, info, parity)


@pytest.mark.parametrize("command", ["convert", "convert-maest"])
@pytest.mark.parametrize("trust", [False, True])
def test_random_bytes_are_one_line_not_a_checkpoint(command, trust, tmp_path, capsys):
    src = tmp_path / "random_bytes.pth"
    src.write_bytes(bytes(range(256)) * 40)
    argv = [command, str(src), str(tmp_path / "out")] + (["--trust-pickle"] if trust else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Python objects" not in err
    assert err.startswith(f"giant {command}: error: {src}: is not a PyTorch checkpoint")
    assert not (tmp_path / "out").exists()


def test_mismatched_keys_one_message_with_offenders_and_model(parity, tmp_path):
    sd = dict(parity["finetune_state_dict"])
    sd["blocks.0.gamma_1"] = torch.ones(96)
    sd["blocks.1.gamma_1"] = torch.ones(96)
    del sd["fc_norm.bias"]
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(96, 100)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        load_any(tmp_path / "bad.pth", GEOM)
    msg = str(exc.value)
    assert "4 tensor(s) do not fit" in msg
    assert "unexpected blocks.0.gamma_1, blocks.1.gamma_1" in msg and "missing fc_norm.bias" in msg
    assert "wrong shape blocks.1.mlp.fc2.weight (96, 100) (model (96, 384))" in msg
    assert "classifier tiny (patch 16, tubelet 2, width 96, depth 2, 4 heads; 7 classes" in msg
    assert msg.count("\n") == 0


def test_load_weights_converts_official_and_hf_on_load(parity, tmp_path):
    """checkpoint.init_from calls load_weights: official files and HF dirs load directly."""
    sd = parity["pretrain_state_dict"]
    torch.save({"module": _prefixed(sd, "_orig_mod.")}, tmp_path / "pt.pth")
    state, info = load_weights(tmp_path / "pt.pth")
    assert info["kind"] == "pretrain" and info["unknown"] == ["num_frames", "img_size"]
    assert all(torch.equal(state[k], sd[k]) for k in sd) and set(state) == set(sd)
    _, info = load_any(tmp_path / "pt.pth", GEOM)[:2]
    save_hf(tmp_path / "hf", state, info)
    state2, info2 = load_weights(tmp_path / "hf")
    assert all(torch.equal(state2[k], sd[k]) for k in sd) and info2["model"]["num_frames"] == 8
    with pytest.raises(CheckpointError, match="Hugging Face VideoMAE directory"):
        load_weights(tmp_path)


# ----------------------------------------------------------------------------- round trips
def _fixture_info(parity, kind, tmp_path):
    torch.save(parity[f"{kind}_state_dict"], tmp_path / f"{kind}.pth")
    return load_any(tmp_path / f"{kind}.pth", GEOM)[:2]


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_round_trips_are_bit_exact(parity, tmp_path, kind):
    state, info = _fixture_info(parity, kind, tmp_path)
    if info["kind"] == "classifier":
        info = {**info, "labels": [f"class {i}" for i in range(7)]}
    save_giant(tmp_path / "g", state, info)
    save_official(tmp_path / "o.pth", state, info)
    save_hf(tmp_path / "h", state, info)
    for src in ("g", "o.pth", "h"):
        back, binfo, _ = load_any(tmp_path / src)  # no overrides: the geometry travelled along
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state), src
        assert binfo["model"] == info["model"] and binfo["kind"] == info["kind"], src
        assert binfo.get("labels") == info.get("labels"), src


# ----------------------------------------------------------------------------- transformers
@torch.no_grad()
def test_giant_to_hf_outputs_match(parity, tmp_path):
    """Exported dirs load with from_pretrained and compute giant's outputs: identical with the
    norm eps matched; within 5e-5 with HF's hard-coded 1e-5 in fc_norm / decoder.norm."""
    mask = parity["encoder_mask"]
    x_BTCHW = parity["video"].permute(0, 2, 1, 3, 4)
    for kind in ("pretrain", "finetune"):
        state, info = _fixture_info(parity, kind, tmp_path)
        save_hf(tmp_path / kind, state, info)
        cls = transformers.VideoMAEForPreTraining if kind == "pretrain" else \
            transformers.VideoMAEForVideoClassification
        hf = cls.from_pretrained(tmp_path / kind).eval()
        assert hf.config.layer_norm_eps == 1e-6
        model = _model(state, info)
        if kind == "pretrain":  # HF: decoder reconstructs every masked token (decoder mask none)
            ours = model(parity["video"], _keeps(mask), _keeps(~mask))
            ours, ours_loss = ours.pred, ours.loss
            run = lambda: hf(x_BTCHW, bool_masked_pos=mask)  # noqa: E731
        else:
            ours, ours_loss = model(parity["video"]), None
            run = lambda: hf(x_BTCHW)  # noqa: E731
        default = run()
        assert (default.logits - ours).abs().max() < 5e-5
        exact = (match_norm_eps(hf, 1e-6), run())[1]
        assert (exact.logits - ours).abs().max() < 1e-6
        if ours_loss is not None:
            assert abs(exact.loss.item() - ours_loss.item()) < 1e-6


def _random_hf(kind, seed=0):
    conf = transformers.VideoMAEConfig(
        image_size=64, patch_size=16, num_frames=8, tubelet_size=2, hidden_size=96,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=384, layer_norm_eps=1e-6,
        decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=256, use_mean_pooling=kind == "classifier", num_labels=5)
    torch.manual_seed(seed)
    cls = transformers.VideoMAEForPreTraining if kind == "pretrain" else \
        transformers.VideoMAEForVideoClassification
    hf = cls(conf).eval()
    with torch.no_grad():  # every tensor non-trivial, biases and norms included
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf  # fc_norm / decoder.norm keep transformers' hard-coded eps 1e-5


@torch.no_grad()
def test_hf_to_giant_outputs_match(parity, tmp_path):
    mask = parity["encoder_mask"]
    for kind in ("pretrain", "classifier"):
        hf = _random_hf(kind)
        hf.save_pretrained(tmp_path / kind)
        state, info, fmt = load_any(tmp_path / kind)
        assert fmt == "hf" and info["kind"] == kind and info["model"]["norm_eps"] == 1e-6
        model = _model(state, info)
        x_BTCHW = parity["video"].permute(0, 2, 1, 3, 4)
        if kind == "pretrain":
            ours = model(parity["video"], _keeps(mask), _keeps(~mask))
            run = lambda: hf(x_BTCHW, bool_masked_pos=mask)  # noqa: E731
            ours, ours_loss = ours.pred, ours.loss
        else:
            ours, ours_loss = model(parity["video"]), None
            run = lambda: hf(x_BTCHW)  # noqa: E731
        assert (ours - run().logits).abs().max() < 5e-5
        exact = (match_norm_eps(hf, 1e-6), run())[1]
        assert (ours - exact.logits).abs().max() < 1e-6
        if ours_loss is not None:
            assert abs(ours_loss.item() - exact.loss.item()) < 1e-6


def test_hf_4x_bias_names_load_and_export_table(parity, tmp_path):
    from safetensors.torch import load_file, save_file

    state, info = _fixture_info(parity, "pretrain", tmp_path)
    save_hf(tmp_path / "h", state, info)
    old = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
           .replace("attention.attention.value.bias", "attention.attention.v_bias"): v
           for k, v in load_file(str(tmp_path / "h" / "model.safetensors")).items()}
    assert sum(k.endswith(".q_bias") for k in old) == 3  # 2 encoder + 1 decoder blocks
    save_file(old, str(tmp_path / "h" / "model.safetensors"))
    back, _, _ = load_any(tmp_path / "h")
    assert all(torch.equal(back[k], state[k]) for k in state)
    cfg = ModelConfig(**info["model"])
    names = {h for _, hs in key_table(cfg, "pretrain", "4.x") for h in hs}
    assert names == set(old)


def test_hf_mismatched_keys_one_message(parity, tmp_path):
    from safetensors.torch import load_file, save_file

    state, info = _fixture_info(parity, "finetune", tmp_path)
    save_hf(tmp_path / "h", state, info)
    tensors = load_file(str(tmp_path / "h" / "model.safetensors"))
    del tensors["fc_norm.bias"]
    tensors["videomae.encoder.layer.0.attention.attention.key.bias"] = torch.zeros(96)
    save_file(tensors, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(CheckpointError) as exc:
        load_any(tmp_path / "h")
    msg = str(exc.value)
    assert "2 tensor(s) do not fit the model its config.json describes, a classifier tiny" in msg
    assert "unexpected videomae.encoder.layer.0.attention.attention.key.bias" in msg
    assert "missing fc_norm.bias" in msg


def _kinetics(name):
    return reference_file(f"kinetics/{name}").read_text().splitlines()


def test_k710_head_slices_to_k400_via_cli(tmp_path, capsys):
    """A 710-row head in official label-map order → a 400-class HF model, rows by the official
    710→400 map; --row-map gives the same rows; --head-labels also reorders by name."""
    k710, k400 = _kinetics("label_map_k710.txt"), _kinetics("label_map_k400.txt")
    rows400 = json.loads(reference_file("kinetics/label_710to400.json").read_text())
    cfg = dataclasses.replace(ModelConfig(name="tiny", num_classes=710), **GEOM)
    torch.manual_seed(0)
    state = build_model(cfg, "classifier").state_dict()
    info = {"kind": "classifier", "model": dataclasses.asdict(resolve_model(cfg))}
    save_giant(tmp_path / "k710", state, info)
    labels = reference_file("kinetics/label_map_k710.txt")
    assert cli.main(["convert", str(tmp_path / "k710"), str(tmp_path / "hf400"), "--to", "hf",
                     "--head-labels", str(labels),
                     "--label-map", str(reference_file("kinetics/label_map_k400.txt"))]) == 0
    assert "400 classes" in capsys.readouterr().out
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf400")
    assert torch.equal(hf.classifier.weight, state["head.weight"][rows400])
    assert torch.equal(hf.classifier.bias, state["head.bias"][rows400])
    assert [hf.config.id2label[i] for i in range(400)] == k400

    assert cli.main(["convert", str(tmp_path / "k710"), str(tmp_path / "g400"), "--row-map",
                     str(reference_file("kinetics/label_710to400.json"))]) == 0
    sliced, sinfo = load_weights(tmp_path / "g400")
    assert torch.equal(sliced["head.weight"], state["head.weight"][rows400])
    assert sinfo["model"]["num_classes"] == 400 and "labels" not in sinfo

    (tmp_path / "sorted.txt").write_text("\n".join(sorted(k710)) + "\n")  # giant's own class order
    assert cli.main(["convert", str(tmp_path / "k710"), str(tmp_path / "official_order"),
                     "--head-labels", str(tmp_path / "sorted.txt"), "--label-map", str(labels)]) == 0
    reordered, rinfo = load_weights(tmp_path / "official_order")
    i = 123
    assert torch.equal(reordered["head.weight"][i], state["head.weight"][sorted(k710).index(k710[i])])
    assert rinfo["labels"] == k710


def test_cli_official_to_giant_and_errors(parity, tmp_path, capsys):
    torch.save({"model": parity["finetune_state_dict"]}, tmp_path / "ft.pth")
    assert cli.main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "out")]) == 2
    assert "--model-override num_frames=N" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "out"),
                     "--model-override", "num_frames=8", "--model-override", "model.img_size=64"]) == 0
    state, info = load_weights(tmp_path / "out")
    _check_fixture(state, info, parity)
    assert cli.main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "x"),
                     "--model-override", "embed_dim=768", "--model-override", "num_frames=8"]) == 2
    assert "contradicts the weights (embed_dim=96" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "x"), "--label-map",
                     str(reference_file("kinetics/label_map_k400.txt"))] + [
                     "--model-override", "num_frames=8", "--model-override", "img_size=64"]) == 2
    assert "--head-labels" in capsys.readouterr().err


@pytest.mark.parametrize("ref_key,name,kind,classes", [
    ("vit_giant_patch14_224_k710", "vit_g", "classifier", 710),
    ("vit_base_patch16_224_k710", "vit_b", "classifier", 710),
    ("pretrain_videomae_giant_patch14_224", "vit_g", "pretrain", 0),
    ("pretrain_videomae_base_patch16_224", "vit_b", "pretrain", 0)])
def test_released_shapes_infer_the_published_config(ref_key, name, kind, classes):
    """The four official key lists (shapes only, meta tensors) give the published sizes."""
    from giant.interop import layout

    table = json.loads(reference_file("videomaev2/videomaev2_state_dict_keys.json").read_text())
    keys = table[ref_key]["keys"]
    state = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    assert layout.kind_of(state) == kind
    cfg, unknown = layout.infer_config(state, kind, ref_key, {}, require_geometry=False)
    assert unknown == ["num_frames", "img_size"]
    assert cfg == resolve_model(ModelConfig(name=name, num_classes=classes))  # 48/11 ratios included
    layout.check_fit(state, cfg, kind, ref_key)
