"""Supervised-stage pieces on one process: pretrain → classifier key mapping, K710 → K400 head
slicing, the official layer-decay rule, Mixup/CutMix on video, evaluation sharding and the
multi-view summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from giant.config import ModelConfig, load_config
from giant.engine.deepspeed import param_groups
from giant.errors import CheckpointError, ConfigError
from giant.models import build_model
from giant.stages.evaluate import SCORES, compare, confusion_png, summarise
from giant.stages.finetune import build_mixup, mix_video
from giant.stages.sharding import PaddedShardSampler
from giant.stages.weights import classifier_state, load_classifier_init, pos_grid_for
from giant.models import resolve as resolve_model

TINY = dict(name="tiny", img_size=32, patch_size=8, num_frames=4)


def _artifact(tmp_path, model, kind: str, model_cfg: ModelConfig):
    """A stage artifact exactly as export_weights writes one (weights.safetensors + model.json)."""
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    cfg = resolve_model(model_cfg)
    (tmp_path / "model.json").write_text(json.dumps({"kind": kind, "model": cfg.__dict__}))
    return tmp_path


def test_pretrain_artifact_loads_into_classifier(tmp_path):
    torch.manual_seed(0)
    mae = build_model(ModelConfig(**TINY), "pretrain")
    art = _artifact(tmp_path / "pt", mae, "pretrain", ModelConfig(**TINY))
    clf = build_model(ModelConfig(**TINY, num_classes=5), "classifier")
    report = load_classifier_init(clf, str(art))
    sd = clf.state_dict()
    for key, value in mae.state_dict().items():
        if key.startswith("encoder.") and not key.startswith("encoder.norm."):
            assert torch.equal(sd[key[len("encoder."):]], value), key
    assert sorted(report["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    # decoder (1 block of 13 tensors + norm 2 + head 2), encoder_to_decoder, mask_token, encoder.norm ×2
    assert len(report["dropped"]) == 17 + 1 + 1 + 2
    assert report["loaded"] == len(sd) - 4
    state, dropped = classifier_state(mae.state_dict(), "pretrain")
    assert "blocks.0.attn.q_bias" in state and "norm.weight" not in state and "mask_token" in dropped


def test_k710_head_rows_are_sliced_by_rowmap(tmp_path):
    torch.manual_seed(0)
    src = build_model(ModelConfig(**TINY, num_classes=7), "classifier")
    art = _artifact(tmp_path / "k710", src, "finetune", ModelConfig(**TINY, num_classes=7))
    rows = [6, 0, 3]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    dst = build_model(ModelConfig(**TINY, num_classes=3), "classifier")
    report = load_classifier_init(dst, str(art), str(tmp_path / "rows.json"))
    assert report["missing"] == []
    assert torch.equal(dst.head.weight, src.head.weight[rows]) and torch.equal(dst.head.bias, src.head.bias[rows])
    assert torch.equal(dst.fc_norm.weight, src.fc_norm.weight)
    # no row map and another class count: the head starts fresh, the rest still loads
    fresh = build_model(ModelConfig(**TINY, num_classes=4), "classifier")
    before = fresh.head.weight.clone()
    report = load_classifier_init(fresh, str(art))
    assert report["missing"] == ["head.weight", "head.bias"] and torch.equal(fresh.head.weight, before)
    with pytest.raises(ConfigError, match="selects 3 rows but model.num_classes=4"):
        load_classifier_init(build_model(ModelConfig(**TINY, num_classes=4), "classifier"), str(art),
                             str(tmp_path / "rows.json"))


def test_wrong_model_is_one_clear_error(tmp_path):
    mae = build_model(ModelConfig(**TINY), "pretrain")
    art = _artifact(tmp_path / "pt", mae, "pretrain", ModelConfig(**TINY))
    other = build_model(ModelConfig(**{**TINY, "patch_size": 16}, num_classes=3), "classifier")
    with pytest.raises((CheckpointError, ConfigError), match="patch_embed.proj.weight"):
        load_classifier_init(other, str(art))


def test_position_grid_follows_the_init_artifact():
    art = resolve_model(ModelConfig(**TINY)).__dict__
    same = resolve_model(ModelConfig(**TINY, num_classes=3))
    assert pos_grid_for(same, art) is None
    longer = resolve_model(ModelConfig(**{**TINY, "num_frames": 8}, num_classes=3))
    assert pos_grid_for(longer, art) == [2, 4, 4]  # the table is resampled from 2×4×4 to 4×4×4


def _official_layer_id(name: str, num_layers: int) -> int:
    """VideoMAE's get_num_layer_for_vit, written out from its definition (docs/reference.md §5)."""
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def test_layer_decay_groups_follow_the_official_rule():
    model = build_model(ModelConfig(**TINY, num_classes=3), "classifier")
    decay, L = 0.75, 2
    values = [decay ** (L + 1 - i) for i in range(L + 2)]  # LayerDecayValueAssigner
    groups = param_groups(model, 0.05, layer_decay=decay)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["lr_scale"] == pytest.approx(values[_official_layer_id(name, L)]), name
        no_decay = p.ndim == 1 or name.endswith(".bias")
        assert g["wd_scale"] == (0.0 if no_decay else 1.0), name
    assert {g["layer_id"] for g in groups} == {0, 1, 2, 3}


