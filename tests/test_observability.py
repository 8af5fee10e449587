"""Observability: loader wait and ETA per step (real DeepSpeed steps on a sleeping and an instant
batch source), the profiler window, TensorBoard hyper-parameters in the run's own event file,
per-class validation top-1 (exact, on handmade predictions), log lines through the progress
bar, and one real 1-rank fine-tune whose metrics.jsonl / val_per_class.json / trace carry it all."""
from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from _launch import REPO, env, run_captured, tail

SLEEP_S, ACCUM, STEPS = 0.15, 2, 4

# One process, one rank, two real engines: the same steps fed by an instant and a sleeping source.
WORKER = f"""
import json, sys, time
import torch
from giant.config import load_config
from giant.engine.deepspeed import build_engine, construct_model, init_distributed
from giant.engine.loop import LoopHooks, train_loop
from giant.models import resolve

cfg = load_config(None, ["model.name=tiny", "model.img_size=32", "model.num_frames=4", "model.num_classes=3",
                         "optim.batch_size=1", "optim.accum_steps={ACCUM}", "optim.total_steps={STEPS}",
                         "optim.warmup_steps=1", "stage.device=cpu", "precision.encoder=fp32"])
init_distributed(cfg)
x, y = torch.randn(1, 3, 4, 32, 32), torch.tensor([1])

def source(sleep):
    while True:
        time.sleep(sleep)
        yield {{"x": x, "y": y}}

out = {{}}
for name, sleep in (("instant", 0.0), ("sleeping", {SLEEP_S})):
    torch.manual_seed(0)
    engine, info = build_engine(construct_model(cfg, resolve(cfg.model), "classifier"), cfg, torch.device("cpu"))
    rows = []
    hooks = LoopHooks(save=lambda step: None, log_step=lambda step, s: rows.append(dict(s, step=step)))
    step_fn = lambda eng, b: (lambda logits: (torch.nn.functional.cross_entropy(logits.float(), b["y"]), logits))(eng(b["x"]))
    train_loop(engine, info.optim, source(sleep), step_fn, info.loss_scaler, hooks, 0, torch.device("cpu"))
    out[name] = rows
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("timing")
    proc = run_captured([sys.executable, "-c", WORKER, str(d / "out.json")], 300, cwd=REPO, env=env())
    assert proc.returncode == 0, tail(proc)
    return json.loads((d / "out.json").read_text())


def test_data_wait_is_the_loader_share_of_each_step(timed):
    instant, sleeping = timed["instant"], timed["sleeping"]
    assert [r["step"] for r in instant] == [r["step"] for r in sleeping] == list(range(1, STEPS + 1))
    for fast, slow in zip(instant, sleeping):
        # the sleeping source waits at least its sleep per micro-batch, summed over the accumulation
        assert ACCUM * SLEEP_S <= slow["data_wait_s"] <= slow["step_time_s"]
        assert slow["data_wait_share"] == pytest.approx(slow["data_wait_s"] / slow["step_time_s"], rel=1e-12)
        assert 0 <= fast["data_wait_share"] < slow["data_wait_share"] <= 1
        assert fast["data_wait_s"] < ACCUM * SLEEP_S


def test_eta_is_remaining_steps_times_the_wall_pace(timed):
    for rows in timed.values():
        for i, r in enumerate(rows):
            # wall time since the first step began covers every step's own time, and more
            floor = (STEPS - r["step"]) * sum(x["step_time_s"] for x in rows[:i + 1]) / (i + 1)
            assert r["eta_s"] >= floor * (1 - 1e-9)
        assert rows[-1]["eta_s"] == 0


def test_step_timer_counts_evaluations_and_saves_in_the_pace():
    from giant.engine.metrics import StepTimer

    timer = StepTimer(total_steps=10)
    # step 1 took 2 s and ended at t=12 (began at 10)
    assert timer.update(1, 2.0, 0.5, now=12.0) == {"data_wait_s": 0.5, "data_wait_share": 0.25, "eta_s": 18.0}
    timer.update(2, 2.0, 0.0, now=14.0)
    # an 8 s evaluation after step 2: step 3 ends at 24, so 14 s for 3 steps
    assert timer.update(3, 2.0, 1.0, now=24.0)["eta_s"] == pytest.approx(7 * 14.0 / 3)
    assert timer.update(10, 2.0, 0.0, now=30.0)["eta_s"] == 0


def _trace_steps(trace_dir: Path) -> tuple[list, dict]:
    traces = sorted(trace_dir.glob("*.pt.trace.json"))
    assert len(traces) == 1, traces
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = [e.get("name", "") for e in events]
    return sorted(int(n.split("#")[1]) for n in names if n.startswith("ProfilerStep#")), names


def test_profiler_covers_exactly_the_chosen_steps(tmp_path):
    from giant.engine.profile import StepProfiler

    prof = StepProfiler({"start": 2, "steps": 3}, tmp_path, torch.device("cpu"))
    prof.at(0)  # the loop starts at step 0
    a = torch.randn(64, 64)
    for step in range(1, 8):
        with torch.profiler.record_function(f"work_of_step_{step}"):
            a = (a @ a).tanh()
        prof.at(step)
    prof.close()
    steps, names = _trace_steps(tmp_path / "tensorboard" / "profile")
    assert steps == [3, 4, 5]
    assert sorted({n for n in names if n.startswith("work_of_step_")}) == [f"work_of_step_{s}" for s in (3, 4, 5)]


def test_profiler_off_and_resumed_past_its_window(tmp_path):
    from giant.engine.profile import StepProfiler

    for spec, start in (({}, 0), ({"start": 1, "steps": 2}, 5)):
        prof = StepProfiler(spec, tmp_path, torch.device("cpu"))
        for step in range(start, start + 4):
            prof.at(step)
        prof.close()
    assert not (tmp_path / "tensorboard" / "profile").exists()


def _accumulator(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_hparams_are_in_the_runs_own_event_file(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from giant.engine.metrics import MetricsLogger

    config = {"optim": {"lr": 0.001, "total_steps": 2, "betas": [0.9, 0.95], "clip_grad": None},
              "stage": {"name": "finetune"}, "logging": {"progress": False}}
    logger = MetricsLogger(tmp_path, progress=False, total_steps=2, config=config)
    logger.log_step(1, {"loss": 2.0})
    logger.log_step(2, {"loss": 1.5, "val/top1": 40.0})
    logger.close()
    tb = tmp_path / "tensorboard"
    assert [p for p in tb.iterdir() if p.is_dir()] == []  # no sub-run
    acc = _accumulator(tb)
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(m.name.tag for m in exp.metric_infos) == ["train/loss", "val/top1"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values == {"optim.lr": 0.001, "optim.total_steps": 2.0, "optim.betas": "[0.9, 0.95]",
                      "optim.clip_grad": "None", "stage.name": "finetune", "logging.progress": False}
    assert [e.value for e in acc.Scalars("train/loss")] == [2.0, 1.5]


def test_per_class_counts_and_table_exact():
    from giant.stages.finetune import class_counts, per_class_table

    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2, 2, 0])
    ok = torch.tensor([True, True, True, True, True, True, True, False])  # the last one unreadable
    counts = class_counts(pred, y, ok, 4)
    assert counts.tolist() == [[2, 1, 2, 0], [3, 2, 2, 0]]
    # two ranks: the sums over ranks make the table
    table = per_class_table((counts + class_counts(pred[:2], y[:2], ok[:2], 4)).flatten().tolist(),
                            ["left", "right", "up", "down"])
    assert table == [{"class": "left", "index": 0, "videos": 5, "top1": 80.0},
                     {"class": "right", "index": 1, "videos": 2, "top1": 50.0},
                     {"class": "up", "index": 2, "videos": 2, "top1": 100.0},
                     {"class": "down", "index": 3, "videos": 0, "top1": None}]
    assert [r["class"] for r in per_class_table([1, 0, 1, 1])] == ["0", "1"]


def test_per_class_goes_to_tensorboard_and_json(tmp_path):
    from giant.engine.metrics import MetricsLogger
    from giant.stages.driver import RunContext
    from giant.stages.finetune import per_class_table, publish_per_class

    metrics = MetricsLogger(tmp_path, progress=False)
    ctx = RunContext(cfg=None, model_cfg=None, rank=0, world=1, device=torch.device("cpu"), run_dir=tmp_path,
                     ds=None, metrics=metrics)
    publish_per_class(ctx, 3, per_class_table([1, 3, 0, 2, 4, 0], ["a b", "c", "d"]))
    publish_per_class(ctx, 6, per_class_table([2, 4, 0, 2, 4, 0], ["a b", "c", "d"]))
    metrics.close()
    acc = _accumulator(tmp_path / "tensorboard")
    assert sorted(t for t in acc.Tags()["scalars"] if t.startswith("val_per_class/")) == [
        "val_per_class/top1/a_b", "val_per_class/top1/c"]
    assert [(e.step, e.value) for e in acc.Scalars("val_per_class/top1/a_b")] == [(3, 50.0), (6, 100.0)]
    assert [(e.step, e.value) for e in acc.Scalars("val_per_class/top1/c")] == [(3, 75.0), (6, 100.0)]
    saved = json.loads((tmp_path / "val_per_class.json").read_text())
    assert saved["step"] == 6 and [r["top1"] for r in saved["classes"]] == [100.0, 100.0, None]


def test_log_lines_go_through_the_progress_bar(tmp_path, monkeypatch):
    """On a terminal the console handler writes through tqdm.write while the bar is drawn, and
    gets its own stream back when the logger closes."""
    from giant.engine import metrics as m

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    handler = logging.StreamHandler(tty)
    root = logging.getLogger()
    root.addHandler(handler)
    level = m.log.level
    m.log.setLevel(logging.INFO)  # setLevel: the logger's cached level checks are cleared too
    try:
        logger = m.MetricsLogger(tmp_path, report_to=[], log_every=1, total_steps=3)
        assert isinstance(handler.stream, m._BarStream)
        for step in (1, 2, 3):
            logger.log_step(step, {"loss": 1.0 / step, "data_wait_share": 0.25, "eta_s": 3725.0 * (3 - step)})
        logger.close()
    finally:
        root.removeHandler(handler)
        m.log.setLevel(level)
    assert handler.stream is tty
    lines = [line for line in tty.getvalue().replace("\r", "\n").splitlines() if "step " in line and "|" in line]
    assert "step 1/3 | loss 1 | data_wait_share 25.0% | eta 2:04:10" in lines
    assert "step 3/3 | loss 0.3333 | data_wait_share 25.0% | eta 0:00:00" in lines


# ----------------------------------------------------------------------------- a real run
def test_real_finetune_run_logs_wait_eta_per_class_and_profile(synth_videos, tmp_path):
    from test_finetune_stage import _pretrain_artifact, overrides

    init = _pretrain_artifact(tmp_path / "pretrained")
    run = tmp_path / "run"
    args = overrides(synth_videos, run, init, "checkpoint.every_steps=0", "logging.profile={start: 1, steps: 2}",
                     "precision.encoder=fp32")
    proc = run_captured([sys.executable, "launch/finetune.py", "--ds", "ds_configs/zero2.json", "--recipe",
                         "launch/recipes/demo_finetune.yaml", *args], 600, cwd=REPO, env=env())
    assert proc.returncode == 0, tail(proc)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert 0 <= r["data_wait_s"] <= r["step_time_s"] and 0 <= r["data_wait_share"] <= 1
        # the pace counts wall time (validation at step 2 included): never below the steps' own
        floor = (4 - r["step"]) * sum(x["step_time_s"] for x in rows[:r["step"]]) / r["step"]
        assert r["eta_s"] >= floor * (1 - 1e-9)
    saved = json.loads((run / "val_per_class.json").read_text())
    assert saved["step"] == 4 and [c["index"] for c in saved["classes"]] == [0, 1, 2, 3]
    videos = sum(c["videos"] for c in saved["classes"])
    assert videos == rows[-1]["val/videos"]
    right = sum(c["top1"] * c["videos"] / 100 for c in saved["classes"] if c["videos"])
    assert 100 * right / videos == pytest.approx(rows[-1]["val/top1"], rel=1e-9)
    acc = _accumulator(run / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"train/data_wait_s", "train/data_wait_share", "train/eta_s"} <= tags
    per_class = {t for t in tags if t.startswith("val_per_class/top1/")}
    assert per_class == {f"val_per_class/top1/{c['class']}" for c in saved["classes"] if c["videos"]}
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    steps, _ = _trace_steps(run / "tensorboard" / "profile")
    assert steps == [2, 3]
    assert "eta " in proc.stdout + proc.stderr and "data_wait_share" in proc.stdout + proc.stderr
