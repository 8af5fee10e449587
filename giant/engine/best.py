"""The best evaluation of a run: which step it was, keeping its weights, and early stopping.

`BestMetric` follows one evaluation scalar (checkpoint.best_metric) and counts evaluations
without a real improvement (stage.early_stop); it rides in every checkpoint, so a resumed run
keeps the earlier best and its patience count. The stages keep one for val/best_top1 too.

`BestKeeper` is the driver's side. On an improving evaluation with checkpoint.export best|both
it saves that step's engine checkpoint *pinned*: an ordinary step_N checkpoint that
checkpoints/best names, which pruning never removes (engine/checkpoint.py). Why a checkpoint and
not a consolidated export at each improvement: the save is the same collective, atomic
tmp-then-rename save every rank already does for any ZeRO stage (ZeRO-3 included, gloo or NCCL)
and needs no in-process gather of sharded fp32 master weights; the end of the run then exports
it once with zero_to_fp32, exactly like the last step (the same fp32 weights, one consolidation
instead of one per improvement). The cost is disk: one extra full checkpoint while it is not
among the newest keep_last.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from giant.engine.checkpoint import META, latest_tag, tag_for
from giant.engine.export import export_weights
from giant.engine.loop import LoopResult
from giant.errors import ConfigError

log = logging.getLogger(__name__)

EARLY_STOP = "early_stop"
DONE_REASONS = ("completed", EARLY_STOP)  # a run that ended so exports (registry.py says the same)


def resolve_mode(metric: str, mode: str) -> str:
    """auto: lower is better for a loss, higher for anything else (accuracy)."""
    if mode == "auto":
        return "min" if "loss" in metric else "max"
    return mode


class BestMetric:
    """Best value of one scalar so far and its step (a strict improvement moves it), and
    `wait`: evaluations since the last improvement by more than `min_delta` (early stopping
    compares with the value of that improvement, so many tiny gains do not reset it)."""

    def __init__(self, metric: str = "val/top1", mode: str = "max", min_delta: float = 0.0):
        self.metric, self.mode, self.min_delta = metric, resolve_mode(metric, mode), float(min_delta)
        self.sign = 1.0 if self.mode == "max" else -1.0
        self.best = self.anchor = -self.sign * math.inf
        self.step = self.wait = 0
        self.improved = False  # whether the last update moved the best

    @property
    def seen(self) -> bool:
        return math.isfinite(self.best)

    def update(self, value: float, step: int) -> float:
        """One evaluation's value (a NaN or inf never improves) → the best so far."""
        value = float(value)
        finite = math.isfinite(value)
        self.improved = finite and self.sign * (value - self.best) > 0
        if self.improved:
            self.best, self.step = value, step
        if finite and self.sign * (value - self.anchor) > self.min_delta:
            self.anchor, self.wait = value, 0
        else:
            self.wait += 1
        return self.best

    def summary(self) -> Optional[dict]:
        return {"metric": self.metric, "value": self.best, "step": self.step} if self.seen else None

    def state_dict(self) -> dict:
        return {"best": self.best, "step": self.step, "anchor": self.anchor, "wait": self.wait,
                "metric": self.metric, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint of another metric or mode (the recipe changed) starts the count afresh;
        older checkpoints hold only best and step (of val/top1, max)."""
        if (state.get("metric", "val/top1"), state.get("mode", "max")) != (self.metric, self.mode):
            log.warning("the checkpoint tracked %s (%s), this run %s (%s): best and patience start afresh",
                        state.get("metric", "val/top1"), state.get("mode", "max"), self.metric, self.mode)
            return
        self.best, self.step = float(state["best"]), int(state["step"])
        self.anchor, self.wait = float(state.get("anchor", self.best)), int(state.get("wait", 0))


class BestKeeper:
    """checkpoint.export / best_metric / best_mode and stage.early_stop for the driver."""

    def __init__(self, cfg: Any, device: torch.device):
        ck, st = cfg.checkpoint, cfg.stage
        self.export_mode, self.patience = ck.export, st.early_stop
        self.tracker = BestMetric(ck.best_metric, ck.best_mode, st.early_stop_min_delta)
        self.device = device

    @property
    def acting(self) -> bool:
        return self.export_mode != "last" or self.patience > 0

    def judge(self, step: int, result: dict, save: Callable[..., Optional[str]]) -> tuple[Optional[str], bool]:
        """After an evaluation (collective: every rank, same step) → (path of a pinned save made
        now, or None; whether to stop early). Rank 0's value decides on every rank: the save and
        the stop must be agreed, and one tiny broadcast makes that independent of whether the
        ranks' floating-point results agree to the last bit (validate's all-reduce gives each
        rank the same sums already)."""
        value = self._agreed(result)
        if value is None:
            return None, False
        self.tracker.update(value, step)  # before the save: the pinned checkpoint knows it is the best
        saved = save(step, True) if self.tracker.improved and self.export_mode != "last" else None
        stop = self.patience > 0 and self.tracker.wait >= self.patience
        if stop:
            log.info("early stop at step %d: %s has not improved by more than %g for %d evaluations "
                     "(best %.6g at step %d)", step, self.tracker.metric, self.tracker.min_delta,
                     self.tracker.wait, self.tracker.best, self.tracker.step)
        return saved, stop

    def _agreed(self, result: dict) -> Optional[float]:
        metric = self.tracker.metric
        evaluated = any(k != "val/unreadable" for k in result)  # nothing readable: not an evaluation
        buf = torch.tensor([float(metric in result), float(result.get(metric, 0.0)), float(evaluated)],
                           dtype=torch.float64, device=self.device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.broadcast(buf, src=0)
        present, value, evaluated = buf.tolist()
        if present:
            return value
        if evaluated and self.acting:  # every rank raises at this step
            raise ConfigError(f"checkpoint.best_metric={metric}: the evaluation reports "
                              f"{', '.join(sorted(result)) or 'nothing'}; name one of them")
        return None

    def resumed_stop(self, start: int) -> Optional[LoopResult]:
        """A relaunch of a run that already stopped early (same patience) does not train on."""
        if self.patience > 0 and start > 0 and self.tracker.wait >= self.patience:
            log.info("this run stopped early at step %d (%s best %.6g at step %d): exporting again",
                     start, self.tracker.metric, self.tracker.best, self.tracker.step)
            return LoopResult(steps_done=start, reason=EARLY_STOP)
        return None

    def export(self, root: Path, run_dir: Path, provenance: dict) -> dict:
        """Rank 0, at the end: RUN_DIR/weights.safetensors + model.json from the best step (best,
        both) or the last (last, or no evaluation gave a value); `both` adds RUN_DIR/last/.
        The run wrote these checkpoints moments ago: trusted (see driver._finish)."""
        best = self._best_tag(root)
        extra = {"best": self.tracker.summary()} if best else {}
        weights, model_json = export_weights(root, run_dir, tag=best, trust_pickle=True,
                                             provenance={**provenance, "export": "best" if best else "last",
                                                         **extra})
        out = {"weights": str(weights), "model_json": str(model_json), "exported": "best" if best else "last"}
        if self.export_mode == "both":
            weights, model_json = export_weights(root, run_dir / "last", trust_pickle=True,
                                                 provenance={**provenance, "export": "last"})
            out.update(last_weights=str(weights), last_model_json=str(model_json))
        return out

    def _best_tag(self, root: Path) -> Optional[str]:
        if self.export_mode == "last" or not self.tracker.seen:
            return None
        tag = tag_for(self.tracker.step)
        if (root / tag / META).is_file():
            return tag
        log.warning("the best step's checkpoint %s is gone (resumed from an older checkpoint?); "
                    "exporting the last step, %s, instead", root / tag, latest_tag(root))
        return None


def check_evaluates(cfg: Any, kind: str, evaluates: bool) -> None:
    """A stage kind without evaluation (pre-training) cannot export its best or stop early."""
    if evaluates or (cfg.checkpoint.export == "last" and cfg.stage.early_stop == 0):
        return
    raise ConfigError(f"checkpoint.export={cfg.checkpoint.export}, stage.early_stop={cfg.stage.early_stop}: "
                      f"a {kind} stage has no evaluation to pick the best step from; set "
                      "checkpoint.export=last and stage.early_stop=0")
