"""checkpoint.export best|both and stage.early_stop: the tracker's rule (max/min/auto, min_delta,
patience, resume state), the pinned checkpoint surviving pruning, and one real 2-rank DeepSpeed
fine-tune on CPU (gloo, ZeRO-2) that peaks before its end, is interrupted, resumed, stops early
and is relaunched: RUN_DIR holds the best step's weights, RUN_DIR/last/ the last step's, and the
pipeline counts it done."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from _launch import tail, torchrun
from giant.config import load_config
from giant.engine.best import BestKeeper, BestMetric, check_evaluates, resolve_mode
from giant.engine.checkpoint import BEST, META, CheckpointManager, pinned_tag, tag_for
from giant.errors import ConfigError
from giant.stages.registry import KINDS
from test_finetune_stage import _pretrain_artifact, overrides, rows

RECIPE = "launch/recipes/demo_finetune.yaml"


# ----------------------------------------------------------------------------- the tracker
def test_modes_and_strict_improvement():
    assert (resolve_mode("val/top1", "auto"), resolve_mode("val/loss", "auto")) == ("max", "min")
    assert resolve_mode("val/loss", "max") == "max"
    up = BestMetric("val/top1", "auto")
    assert up.summary() is None and not up.seen
    for step, value in ((1, 50.0), (2, 75.0), (3, 75.0), (4, float("nan")), (5, 60.0)):
        up.update(value, step)
    assert (up.best, up.step, up.wait, up.improved) == (75.0, 2, 3, False)  # a tie is no improvement
    down = BestMetric("val/loss", "auto")
    for step, value in ((1, 2.0), (2, 1.5), (3, 1.7), (4, float("inf"))):
        down.update(value, step)
    assert down.summary() == {"metric": "val/loss", "value": 1.5, "step": 2} and down.wait == 2


def test_min_delta_counts_from_the_last_real_improvement():
    t = BestMetric("val/top1", "max", min_delta=1.0)
    waits = []
    for step, value in enumerate((10.0, 10.5, 11.0, 11.5, 12.5), start=1):
        t.update(value, step)
        waits.append(t.wait)
    # 10.5, 11.0 are within 1.0 of 10 (the anchor); 11.5 is > 1.0 above it; 12.5 not > 1 above 11.5
    assert waits == [0, 1, 2, 0, 1]
    assert (t.best, t.step) == (12.5, 5)  # the exported best follows every strict improvement


def test_state_round_trip_and_older_states():
    t = BestMetric("val/loss", "min", 0.1)
    for step, value in ((2, 1.0), (4, 0.95), (6, 1.2)):
        t.update(value, step)
    again = BestMetric("val/loss", "min", 0.1)
    again.load_state_dict(t.state_dict())
    assert (again.best, again.step, again.anchor, again.wait) == (0.95, 4, 1.0, 2)
    old = BestMetric()  # a checkpoint from before this module: val/top1, max, best and step only
    old.load_state_dict({"best": 62.5, "step": 8})
    assert (old.best, old.step, old.anchor, old.wait) == (62.5, 8, 62.5, 0)
    other = BestMetric("val/top5", "max")  # the recipe changed its metric: start afresh
    other.load_state_dict(t.state_dict())
    assert other.summary() is None and other.wait == 0


def _cfg(*extra: str):
    return load_config(RECIPE, ["stage.eval_every=1", *extra])


def test_keeper_pins_improvements_and_stops_after_patience():
    keeper = BestKeeper(_cfg("checkpoint.export=best", "stage.early_stop=2"), torch.device("cpu"))
    saves = []

    def save(step, pin=False):
        saves.append((step, pin))
        return f"ckpt{step}"

    verdicts = [keeper.judge(step, {"val/top1": v, "val/loss": 1.0}, save)
                for step, v in ((1, 25.0), (2, 50.0), (3, 50.0), (4, 25.0))]
    assert verdicts == [("ckpt1", False), ("ckpt2", False), (None, False), (None, True)]
    assert saves == [(1, True), (2, True)]
    assert keeper.resumed_stop(4).reason == "early_stop" and keeper.resumed_stop(0) is None
    assert keeper.judge(5, {"val/unreadable": 4.0}, save) == (None, False)  # nothing was read
    with pytest.raises(ConfigError, match=r"checkpoint.best_metric=val/top1: .*val/loss"):
        keeper.judge(6, {"val/loss": 1.0}, save)
    quiet = BestKeeper(_cfg(), torch.device("cpu"))  # export=last, no early stop: only tracks
    assert quiet.judge(1, {"val/loss": 1.0}, save) == (None, False)
    assert quiet.judge(2, {"val/top1": 30.0}, save) == (None, False) and len(saves) == 2
    assert quiet.tracker.summary() == {"metric": "val/top1", "value": 30.0, "step": 2}


def test_config_errors_name_the_keys():
    cases = {("checkpoint.export=bogus",): "checkpoint.export='bogus': use last, best or both",
             ("checkpoint.best_mode=up",): "checkpoint.best_mode='up': use auto, max or min",
             ("stage.early_stop=-1",): "stage.early_stop=-1",
             ("stage.eval_every=0", "stage.early_stop=3"): "set stage.eval_every > 0",
             ("data.val_manifest=", "checkpoint.export=both"): "set data.val_manifest"}
    for extra, said in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(RECIPE, list(extra))
        assert said in str(err.value) and "\n" not in str(err.value), extra
    assert load_config(RECIPE).checkpoint.export == "last" and load_config(RECIPE).stage.early_stop == 0
    with pytest.raises(ConfigError, match="a pretrain stage has no evaluation"):
        check_evaluates(_cfg("checkpoint.export=best"), "pretrain", evaluates=False)
    check_evaluates(_cfg("checkpoint.export=best"), "finetune", evaluates=True)


def test_pruning_spares_the_pinned_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        (root / tag_for(step)).mkdir(parents=True)
        (root / tag_for(step) / META).write_text("{}")
    (root / BEST).write_text(tag_for(2))
    CheckpointManager(root, keep_last=1)._prune(keep=tag_for(5))
    assert sorted(p.name for p in root.iterdir()) == [BEST, tag_for(2), tag_for(5)]
    assert pinned_tag(root) == tag_for(2)
    (root / BEST).write_text("../elsewhere")  # not a tag name: pins nothing
    assert pinned_tag(root) is None


def test_registry_counts_an_early_stop_as_done(tmp_path):
    for name in ("weights.safetensors", "model.json"):
        (tmp_path / name).write_text("x")
    for reason, done in (("early_stop", True), ("completed", True), ("stop_after", False), ("signal:SIGTERM", False)):
        (tmp_path / "summary.json").write_text(json.dumps({"reason": reason}))
        assert KINDS["finetune"].done(tmp_path) is done, reason


# ----------------------------------------------------------------------------- a real run
STEPS, PATIENCE, STOP_AFTER = 10, 3, 4
# every step: evaluated, checkpointed (so the pin must survive keep_last=1 pruning at every step)
COMMON = (f"optim.total_steps={STEPS}", "stage.eval_every=1", "checkpoint.every_steps=1")


def _launch(synth, run_dir: Path, init: Path, *extra: str):
    proc = torchrun("launch/finetune.py", "--ds", "ds_configs/zero2.json", "--recipe", RECIPE,
                    *overrides(synth, run_dir, init, *COMMON, *extra))
    assert proc.returncode == 0, tail(proc)
    return proc


def _expected(values: dict[int, float], patience: int) -> tuple[int, int]:
    """(best step, stop step) of a max metric by the rule, written out independently."""
    best, best_step, waits = -math.inf, 0, 0
    for step in sorted(values):
        if values[step] > best:
            best, best_step, waits = values[step], step, 0
        else:
            waits += 1
            if waits == patience:
                return best_step, step
    return best_step, max(values)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _at(run_dir: Path, step: int) -> dict:
    from giant.engine.export import consolidated_state_dict

    return consolidated_state_dict(run_dir / "checkpoints", tag_for(step), trust_pickle=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.fixture(scope="module")
def runs(synth_videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("best")
    init = _pretrain_artifact(d / "pretrained")
    # the reference: the whole schedule, every step's checkpoint kept, export=last
    _launch(synth_videos, d / "ref", init, f"checkpoint.keep_last={STEPS}")
    best = d / "best"
    keys = ("checkpoint.export=both", f"stage.early_stop={PATIENCE}", "checkpoint.keep_last=1")
    first = _launch(synth_videos, best, init, *keys, f"stage.stop_after={STOP_AFTER}")
    summary_first = json.loads((best / "summary.json").read_text())
    second = _launch(synth_videos, best, init, *keys)
    summary = json.loads((best / "summary.json").read_text())
    weights = _weights(best / "weights.safetensors")
    third = _launch(synth_videos, best, init, *keys)  # relaunch of a run that stopped early
    return {"dir": d, "ref": d / "ref", "best": best, "first": summary_first, "summary": summary,
            "weights": weights, "log": first.stderr + second.stderr, "third": third.stdout + third.stderr,
            "relaunched": json.loads((best / "summary.json").read_text())}


def test_exports_the_best_step_and_the_last_one(runs):
    ref, best = rows(runs["ref"]), rows(runs["best"])
    want_best, want_stop = _expected({s: r["val/top1"] for s, r in ref.items()}, PATIENCE)
    assert want_best < STOP_AFTER < want_stop < STEPS  # the scenario: a peak, a resume, an early stop
    summary = runs["summary"]
    assert (summary["reason"], summary["steps"], summary["exported"]) == ("early_stop", want_stop, "best")
    assert summary["best"] == {"metric": "val/top1", "value": ref[want_best]["val/top1"], "step": want_best}
    assert sorted(best) == list(range(1, want_stop + 1))  # ended at exactly that step
    for step in best:  # the interrupted-then-resumed run is the reference's run up to there
        assert best[step]["val/top1"] == ref[step]["val/top1"], step
    # the pinned best survived keep_last=1 at every later step; the last step's checkpoint is there
    ckpts = runs["best"] / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == [tag_for(want_best), tag_for(want_stop)]
    assert pinned_tag(ckpts) == tag_for(want_best) and (ckpts / "latest").read_text() == tag_for(want_stop)
    exported, last = runs["weights"], _weights(runs["best"] / "last" / "weights.safetensors")
    assert _same(exported, _at(runs["best"], want_best)) and _same(last, _at(runs["best"], want_stop))
    assert _same(exported, _at(runs["ref"], want_best))  # before the interruption: bit for bit
    assert not _same(exported, last)
    model = json.loads((runs["best"] / "model.json").read_text())["provenance"]
    assert (model["step"], model["export"], model["best"]["step"]) == (want_best, "best", want_best)
    last_model = json.loads((runs["best"] / "last" / "model.json").read_text())["provenance"]
    assert (last_model["step"], last_model["export"]) == (want_stop, "last")
    assert "early stop at step %d" % want_stop in runs["log"]


def test_stop_after_is_partial_and_the_reference_exports_last(runs):
    first = runs["first"]
    assert (first["reason"], first["steps"], first["exported"]) == ("stop_after", STOP_AFTER, None)
    assert first["best"]["step"] < STOP_AFTER
    ref = json.loads((runs["ref"] / "summary.json").read_text())
    assert (ref["reason"], ref["exported"], ref["steps"]) == ("completed", "last", STEPS)
    assert not (runs["ref"] / "checkpoints" / BEST).exists() and not (runs["ref"] / "last").exists()
    assert _same(_weights(runs["ref"] / "weights.safetensors"), _at(runs["ref"], STEPS))
    assert ref["best"]["step"] == max(rows(runs["ref"]).items(), key=lambda kv: (kv[1]["val/top1"], -kv[0]))[0]


def test_relaunch_after_early_stop_trains_no_further_and_is_done(runs):
    again, summary = runs["relaunched"], runs["summary"]
    assert (again["reason"], again["steps"], again["best"]) == ("early_stop", summary["steps"], summary["best"])
    assert "stopped early at step" in runs["third"]
    assert sorted(rows(runs["best"])) == list(range(1, summary["steps"] + 1))  # no step was added
    assert _same(_weights(runs["best"] / "weights.safetensors"), runs["weights"])
    assert KINDS["finetune"].done(runs["best"])


def test_giant_export_tag_best_writes_the_pinned_step(runs, tmp_path):
    """`giant export RUN --tag best` consolidates the pinned checkpoint; a run without one is one line."""
    from giant.commands.export import main as export_main
    from giant.errors import CheckpointError

    assert export_main([str(runs["best"]), "--tag", "best", "--out", str(tmp_path / "b")]) == 0
    assert _same(_weights(tmp_path / "b" / "weights.safetensors"), runs["weights"])
    with pytest.raises(CheckpointError, match=r"no best checkpoint pinned .*checkpoint.export=best or both"):
        export_main([str(runs["ref"]), "--tag", "best", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
