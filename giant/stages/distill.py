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

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from giant.config import ModelConfig, RunConfig
from giant.console import ArgumentParser, fail, nonnegative_int
from giant.engine.safe_load import TRUST_NOTE
from giant.engine.teacher import (choose_teacher_precision, distill_loss, freeze_teacher, partition_teacher,
                                  teacher_logits)
from giant.errors import CheckpointError, ConfigError, GiantError
from giant.stages.driver import GlobalFailures, RunContext, check_weights, setup_logging, stage_main
from giant.stages.finetune import FinetuneStage, validate
from giant.stages.weights import artifact_model, classifier_state, pos_grid_for

log = logging.getLogger(__name__)

PROG = "giant distill"  # also the `distill` script's and launch/distill.py's: one command, one prefix
DEFAULT_RECIPE = "launch/recipes/distill_vitg_to_vitb_k710.yaml"
# model.* fields a `--student PATH` takes from the artifact's model.json (the architecture; the
# input geometry and class count stay the recipe's)
STUDENT_FIELDS = ("name", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "tubelet_size", "arch")


# ----------------------------------------------------------------------------- the teacher
def teacher_path(cfg: RunConfig) -> str:
    path = cfg.distill.teacher
    where = ("a giant run dir / weights.safetensors of a fine-tuned classifier, an official VideoMAE / "
             "V2 checkpoint or a Hugging Face VideoMAE directory")
    if not path:
        raise ConfigError(f"distill.teacher is empty: a teacher without weights teaches nothing; give "
                          f"--teacher PATH or distill.teacher=PATH ({where})")
    if not Path(path).exists():
        raise ConfigError(f"distill.teacher={path} does not exist; point --teacher / distill.teacher at {where}")
    check_weights("distill.teacher", path)
    return path


def read_rowmap(path: str, rows_in_head: int) -> list[int]:
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"distill.head_rowmap={path}: cannot read a JSON list of rows ({exc}); "
                          "write one with `giant data k710 rowmap`") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, int) and r >= 0 for r in rows):
        raise ConfigError(f"distill.head_rowmap={path}: expected a JSON list of teacher head rows (integers >= 0)")
    if max(rows) >= rows_in_head:
        raise ConfigError(f"distill.head_rowmap={path}: row {max(rows)} but the teacher's head has "
                          f"{rows_in_head} rows")
    return rows


def teacher_config(cfg: RunConfig, student: ModelConfig, info: dict, num_classes: int, path: str) -> ModelConfig:
    """The teacher's own architecture (model.json / inferred from the weights), fed the student's
    clips: its position table is resampled when it was trained on another grid."""
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
    return model.resolved()


def _teacher_state(cfg: RunConfig, path: str, student_classes: int) -> tuple[dict, dict, int]:
    """(classifier state dict, model.json info, classes) with the head sliced by the row map."""
    from giant.engine.checkpoint import load_weights

    state, info = load_weights(path)
    kind = info.get("kind", "finetune")
    state, _ = classifier_state(state, kind, keep_norm=info.get("model", {}).get("arch") == "maest")
    if "head.weight" not in state:
        raise ConfigError(f"distill.teacher={path} holds a {kind} model without a classifier head; distil "
                          "from a fine-tuned (or K710 post-pre-trained) classifier")
    rows_in_head = state["head.weight"].shape[0]
    if cfg.distill.head_rowmap:
        rows = torch.tensor(read_rowmap(cfg.distill.head_rowmap, rows_in_head))
        state["head.weight"], state["head.bias"] = state["head.weight"][rows], state["head.bias"][rows]
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
    description = "Distillation: a frozen teacher classifier's class distribution trains a student classifier"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        teacher_path(cfg)  # fail before any process group or engine exists

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

        result = validate(ctx, self._val_loader(ctx), probe, ("agreement", "teacher_top1"))
        if "val/top1" in result:
            result["val/best_top1"] = self.best.update(result["val/top1"], step)
        return result

    def flops_per_clip(self, ctx: RunContext) -> float:
        from giant.flops import count

        return super().flops_per_clip(ctx) + count(self.teacher_cfg, "finetune")["flops"]

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


