"""Distillation: the KL loss against a hand computation, a frozen teacher (no gradient, no
graph, never changes, eval mode, low precision) driven through the stage's own step function,
class-set and teacher errors, the --teacher/--student shorthands and the console script, and
one 2-rank run (launched by launch/distill.py and `giant distill`) whose interrupted-then-
resumed copy reproduces every logged number."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _launch import REPO, env, run_captured, tail, torchrun
from giant.config import ModelConfig, load_config, to_dict
from giant.data import normalize_on_device
from giant.errors import ConfigError
from giant.models import build_model
from giant.models import resolve as resolve_model

RECIPE = str(REPO / "launch/recipes/demo_distill.yaml")
TEACHER = dict(name="tiny", img_size=32, patch_size=8, num_frames=4)
STUDENT = dict(TEACHER, depth=1, embed_dim=64, num_heads=4)
STEPS = 4


def _artifact(out: Path, model_cfg: ModelConfig, kind: str = "finetune", seed: int = 0,
              head_scale: float = 1.0) -> Path:
    """A stage artifact as `giant export` writes it (weights.safetensors + model.json);
    `head_scale` undoes the near-zero head init, so the teacher's classes differ."""
    from giant.interop import save_giant

    torch.manual_seed(seed)
    cfg = resolve_model(model_cfg)
    model = build_model(cfg, "classifier" if kind != "pretrain" else "pretrain")
    state = model.state_dict()
    if "head.weight" in state:
        state["head.weight"], state["head.bias"] = state["head.weight"] * head_scale, state["head.bias"] * head_scale
    return save_giant(out, state, {"kind": kind, "model": to_dict(cfg)})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return _artifact(tmp_path_factory.mktemp("teacher") / "t", ModelConfig(**TEACHER, num_classes=4), seed=1,
                     head_scale=1000.0)


def _cfg(teacher: Path, *extra: str):
    return load_config(RECIPE, [f"distill.teacher={teacher}", "model.num_frames=4", "model.img_size=32",
                                "model.drop_path_rate=0",
                                "stage.device=cpu", "data.num_sample=1", "optim.batch_size=4", *extra])