def test_mixup_and_cutmix_targets_sum_to_one_and_boxes_span_time():
    cfg = load_config(None, ["model.num_classes=5", "finetune.mixup_switch_prob=1.0"])  # CutMix only
    np.random.seed(0)
    mixup = build_mixup(cfg, 5, 4)
    y = torch.tensor([0, 1, 2, 3])
    boxes = 0
    for _ in range(5):
        x = torch.arange(4.0)[:, None, None, None, None].expand(4, 3, 4, 32, 32).clone()
        mixed, soft = mix_video(mixup, x.clone(), y)  # mixes in place, like timm
        torch.testing.assert_close(soft.sum(1), torch.ones(4))
        own, partner = mixed == x, mixed == x.flip(0)
        assert bool((own | partner).all())  # every pixel is its own or its partner's
        box = partner[0]  # [C, T, H, W]: one spatial box, the same in every channel and frame
        assert bool((box == box[:1, :1]).all())
        lam = (float(soft[0, 0]) - 0.1 / 5) / 0.9  # label smoothing 0.1 inside the soft targets
        assert float(box[0, 0].float().mean()) == pytest.approx(1 - lam, abs=1e-6)  # lam = area kept
        boxes += 0 < int(box[0, 0].sum()) < 32 * 32
    assert boxes >= 3
    with pytest.raises(ConfigError, match="must be even"):
        build_mixup(cfg, 5, 3)
    assert build_mixup(load_config(None, ["finetune.mixup=0", "finetune.cutmix=0"]), 5, 4) is None


def test_padded_shards_cover_every_video_once():
    for n, world, batch in [(7, 2, 2), (12, 3, 1), (1, 2, 4), (10, 4, 3)]:
        samplers = [PaddedShardSampler(n, r, world, batch) for r in range(world)]
        assert len({len(s) for s in samplers}) == 1 and len(samplers[0]) % batch == 0
        real = [i for s in samplers for i, ok in zip(s, s.real_mask().tolist()) if ok]
        assert sorted(real) == list(range(n))


def test_summary_counts_unreadable_videos(tmp_path):
    label = np.array([0, 1, 2, 2])
    valid = np.array([True, True, False, True])
    scores = np.array([[.9, .1, 0], [.2, .7, .1], [1, 0, 0], [.6, 0, .4]])
    r = summarise(np.arange(4), label, valid, scores, 3)
    assert (r["videos"], r["readable"], r["unreadable"]) == (4, 3, 1)
    assert r["top1"] == pytest.approx(200 / 3) and r["top1_all"] == pytest.approx(50.0)
    assert r["per_class_top1"] == {0: 100.0, 1: 100.0, 2: 0.0}
    assert r["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    confusion_png(np.array(r["confusion"]), tmp_path / "c.png")
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "c.png"))
    assert img.shape[:2] == (3 * 32, 3 * 32) and img[0, 0].tolist() != img[0, 40].tolist()


def test_agreement_with_a_reference_evaluation_by_hand(tmp_path):
    """The distilled student against its teacher's evaluation: top-1 agreement and mean KL over
    the videos both read (video 2 is unreadable for the student, video 3 for the teacher)."""
    paths = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    teacher = np.array([[.7, .2, .1], [.1, .8, .1], [.3, .3, .4], [1 / 3] * 3])
    student = np.array([[.5, .4, .1], [.6, .3, .1], [.2, .2, .6], [.1, .1, .8]])
    np.savez(tmp_path / SCORES, path=np.array(paths), valid=np.array([True, True, True, False]),
             scores=teacher.astype(np.float32))
    got = compare(tmp_path, paths, np.array([True, True, False, True]), student)
    kl_a = .7 * np.log(.7 / .5) + .2 * np.log(.2 / .4) + .1 * np.log(1.0)  # = 0.0969
    kl_b = .1 * np.log(.1 / .6) + .8 * np.log(.8 / .3) + .1 * np.log(1.0)  # = 0.6055
    assert got["reference_videos"] == 2 and got["agreement_top1"] == 50.0  # a agrees, b does not
    assert got["kl_from_reference"] == pytest.approx((kl_a + kl_b) / 2, rel=1e-5)
    assert compare(tmp_path, paths, np.ones(4, bool), teacher)["kl_from_reference"] == pytest.approx(0, abs=1e-6)
    none = compare(tmp_path, paths, np.array([False, False, False, True]), student)  # d: teacher cannot read it
    assert none["reference_videos"] == 0 and none["agreement_top1"] is None and none["kl_from_reference"] is None
    with pytest.raises(ConfigError, match="not these 3 × 3; evaluate both on the same data.test_manifest"):
        compare(tmp_path, paths[:3], np.ones(3, bool), student[:3])
    with pytest.raises(ConfigError, match=f"--reference {tmp_path / 'x'}: no {SCORES} there"):
        compare(tmp_path / "x", paths, np.ones(4, bool), student)


def test_maest_pretrain_artifact_keeps_its_norm_for_the_classifier(tmp_path):
    cfg = ModelConfig(**TINY, arch="maest", decoder_num_heads=2)
    mae = build_model(cfg, "pretrain")
    art = _artifact(tmp_path / "pt", mae, "pretrain", cfg)
    clf = build_model(ModelConfig(**TINY, arch="maest", num_classes=3), "classifier")
    report = load_classifier_init(clf, str(art))
    assert sorted(report["missing"]) == ["head.bias", "head.weight"]  # MAE-ST pools into `norm`
    assert torch.equal(clf.state_dict()["norm.weight"], mae.state_dict()["encoder.norm.weight"])
