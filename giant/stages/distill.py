"""Distillation (VideoMAE V2 Table 16): a frozen teacher classifier teaches a student classifier.

`distill --teacher vitg --student vitb` (console script) = `giant distill ...` =
`deepspeed launch/distill.py --ds DS.json --recipe R.yaml [k=v ...]`. The student is this
stage's engine model (`model`, started from `checkpoint.init_from`, e.g. its own K710
post-pre-trained weights); everything about it is fine-tuning (FinetuneStage: data, Mixup/CutMix,
layer decay, validation, best top-1). The teacher (`distill.teacher`) is loaded once per process:
eval mode, no parameter requires grad, backbone in BF16/FP16 (`distill.teacher_precision`), not
in the optimizer and not in checkpoints (a resumed run reloads it from its path). It sees exactly
the student's (mixed) clip. Loss = T²·KL(softmax(t/T) ‖ softmax(s/T)) + hard_weight·CE(labels).
Logged per step: kl, hard_loss, agreement (teacher/student top-1 agree, %); at validation also
val/agreement and val/teacher_top1.

By default each rank holds a full low-precision copy of the teacher (ViT-g: 2 GB in BF16).
`distill.teacher_zero3=true` partitions it over the ranks with ZeRO-3 instead (built inside
zero.Init, an engine without an optimizer: DeepSpeed's ZeRO-Inference path), at the price of an
all-gather of every teacher layer per micro-step.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from giant.config import ModelConfig, RunConfig
from giant.errors import CheckpointError, ConfigError
from giant.stages.driver import GlobalFailures, RunContext
from giant.stages.finetune import FinetuneStage, validate
from giant.stages.teacher import (choose_teacher_precision, distill_loss, freeze_teacher, partition_teacher,
                                  teacher_logits)
from giant.stages.weights import classifier_state, pos_grid_for

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the teacher
def teacher_path(cfg: RunConfig) -> str:
    from giant.stages.inputs import check_teacher

    return check_teacher(cfg.distill.teacher)


def teacher_config(cfg: RunConfig, student: ModelConfig, info: dict, num_classes: int, path: str) -> ModelConfig:
    """The teacher's own architecture (model.json / inferred from the weights), fed the student's
    clips: its position table is resampled when it was trained on another grid."""
    from giant.models import resolve as resolve_model
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    art = {k: v for k, v in (info.get("model") or {}).items() if k in fields}
    want = cfg.distill.teacher_model.get("name")
    if want and art.get("name") and want != art["name"]:
        raise ConfigError(f"distill.teacher_model.name={want} (--teacher {want}) but {path} holds a "
                          f"{art['name']} (width {art.get('embed_dim')}, depth {art.get('depth')}); point "
                          "--teacher / distill.teacher at the right weights or drop the size")
    model = dataclasses.replace(ModelConfig(**art), num_classes=num_classes, drop_path_rate=0.0,
                                head_drop_rate=0.0, sampler="none", num_frames=student.num_frames,
                                img_size=student.img_size, pos_grid=None)
    geometry_known = not set(info.get("unknown") or ()) & {"num_frames", "img_size"}
    model = dataclasses.replace(model, **{"pos_grid": pos_grid_for(model, art if geometry_known else None),
                                          **cfg.distill.teacher_model})
    return resolve_model(model)


def _teacher_state(cfg: RunConfig, path: str, student_classes: int) -> tuple[dict, dict, int]:
    """(classifier state dict, model.json info, classes) with the head sliced by the row map."""
    from giant.artifact import read_rowmap, slice_head
    from giant.interop import load_weights

    state, info = load_weights(path)
    kind = info.get("kind", "finetune")
    state, _ = classifier_state(state, kind, keep_norm=info.get("model", {}).get("arch") == "maest")
    if "head.weight" not in state:
        raise ConfigError(f"distill.teacher={path} holds a {kind} model without a classifier head; distil "
                          "from a fine-tuned (or K710 post-pre-trained) classifier")
    rows_in_head = state["head.weight"].shape[0]
    if cfg.distill.head_rowmap:
        rows = read_rowmap(cfg.distill.head_rowmap, "distill.head_rowmap")
        slice_head(state, rows, f"distill.head_rowmap={cfg.distill.head_rowmap}", path)
    classes = state["head.weight"].shape[0]
    if classes != student_classes:
        fix = (f"distill.head_rowmap={cfg.distill.head_rowmap} selects {classes} rows"
               if cfg.distill.head_rowmap else
               f"give distill.head_rowmap=ROWS.json (a JSON list of {student_classes} teacher rows, e.g. "
               "`giant data k710 rowmap` for K710 → K400)")
        raise ConfigError(f"distill: the teacher {path} predicts {rows_in_head} classes, the student "
                          f"(model.num_classes) {student_classes}; they must share one class set — {fix}")
    return state, info, classes


def load_teacher(cfg: RunConfig, student: ModelConfig,
                 device: torch.device) -> tuple[torch.nn.Module, ModelConfig, str]:
    """(frozen teacher on `device`, its config, its precision). Every rank loads its own copy,
    or with distill.teacher_zero3 its ZeRO-3 share."""
    from giant.engine.deepspeed import load_state
    from giant.models import build_model

    path = teacher_path(cfg)
    state, info, classes = _teacher_state(cfg, path, student.num_classes)
    tcfg = teacher_config(cfg, student, info, classes, path)
    precision, why = choose_teacher_precision(cfg.distill.teacher_precision, device)
    params = sum(v.numel() for v in state.values())
    if cfg.distill.teacher_zero3:
        teacher = partition_teacher(lambda: build_model(tcfg, "classifier", init=False), state, precision, device,
                                    f"distill.teacher={path}")
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        held = f"ZeRO-3 partitioned over {world} ranks ({teacher.local_numel() / 1e6:.3g} M here)"
    else:
        teacher = build_model(tcfg, "classifier", init=False)  # every tensor comes from the file
        missing, unexpected = load_state(teacher, state)
        if missing or unexpected:
            raise CheckpointError(f"distill.teacher={path}: weights do not fit a {tcfg.name} classifier "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        freeze_teacher(teacher, precision, device, cfg.precision.cast)
        held = "whole on every rank"
    del state
    log.info("teacher %s from %s: %.3g M params, %s, %d classes, %s (%s); T=%g, hard_weight %g", tcfg.name,
             path, params / 1e6, held, classes, precision, why, cfg.distill.temperature, cfg.distill.hard_weight)
    return teacher, tcfg, precision


# ----------------------------------------------------------------------------- the stage
class StepStats:
    """kl, hard loss, agreeing clips, clips, micro-steps: summed on the device (no sync per
    micro-step), summed over ranks once per step when logged."""

    def __init__(self, device: torch.device):
        self.buf = torch.zeros(5, dtype=torch.float64, device=device)

    def add(self, kl: torch.Tensor, hard: torch.Tensor, agree: torch.Tensor, clips: int) -> None:
        self.buf[0] += kl.detach().double()
        self.buf[1] += hard.detach().double()
        self.buf[2] += agree.double()
        self.buf[3] += clips
        self.buf[4] += 1

    def collect(self) -> dict:
        total = self.buf.clone()
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        self.buf.zero_()
        kl, hard, agree, clips, micro = total.tolist()
        if not micro:
            return {}
        return {"kl": kl / micro, "hard_loss": hard / micro, "agreement": 100.0 * agree / clips}


class DistillStage(FinetuneStage):
    kind = "distill"
    model_kind = "classifier"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        teacher_path(cfg)  # fail before any process group or engine exists (run_stage checks all inputs)

    def init_weights(self, ctx: RunContext, model: torch.nn.Module) -> None:
        super().init_weights(ctx, model)  # the student: checkpoint.init_from
        self.teacher, self.teacher_cfg, self.teacher_precision = load_teacher(self.cfg, ctx.model_cfg, ctx.device)
        self.stats = StepStats(ctx.device)

    def teach(self, x: torch.Tensor) -> torch.Tensor:
        return teacher_logits(self.teacher, x)

    def step_fn(self, ctx: RunContext, failures: GlobalFailures) -> Callable:
        d = self.cfg.distill
        prepare, criterion = self.inputs(ctx)

        def step(engine: Any, batch: dict) -> tuple[torch.Tensor, Any]:
            failures.add(batch)
            x, y = prepare(batch)
            t = self.teach(x)  # the very clip the student sees
            s = engine(x).float()  # head output and losses in FP32
            kl = distill_loss(s, t, d.temperature)
            with torch.set_grad_enabled(d.hard_weight > 0):
                hard = criterion(s, y)
            loss = kl + d.hard_weight * hard if d.hard_weight > 0 else kl
            self.stats.add(kl, hard, (s.argmax(1) == t.argmax(1)).sum(), s.shape[0])
            return loss, s

        return step

    def scalars(self, ctx: RunContext, step: int) -> dict:
        return self.stats.collect()  # collective: every rank calls scalars every step

    def evaluate(self, ctx: RunContext, step: int) -> dict:
        if not self.cfg.data.val_manifest:
            return {}

        def probe(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, ok: torch.Tensor) -> dict:
            t = self.teach(x).argmax(1)
            return {"agreement": ((t == logits.argmax(1)) & ok).sum(), "teacher_top1": ((t == y) & ok).sum()}

        result = validate(ctx, self._val_loader(ctx), probe, ("agreement", "teacher_top1"), step=step)
        if "val/top1" in result:
            result["val/best_top1"] = self.best.update(result["val/top1"], step)
        return result

    @staticmethod
    def clip_flops(cfg: RunConfig, model_cfg: Any, teacher: Any = None) -> float:
        """The student's training step + the teacher's forward (eval mode, no backward)."""
        from giant.flops import count

        own = FinetuneStage.clip_flops(cfg, model_cfg)
        return own + (count(teacher, "finetune")["flops"] if teacher is not None else 0)

    def flops_per_clip(self, ctx: RunContext) -> float:
        return self.clip_flops(ctx.cfg, ctx.model_cfg, self.teacher_cfg)

    def meta(self, ctx: RunContext) -> dict:
        d = self.cfg.distill
        return {"distill": {"teacher": d.teacher, "teacher_model": self.teacher_cfg.name,
                            "teacher_precision": self.teacher_precision, "temperature": d.temperature,
                            "hard_weight": d.hard_weight, "head_rowmap": d.head_rowmap}}

    def finish(self, ctx: RunContext, art: dict) -> None:
        super().finish(ctx, art)
        art["teacher"] = self.cfg.distill.teacher
        art["teacher_precision"] = self.teacher_precision


def run(cfg: RunConfig) -> dict:
    from giant.stages.driver import run_stage

    return run_stage(DistillStage(cfg))