# ----------------------------------------------------------------------------- the loss
def _hand_kl(s: list, t: list, temp: float) -> float:
    def softmax(row):
        m = max(row)
        e = [math.exp((v - m) / temp) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for srow, trow in zip(s, t):
        ps, pt = softmax(srow), softmax(trow)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return temp * temp * total / len(s)


@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_kl_loss_matches_a_hand_computation(temp):
    from giant.stages.teacher import distill_loss

    s = [[1.0, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 4.0], [-2.0, 1.0, 0.5, 0.5]]
    t = [[0.5, 0.0, 3.0, -1.0], [1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    s_t = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = distill_loss(s_t, torch.tensor(t), temp)
    assert float(loss.detach()) == pytest.approx(_hand_kl(s, t, temp), rel=1e-6)
    loss.backward()  # d/ds = T · (softmax(s/T) − softmax(t/T)) / B
    want = temp * (torch.softmax(s_t.detach() / temp, 1) - torch.softmax(torch.tensor(t) / temp, 1)) / 3
    torch.testing.assert_close(s_t.grad, want.double(), rtol=1e-5, atol=1e-6)
    assert float(distill_loss(torch.tensor(t), torch.tensor(t), temp)) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- the stage, one process
def _batch(seed: int, n: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randint(0, 256, (n, 3, 4, 32, 32), dtype=torch.uint8, generator=g),
            "label": torch.randint(0, 4, (n,), generator=g), "num_videos": n, "num_failed": 0,
            "failed_paths": []}


def _stage(cfg, tmp_path):
    from giant.data import FailureTracker
    from giant.stages.distill import DistillStage
    from giant.stages.driver import GlobalFailures, RunContext

    stage = DistillStage(cfg)
    ctx = RunContext(cfg=cfg, model_cfg=stage.model_config(cfg), rank=0, world=1,
                     device=torch.device("cpu"), run_dir=tmp_path, ds=None)
    torch.manual_seed(0)
    student = build_model(ctx.model_cfg, "classifier")
    stage.init_weights(ctx, student)
    return stage, ctx, student, stage.step_fn(ctx, GlobalFailures(FailureTracker(), 0))


def test_teacher_is_frozen_graph_free_and_never_changes(teacher, tmp_path):
    from giant.stages.teacher import distill_loss

    stage, ctx, student, step = _stage(_cfg(teacher, "distill.teacher_precision=bf16",
                                            "distill.temperature=2"), tmp_path)
    t = stage.teacher
    assert not t.training and not any(m.training for m in t.modules())
    assert t.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16 and t.head.weight.dtype == torch.float32
    before = {k: v.clone() for k, v in t.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)  # the engine's optimizer: student only
    for i in range(3):
        batch = _batch(i)
        loss, logits = step(student, batch)
        x = normalize_on_device(batch["video"], ctx.cfg.data.mean, ctx.cfg.data.std)
        out_t = stage.teach(x)
        assert not out_t.requires_grad and out_t.grad_fn is None  # no teacher activations kept
        torch.testing.assert_close(loss, distill_loss(student(x), out_t, 2.0), rtol=1e-5, atol=1e-6)
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
        opt.step()
        opt.zero_grad()
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    stats = stage.scalars(ctx, 3)
    assert set(stats) == {"kl", "hard_loss", "agreement"} and 0 <= stats["agreement"] <= 100
    assert stats["kl"] > 0 and stats["hard_loss"] > 0


def test_hard_label_term_is_added_with_its_weight(teacher, tmp_path):
    from timm.loss import LabelSmoothingCrossEntropy

    from giant.stages.teacher import distill_loss

    stage, ctx, student, step = _stage(_cfg(teacher, "distill.hard_weight=0.5",
                                            "distill.teacher_precision=fp32"), tmp_path)
    batch = _batch(7)
    loss, logits = step(student, batch)
    x = normalize_on_device(batch["video"], ctx.cfg.data.mean, ctx.cfg.data.std)
    hard = LabelSmoothingCrossEntropy(0.1)(logits, batch["label"])
    want = distill_loss(logits, stage.teach(x)) + 0.5 * hard
    torch.testing.assert_close(loss, want, rtol=1e-3, atol=1e-4)  # a sharp teacher amplifies rounding
    assert float(hard.detach()) > 1.0  # so a missing or mis-weighted term would be far outside the tolerance
    assert stage.teacher.head.weight.dtype == torch.float32 and stage.teacher_precision == "fp32"


def test_class_sets_rowmap_and_teacher_errors(teacher, tmp_path):
    from giant.stages.distill import DistillStage, load_teacher

    six = _artifact(tmp_path / "six", ModelConfig(**TEACHER, num_classes=6), seed=2)
    student = resolve_model(ModelConfig(**TEACHER, num_classes=4))
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"predicts 6 classes, the student \(model.num_classes\) 4"):
        load_teacher(_cfg(six), student, cpu)
    (tmp_path / "rows.json").write_text(json.dumps([5, 0, 2, 3]))
    model, tcfg, _ = load_teacher(_cfg(six, f"distill.head_rowmap={tmp_path / 'rows.json'}"), student, cpu)
    from safetensors.torch import load_file

    head = load_file(str(six / "weights.safetensors"))["head.weight"]
    assert tcfg.num_classes == 4 and torch.equal(model.head.weight, head[[5, 0, 2, 3]])
    (tmp_path / "rows3.json").write_text(json.dumps([5, 0, 2]))
    with pytest.raises(ConfigError, match="selects 3 rows"):
        load_teacher(_cfg(six, f"distill.head_rowmap={tmp_path / 'rows3.json'}"), student, cpu)
    with pytest.raises(ConfigError, match="teacher without weights teaches nothing"):
        DistillStage(_cfg(teacher, "distill.teacher="))
    with pytest.raises(ConfigError, match="does not exist"):
        DistillStage(_cfg(tmp_path / "nowhere"))
    pre = _artifact(tmp_path / "pre", ModelConfig(**TEACHER), kind="pretrain")
    with pytest.raises(ConfigError, match="without a classifier head"):
        load_teacher(_cfg(pre), student, cpu)
    with pytest.raises(ConfigError, match="holds a tiny"):
        load_teacher(_cfg(teacher, "distill.teacher_model.name=vit_g"), student, cpu)
    with pytest.raises(ConfigError, match="distill.teacher_model: unknown key"):
        _cfg(teacher, "distill.teacher_model.widht=3")
    # a teacher trained on another clip length is fed the student's clips: its table is resampled
    model, tcfg, _ = load_teacher(_cfg(teacher), dataclasses.replace(student, num_frames=8), cpu)
    assert tcfg.num_frames == 8 and tcfg.pos_grid == [2, 4, 4]


def test_teacher_and_student_shorthands(tmp_path):
    from giant.commands.distill import model_or_path, shorthand_overrides

    for text, name in [("vitg", "vit_g"), ("vit_g", "vit_g"), ("ViT-B", "vit_b"), ("g", "vit_g"), ("tiny", "tiny")]:
        assert model_or_path(text, "--teacher") == ("size", name)
    with pytest.raises(ConfigError, match="neither a model size"):
        model_or_path("vitq", "--student")
    art = _artifact(tmp_path / "s", ModelConfig(**STUDENT, num_classes=4))
    over = shorthand_overrides("vitg", str(art))
    assert over[0] == "distill.teacher_model.name=vit_g" and f"checkpoint.init_from={art}" in over
    cfg = load_config(RECIPE, over)
    assert (cfg.model.depth, cfg.model.embed_dim, cfg.distill.teacher_model) == (1, 64, {"name": "vit_g"})
    assert shorthand_overrides(str(art), "vitb") == [f"distill.teacher={art}", "model.name=vit_b"]


def test_console_script_entry_and_help(tmp_path):
    import tomllib
    from importlib import import_module

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["distill"].split(":")
    assert callable(getattr(import_module(module), func))
    code = "import sys; from giant.commands.distill import cli_main; sys.argv[0] = 'distill'; sys.exit(cli_main())"
    run = lambda *a: subprocess.run([sys.executable, "-c", code, *a], cwd=tmp_path, env=env(),  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    helped = run("--help")
    assert helped.returncode == 0 and "--teacher" in helped.stdout and "--student" in helped.stdout
    # sizes only: the K710 recipe's teacher path does not exist here → one clear line, exit 2
    missing = run("--teacher", "vitg", "--student", "vitb")
    assert missing.returncode == 2, tail(missing)
    assert "distill.teacher=runs/postpretrain_vitg_k710 does not exist" in missing.stderr
    bad = run("--teacher", "vitq")
    assert bad.returncode == 2 and "neither a model size" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "giant.cli", "--help"], capture_output=True, text=True,
                            env=env(), timeout=60)
    assert "distill" in listed.stdout


# ----------------------------------------------------------------------------- 2 ranks, resumed
def _overrides(synth, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.manifest={synth.train_manifest}", f"data.val_manifest={synth.val_manifest}",
            f"stage.run_dir={run_dir}", "model.num_frames=4", "model.img_size=32", "data.short_side=36",
            "data.num_sample=2", "optim.batch_size=2",
            f"optim.total_steps={STEPS}", "optim.warmup_steps=1", "checkpoint.every_steps=2",
            "stage.eval_every=2", "finetune.mixup=0.8", "finetune.cutmix=1.0", "distill.temperature=2",
            "distill.hard_weight=0.3", "precision.encoder=bf16", "distill.teacher_precision=bf16",
            "logging.progress=false", "logging.log_every=1", *extra]


def _rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


@pytest.fixture(scope="module")
def runs(synth_videos, teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    student = _artifact(d / "student", ModelConfig(**STUDENT, num_classes=4), seed=3)
    short = ["--teacher", str(teacher), "--student", str(student), "--recipe", RECIPE]
    full = torchrun("launch/distill.py", *short, *_overrides(synth_videos, d / "full"))
    assert full.returncode == 0, tail(full)
    first = torchrun("-m", "giant.cli", "distill", *short, *_overrides(synth_videos, d / "resumed"),
                     "stage.stop_after=2")
    assert first.returncode == 0, tail(first)
    second = torchrun("launch/distill.py", *short, *_overrides(synth_videos, d / "resumed"))
    assert second.returncode == 0, tail(second)
    zero3 = torchrun("launch/distill.py", *short, *_overrides(synth_videos, d / "zero3"), "distill.teacher_zero3=true")
    assert zero3.returncode == 0, tail(zero3)
    return {"dir": d, "teacher": teacher, "second": second.stdout + second.stderr,
            "zero3": zero3.stdout + zero3.stderr}


def test_zero3_teacher_is_partitioned_and_matches_the_whole_one(teacher, tmp_path):
    """distill.teacher_zero3: each rank holds half the teacher (+ padding), in the teacher's
    precision, frozen; its logits equal the whole teacher's on each rank's own clips (FP32:
    to rounding; BF16: the head is BF16 too, so to BF16 rounding, same classes)."""
    proc = torchrun("tests/_teacher_worker.py", str(tmp_path), str(teacher))
    assert proc.returncode == 0, tail(proc)
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["world"] == 2
        for precision, tol, dtype in (("fp32", 1e-5, "torch.float32"), ("bf16", 3e-2, "torch.bfloat16")):
            r = res[precision]
            assert r["max_abs_diff"] <= tol * max(r["max_abs"], 1.0) and r["argmax_equal"], (precision, r)
            assert r["full_numel"] / 2 <= r["local_numel"] <= r["full_numel"] / 2 + 64, r  # ≤ 1 element of padding per tensor
            assert r["shard_dtypes"] == [dtype] and not r["requires_grad"] and not r["logits_grad_fn"]


def test_zero3_teacher_trains_the_student_like_a_whole_one(runs):
    full, zero3 = _rows(runs["dir"] / "full"), _rows(runs["dir"] / "zero3")
    assert "ZeRO-3 partitioned over 2 ranks" in runs["zero3"]
    assert sorted(full) == sorted(zero3) == list(range(1, STEPS + 1))
    for step in full:
        assert zero3[step]["kl"] == pytest.approx(full[step]["kl"], rel=0.05, abs=1e-3), step
        assert zero3[step]["hard_loss"] == pytest.approx(full[step]["hard_loss"], rel=1e-2), step


def test_resume_reproduces_every_logged_number(runs):
    full, resumed = _rows(runs["dir"] / "full"), _rows(runs["dir"] / "resumed")
    assert sorted(full) == sorted(resumed) == list(range(1, STEPS + 1))
    assert "resumed from" in runs["second"]
    for step in full:
        for key in ("loss", "kl", "hard_loss", "agreement"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-6, abs=1e-7), (step, key)
    for step in (2, 4):
        for key in ("val/top1", "val/top5", "val/loss", "val/agreement", "val/teacher_top1"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-6), (step, key)
    assert full[2]["val/teacher_top1"] == full[4]["val/teacher_top1"]  # the teacher never changed
    assert "val/agreement" not in full[1] and full[1]["kl"] > 1e-3


def test_artifact_holds_the_student_only(runs):
    from giant.interop import load_weights
    from giant.models import VideoClassifier

    run = runs["dir"] / "full"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "distill" and summary["reason"] == "completed"
    assert summary["teacher"] == str(runs["teacher"]) and summary["teacher_precision"] == "bf16"
    state, info = load_weights(run)
    assert info["kind"] == "distill" and (info["model"]["depth"], info["model"]["embed_dim"]) == (1, 64)
    model = VideoClassifier(ModelConfig(**info["model"]))
    assert set(state) == set(model.state_dict())  # no teacher tensor in the checkpoint
    model.load_state_dict(state, strict=True)
    meta = json.loads((run / "checkpoints" / "step_00000004" / "giant_meta.json").read_text())
    assert meta["kind"] == "distill" and meta["distill"]["temperature"] == 2.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"train/kl", "train/agreement", "train/hard_loss", "val/agreement", "val/top1"} <= set(acc.Tags()["scalars"])


def test_bench_distillation_mode(tmp_path):
    from giant.flops import count

    cmd = [sys.executable, "-m", "giant.cli", "bench", "--model", "tiny", "--teacher", "tiny", "--frames", "4",
           "--img-size", "32", "--batch", "2", "--steps", "2", "--warmup", "1", "--classes", "4",
           "--teacher-precision", "bf16", "--json", "model.depth=1"]
    proc = run_captured(cmd, 300, cwd=tmp_path, env=env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["teacher"] == "tiny" and r["teacher_precision"] == "bf16" and r["steps"] == 2
    assert 0 < r["teacher_s_per_step"] < 1 / r["steps_per_s"] and 0 < r["teacher_share"] < 1
    teacher = count(ModelConfig(name="tiny", num_frames=4, img_size=32, num_classes=4), "finetune")
    student = count(ModelConfig(name="tiny", depth=1, num_frames=4, img_size=32, num_classes=4), "finetune")
    assert r["teacher_flops_per_clip"] == teacher["flops"]  # the teacher keeps its own depth
    assert r["train_flops_per_clip"] == student["train_flops"] + teacher["flops"]
