"""Fine-tuning and multi-view evaluation end to end on real decoded videos, 2 CPU ranks (gloo,
ZeRO-2, BF16 backbone): a pre-training artifact starts the classifier, validation runs during
training, an interrupted-then-resumed fine-tune reproduces the uninterrupted losses and
validation numbers, and 2-rank evaluation equals 1-rank evaluation exactly."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from _launch import REPO, env, run_captured, tail, torchrun
from giant.models import resolve as resolve_model

STEPS = 4


def _pretrain_artifact(out: Path) -> Path:
    from safetensors.torch import save_file

    from giant.config import ModelConfig
    from giant.models import build_model

    torch.manual_seed(0)
    cfg = resolve_model(ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=4))
    model = build_model(cfg, "pretrain")
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
    (out / "model.json").write_text(json.dumps({"kind": "pretrain", "model": cfg.__dict__}))
    return out


def overrides(synth, run_dir: Path, init: Path, *extra: str) -> list[str]:
    return [f"data.manifest={synth.train_manifest}", f"data.val_manifest={synth.val_manifest}",
            f"stage.run_dir={run_dir}", f"checkpoint.init_from={init}", "model.num_frames=4",
            "data.num_sample=2", "data.num_workers=1", "optim.batch_size=2", f"optim.total_steps={STEPS}",
            "optim.warmup_steps=1", "checkpoint.every_steps=2", "stage.eval_every=2",
            "finetune.mixup=0.8", "finetune.cutmix=1.0", "data.rand_augment=rand-m7-n4-mstd0.5-inc1",
            "data.reprob=0.25", "precision.encoder=bf16", "logging.progress=false", "logging.log_every=1",
            *extra]


def finetune(synth, run_dir: Path, init: Path, *extra: str):
    return torchrun("launch/finetune.py", "--ds", "ds_configs/zero2.json", "--recipe",
                    "launch/recipes/demo_finetune.yaml", *overrides(synth, run_dir, init, *extra))


def rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


@pytest.fixture(scope="module")
def runs(synth_videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    init = _pretrain_artifact(d / "pretrained")
    full = finetune(synth_videos, d / "full", init)
    assert full.returncode == 0, tail(full)
    first = finetune(synth_videos, d / "resumed", init, "stage.stop_after=2")
    assert first.returncode == 0, tail(first)
    second = finetune(synth_videos, d / "resumed", init)
    assert second.returncode == 0, tail(second)
    return {"dir": d, "init": init, "log": full.stdout + full.stderr, "second": second.stdout + second.stderr}


def test_resume_reproduces_losses_and_validation(runs, synth_videos):
    num_val = len(Path(synth_videos.val_manifest).read_text().splitlines()) - 1  # header
    full, resumed = rows(runs["dir"] / "full"), rows(runs["dir"] / "resumed")
    assert sorted(full) == sorted(resumed) == list(range(1, STEPS + 1))
    assert "resumed from" in runs["second"]
    for step in full:
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-6, abs=1e-7), step
    for step in (2, 4):  # stage.eval_every=2 (and the last step)
        for key in ("val/top1", "val/top5", "val/loss"):
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-6), (step, key)
        assert full[step]["val/videos"] == num_val and full[step]["val/unreadable"] == 0  # each val video once
    assert "val/top1" not in full[1] and "val/top1" not in full[3]
    best = max(full[2]["val/top1"], full[4]["val/top1"])
    assert full[4]["val/best_top1"] == resumed[4]["val/best_top1"] == best  # kept across the resume


def test_artifacts_init_report_and_precision(runs):
    run = runs["dir"] / "full"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "finetune" and summary["reason"] == "completed"
    assert summary["best_val_top1"] == max(rows(run)[s]["val/top1"] for s in (2, 4))
    assert summary["init_report"] == {"loaded": 28, "missing": 4, "dropped": 21}
    assert "init_from" in runs["log"] and "missing (initialised fresh)" in runs["log"]
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["giant"]["encoder_precision"] == "bf16" and ds["train_batch_size"] == 8
    from giant.interop import load_weights
    from giant.models import VideoClassifier
    from giant.config import ModelConfig

    state, info = load_weights(run)
    assert info["kind"] == "finetune" and state["head.weight"].shape == (4, 96)
    VideoClassifier(ModelConfig(**info["model"])).load_state_dict(state, strict=True)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"val/top1", "val/top5", "train/loss"} <= set(acc.Tags()["scalars"])


def _evaluate(run_dir: Path, out: Path, nproc: int, *extra: str):
    args = [str(run_dir), "--out", str(out), "data.test_temporal_views=2", "data.test_spatial_views=3",
            "data.num_workers=1", *extra]
    if nproc == 1:
        return run_captured([sys.executable, "launch/evaluate.py", *args], 300, cwd=REPO, env=env())
    return torchrun("launch/evaluate.py", *args, nproc=nproc)


def test_two_rank_evaluation_equals_one_rank(runs, synth_videos, corrupt_videos, tmp_path):
    test_csv = tmp_path / "test.csv"
    lines = Path(synth_videos.val_manifest).read_text().splitlines()
    root = Path(synth_videos.val_manifest).parent
    body = [line.split(",") for line in lines[1:]]
    rows_ = [f"{root / p},{y}" for p, y, *_ in body] + [f"{corrupt_videos['garbage']},1"]
    test_csv.write_text("path,label\n" + "\n".join(rows_) + "\n")
    results = []
    for n in (1, 2):  # the 2-rank run compared with the 1-rank one through --reference
        ref = ["--reference", str(tmp_path / "eval1")] if n == 2 else []
        proc = _evaluate(runs["dir"] / "full", tmp_path / f"eval{n}", n, f"data.test_manifest={test_csv}",
                         "data.root=", *ref)
        assert proc.returncode == 0, tail(proc)
        results.append((json.loads((tmp_path / f"eval{n}" / "results.json").read_text()),
                        list(csv.reader((tmp_path / f"eval{n}" / "predictions.csv").open()))))
    (one, pred1), (two, pred2) = results
    assert pred1 == pred2  # every video once, same scores to the printed digit
    for key in ("top1", "top5", "top1_all", "videos", "unreadable", "per_class_top1", "confusion"):
        assert one[key] == two[key], key
    assert (one["videos"], one["unreadable"], one["views"]) == (len(body) + 1, 1, 6)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert "agreement_top1" not in one and two["reference"] == str(tmp_path / "eval1")
    assert (two["agreement_top1"], two["reference_videos"]) == (100.0, len(body))  # the readable ones
    assert two["kl_from_reference"] == pytest.approx(0, abs=1e-6)
    assert (tmp_path / "eval2" / "confusion.png").stat().st_size > 0
    unreadable = [r for r in pred1[1:] if r[-1] == "0"]
    assert len(unreadable) == 1 and unreadable[0][1].endswith("garbage.mp4")


def test_evaluation_user_error_leaves_an_error_marker(runs, tmp_path):
    """A batch script must not requeue an evaluation a person has to fix: exit 2 and OUT/ERROR
    naming the bad setting (env.sh reads it)."""
    missing = tmp_path / "nope.csv"
    (tmp_path / "out").mkdir()  # as the batch script's RUN_DIR; an --out that does not exist stays so
    proc = _evaluate(runs["dir"] / "full", tmp_path / "out", 1, f"data.test_manifest={missing}")
    assert proc.returncode == 2, tail(proc)
    assert str(missing) in (tmp_path / "out" / "ERROR").read_text()