# ----------------------------------------------------------------------------- command line
def model_or_path(text: str, option: str) -> tuple[str, str]:
    """('size', 'vit_g') for vitg / vit_g / ViT-g / g ..., ('path', text) for an existing path."""
    from giant.models.vit import MODEL_SIZES

    if os.path.exists(text):
        return "path", text
    text_ = text.lower().replace("-", "_")
    name = next((c for c in (text_, "vit_" + text_.removeprefix("vit").lstrip("_")) if c in MODEL_SIZES), None)
    if name is None:
        raise ConfigError(f"{option} {text}: neither a model size ({', '.join(sorted(MODEL_SIZES))}; "
                          "vitg, vit-g, ViT-g also work) nor an existing file or directory")
    return "size", name


def shorthand_overrides(teacher: Optional[str], student: Optional[str]) -> list[str]:
    """--teacher / --student → recipe overrides (a size names the model, a path its weights)."""
    out = []
    if teacher:
        kind, value = model_or_path(teacher, "--teacher")
        out.append(f"distill.teacher={value}" if kind == "path" else f"distill.teacher_model.name={value}")
    if student:
        kind, value = model_or_path(student, "--student")
        if kind == "size":
            out.append(f"model.name={value}")
        else:
            out.append(f"checkpoint.init_from={value}")
            art = artifact_model(value) or {}
            out += [f"model.{k}={art[k]}" for k in STUDENT_FIELDS if art.get(k) is not None]
    return out


def default_recipe() -> str:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / DEFAULT_RECIPE).is_file():
            return str(root / DEFAULT_RECIPE)
    raise ConfigError(f"no --recipe given and {DEFAULT_RECIPE} is not found (run from the source checkout, "
                      "or pass --recipe R.yaml)")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG, description="Distil a frozen teacher classifier into a student classifier (VideoMAE V2 "
                               "Table 16): KL between their class distributions on the same clips, run by "
                               "deepspeed / torchrun / srun like the other stages.",
        epilog="examples:\n  distill --teacher vitg --student vitb distill.teacher=runs/postpretrain_vitg_k710\n"
               "  torchrun --nproc_per_node 2 launch/distill.py --recipe launch/recipes/demo_distill.yaml\n"
               "Sizes only: the defaults come from " + DEFAULT_RECIPE + ".\n\n" + TRUST_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="teacher size (vitg, vit_g, vitb, ...: checked against the weights) or its "
                                     "weights (giant run dir, official checkpoint, HF dir) = distill.teacher")
    p.add_argument("--student", help="student size (= model.name) or weights to start from (= checkpoint.init_from; "
                                     "a giant artifact's architecture is taken too)")
    p.add_argument("--recipe", help=f"recipe YAML (default {DEFAULT_RECIPE})")
    p.add_argument("--ds", help="DeepSpeed JSON (ds_configs/*.json); same as engine.ds_config=...")
    p.add_argument("--local_rank", "--local-rank", type=nonnegative_int, default=None,
                   help="set by the deepspeed launcher; LOCAL_RANK is read from the environment")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. distill.temperature=2 stage.run_dir=runs/x")
    return p


def main(argv: Optional[list] = None) -> int:
    """`distill` / `giant distill` / `launch/distill.py`: exit 0, or 2 for a user error."""
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    setup_logging()
    try:
        shorthand = shorthand_overrides(args.teacher, args.student)
        recipe = args.recipe or default_recipe()
    except GiantError as exc:
        return fail(PROG, exc)
    rest = ["--recipe", recipe, *(["--ds", args.ds] if args.ds else []), *args.overrides]
    return stage_main(DistillStage, rest, PROG, DistillStage.description, defaults=shorthand)


def cli_main() -> int:
    """The `distill` console script."""
    return main(sys.argv[1:])
