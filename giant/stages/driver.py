"""The one stage driver: every stage (pre-train, fine-tune, distil) runs through `run_stage`.

A stage supplies only what is specific to it (the `Stage` hooks: model kind, weights to start
from, data, step function, evaluation, extra scalars/images and artifacts). The driver owns the
run lifecycle once for all of them: config resolution (the DeepSpeed JSON is merged ONCE), the
process group, the resume plan (incl. re-sharding), engine build, signals and the
PREEMPTED/ERROR markers, the step loop, cross-rank failure counting, logging, checkpoints, the
final export and summary. The command line that starts it is giant/commands/_stage.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from giant.config import RunConfig, dump_config, to_dict
from giant.engine.best import DONE_REASONS, BestKeeper, check_evaluates
from giant.engine.checkpoint import ARCH_KEYS, CheckpointManager, check_compatible, read_meta
from giant.engine.deepspeed import build_engine, construct_model, init_distributed
from giant.engine.ds_config import MergedDS, resolve_ds_config
from giant.engine.loop import EpochBatches, LoopHooks, SignalFlag, train_loop
from giant.engine.reshard import prepare_universal

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What the driver knows once the process group exists; handed to every stage hook."""

    cfg: RunConfig  # THE config of the run: precision, model sizes and absolute lr resolved
    model_cfg: Any
    rank: int
    world: int
    device: torch.device
    run_dir: Path
    ds: MergedDS
    engine: Any = None
    info: Any = None
    start_step: int = 0
    metrics: Any = None
    extra: dict = field(default_factory=dict)


class Stage:
    """Base of every stage. Override what differs; the defaults are the common case."""

    kind = "pretrain"  # recorded in checkpoints and model.json; checked on resume
    model_kind = "pretrain"  # giant.models.build_model kind

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    # -- before the engine
    def model_config(self, cfg: RunConfig) -> Any:
        from giant.models import resolve

        return resolve(cfg.model)

    def init_weights(self, ctx: RunContext, model: torch.nn.Module) -> None:
        """Load `checkpoint.init_from` (a previous stage's artifact) into the fresh model."""

    # -- after the engine
    def data(self, ctx: RunContext) -> tuple[EpochBatches, Any]:
        """(training batches, FailureTracker) for this rank."""
        raise NotImplementedError

    def step_fn(self, ctx: RunContext, failures: "GlobalFailures") -> Callable:
        """`step(engine, batch) -> (loss, output)`; call `failures.add(batch)` first."""
        raise NotImplementedError

    @staticmethod
    def clip_flops(cfg: RunConfig, model_cfg: Any, teacher: Any = None) -> float:
        """Training FLOPs of one clip; `giant pipeline plan` reads the same function
        (giant/stages/registry.py)."""
        return 0.0

    def flops_per_clip(self, ctx: RunContext) -> float:
        return self.clip_flops(ctx.cfg, ctx.model_cfg)

    def states(self, ctx: RunContext) -> dict:
        """Extra objects with state_dict/load_state_dict saved in every checkpoint."""
        return {}

    def scalars(self, ctx: RunContext, step: int) -> dict:
        return {}

    def image(self, ctx: RunContext, step: int, batch: dict, out: Any) -> Optional[str]:
        return None

    def evaluate(self, ctx: RunContext, step: int) -> dict:
        """Collective (every rank calls it at the same step); scalars to log, e.g. val/top1."""
        return {}

    @property
    def evaluates(self) -> bool:
        """A stage kind with an evaluation of its own (the supervised ones)."""
        return type(self).evaluate is not Stage.evaluate

    def meta(self, ctx: RunContext) -> dict:
        """Stage-specific fields checked on resume / written into model.json."""
        return {}

    def finish(self, ctx: RunContext, art: dict) -> None:
        """Add artifacts (rank 0 and others) once the loop has ended."""


class GlobalFailures:
    """Skip-and-count across ranks: each rank's counts ride on the loop's per-step all-reduce
    (LoopHooks.counters/agreed), so every rank sees the same totals and raises at the same
    step (a lone rank raising would leave its peers waiting in a collective); the totals
    survive a resume (checkpoint client state is rank 0's)."""

    def __init__(self, tracker: Any, rank: int):
        self.tracker, self.rank = tracker, rank
        self.attempts = self.failed = 0  # global totals as of the last step

    def add(self, batch: dict) -> None:
        self.tracker.add(batch["num_videos"], batch["num_failed"], batch["failed_paths"],
                         batch.get("failed_reasons"))

    def counters(self) -> list:
        return [self.tracker.attempts, self.tracker.failed]

    def agreed(self, totals: list) -> None:
        self.attempts, self.failed = int(totals[0]), int(totals[1])
        self.tracker.check(self.attempts, self.failed)

    def state_dict(self) -> dict:  # saves happen after a step's agreement: totals are current
        return {"attempts": self.attempts, "failed": self.failed, "first": list(self.tracker.first)}

    def load_state_dict(self, state: dict) -> None:
        self.attempts, self.failed = int(state["attempts"]), int(state["failed"])
        if self.rank == 0:  # the saved totals re-enter the sums through one rank only
            self.tracker.load_state_dict(state)


def stage_meta(stage: Stage, cfg: RunConfig, model_cfg: Any, world: int, zero: int,
               global_batch: int, extra: Optional[dict] = None) -> dict:
    model = to_dict(model_cfg)
    return {"kind": stage.kind, "stage": stage.kind, "world_size": world, "zero_stage": zero,
            "global_batch_clips": global_batch,
            "model": {k: model[k] for k in ARCH_KEYS if k in model}, "model_full": model,
            "mask": to_dict(cfg.mask), "config": to_dict(cfg), **(extra or {})}


@dataclass
class ResumePlan:
    """Decided once, before the engine exists: the checkpoint to resume (None: a fresh start)
    and whether it loads through a universal (re-sharded) copy."""

    found: Optional[tuple[Path, str]] = None
    universal: bool = False
    meta: dict = field(default_factory=dict)  # the checkpoint's giant_meta.json, as checked


def _plan_resume(stage: Stage, cfg: RunConfig, ckpt: CheckpointManager, world: int,
                 ds: MergedDS) -> ResumePlan:
    """Which checkpoint to resume, and whether it must be re-sharded (then it is converted
    now, so the engine can be built to load it)."""
    found = ckpt.find(cfg.checkpoint.resume)
    if found is None:
        return ResumePlan()
    expect = stage_meta(stage, cfg, cfg.model, world, ds.zero_stage, ds.config["train_batch_size"])
    meta = read_meta(found[0] / found[1])
    universal = check_compatible(meta, expect, found[0] / found[1])  # a wrong model fails before converting
    if universal:
        prepare_universal(*found)
    return ResumePlan(found, universal, meta)


def _resume(plan: ResumePlan, ckpt: CheckpointManager, engine: Any, meta: dict, states: dict) -> int:
    if plan.found is None:
        return 0
    client = ckpt.load(engine, plan.found[0], plan.found[1], plan.meta, plan.universal, meta)
    for name, obj in states.items():
        if name in client.get("states", {}):
            obj.load_state_dict(client["states"][name])
    return int(client["step"])


def _finish(stage: Stage, ctx: RunContext, result: Any, ckpt_root: Path, images: list,
            keeper: BestKeeper) -> dict:
    run_dir, rank = ctx.run_dir, ctx.rank
    art = {"stage": stage.kind, "run_dir": str(run_dir), "config": str(run_dir / "config.yaml"),
           "ds_config": str(run_dir / "ds_config.json"), "metrics": str(run_dir / "metrics.jsonl"),
           "tensorboard": str(run_dir / "tensorboard"), "images": images,
           "checkpoint": result.last_checkpoint, "steps": result.steps_done, "reason": result.reason,
           "first_loss": result.first_loss, "last_loss": result.last_loss,
           "skipped_steps": result.skipped_steps, "exported": None, "best": keeper.tracker.summary()}
    stage.finish(ctx, art)
    if result.reason in DONE_REASONS:  # also when a finished run is relaunched: re-export
        if rank == 0:  # consolidate for the next stage (any ZeRO stage, no process group needed)
            # this run wrote the checkpoints moments ago: trusted, so a type the allow-list lacks
            # (e.g. a GPU-only loss scaler) cannot fail a finished run at its very end
            art.update(keeper.export(ckpt_root, run_dir, {"recipe_run_dir": str(run_dir)}))
        # no barrier: other ranks have nothing left to do, and waiting in a collective while
        # rank 0 consolidates a ViT-g checkpoint could outlast the process-group timeout
    if result.reason.startswith("signal") and rank == 0:
        (run_dir / "PREEMPTED").write_text(result.reason + "\n")  # launch/slurm requeues on it
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(art, indent=2) + "\n")
    return art


def _seed_runtime(seed: int) -> None:
    """torch, numpy and random: timm's Mixup draws from numpy's global generator, so an unseeded
    numpy would make two identical runs (and a run and its resume) differ."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_up(cfg: RunConfig, announce: bool = True) -> tuple[RunConfig, torch.device]:
    """This rank's device, and `cfg` with precision.encoder resolved for it (auto → bf16/fp16/
    fp32, once): before any process group, so whatever is checked against the concrete
    precision (the DeepSpeed JSON) fails fast. Every stage kind starts here, evaluation too.
    announce=False: the caller logs the choice after its input checks (announce_precision)."""
    from giant.engine.deepspeed import select_device
    from giant.engine.precision import resolve_precision

    _, device = select_device(cfg)
    return resolve_precision(cfg, device, announce), device


def join(cfg: RunConfig, device: torch.device, run_dir: Path) -> tuple[int, int]:
    """Start (or join) the process group → (rank, world); rank 0 clears an earlier attempt's
    ERROR marker in `run_dir`: this attempt decides anew."""
    rank, world, _, _ = init_distributed(cfg, device)
    if rank == 0:
        (run_dir / "ERROR").unlink(missing_ok=True)
    return rank, world


def run_stage(stage: Stage) -> dict:
    """Run `stage` to its end (or a signal); returns the artifacts. Collective over all ranks.

    The stage ends up seeing ONE config (stage.cfg is ctx.cfg): precision resolved for the
    device, the DeepSpeed JSON merged once against it, model sizes and absolute lr filled in."""
    from giant.engine.precision import announce_precision

    check_evaluates(stage.cfg, stage.kind, stage.evaluates)
    check_inputs(stage.cfg, stage.kind)  # files first: seconds after the launch, on every rank alike
    cfg, device = set_up(stage.cfg, announce=False)  # logged below: a bad input is one line
    ds = resolve_ds_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # fail fast, once
    model_cfg = stage.model_config(cfg)  # a config mistake fails before any set-up
    announce_precision(stage.cfg.precision.encoder, device)  # the inputs passed: now say it
    # handlers first: a preemption signal during the (long, for ViT-g) start-up and resume must
    # end in a clean save + PREEMPTED marker, not the default kill
    flag = SignalFlag()
    try:
        return _run(stage, cfg, model_cfg, device, ds, flag)
    finally:
        flag.restore()  # idempotent; also when start-up fails before the loop


def _start(stage: Stage, cfg: RunConfig, model_cfg: Any, device: torch.device,
           ds: MergedDS) -> tuple[RunContext, CheckpointManager, ResumePlan]:
    """Process group, the run's one resolved config, the resume plan, the engine."""
    from giant.engine.ds_config import resolve_optim

    run_dir = Path(cfg.stage.run_dir)
    rank, world = join(cfg, device, run_dir)
    cfg = dataclasses.replace(cfg, model=model_cfg, optim=resolve_optim(cfg.optim, world))
    stage.cfg = cfg
    ctx = RunContext(cfg=cfg, model_cfg=model_cfg, rank=rank, world=world, device=device,
                     run_dir=run_dir, ds=ds)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    plan = _plan_resume(stage, cfg, ckpt, world, ds)
    torch.manual_seed(cfg.stage.seed)  # identical init on every rank (ZeRO-3 keeps local shards)
    model = construct_model(cfg, model_cfg, stage.model_kind, ds=ds)
    stage.init_weights(ctx, model)
    ctx.engine, ctx.info = build_engine(model, cfg, device, run_dir, rank, load_universal=plan.universal, ds=ds)
    if rank == 0:
        dump_config(cfg, run_dir / "config.yaml")
    return ctx, ckpt, plan


def _run(stage: Stage, cfg: RunConfig, model_cfg: Any, device: torch.device, ds: MergedDS,
         flag: SignalFlag) -> dict:
    from giant.engine.metrics import MetricsLogger, Throughput, memory_stats
    from giant.engine.profile import StepProfiler

    ctx, ckpt, plan = _start(stage, cfg, model_cfg, device, ds)
    cfg, rank, world, run_dir, engine, info = ctx.cfg, ctx.rank, ctx.world, ctx.run_dir, ctx.engine, ctx.info
    _seed_runtime(cfg.stage.seed + 1000 + rank)  # per-rank runtime randomness (drop path, mixup)
    batches, local_tracker = stage.data(ctx)
    loader = getattr(batches, "loader", None)
    if loader is not None:  # iter(loader) would otherwise draw its base seed from the global
        # torch RNG, shifting drop path after a resume (which re-creates it at another step)
        loader.generator = torch.Generator().manual_seed(cfg.stage.seed + rank)
    failures = GlobalFailures(local_tracker, rank)
    meta = stage_meta(stage, cfg, model_cfg, world, info.zero_stage, info.global_batch_clips, stage.meta(ctx))
    keeper = BestKeeper(cfg, device)  # checkpoint.export / best_metric, stage.early_stop
    states = {"sampler": batches, "loss_scaler": info.loss_scaler, "data_failures": failures,
              "best_export": keeper.tracker, **stage.states(ctx)}
    ctx.start_step = start = _resume(plan, ckpt, engine, meta, states)

    def save(step: int, pin: bool = False) -> str:
        client = {"step": step, "states": {k: v.state_dict() for k, v in states.items()},
                  "config": to_dict(cfg)}
        return str(ckpt.save(engine, step, client, meta, pin=pin))

    ctx.metrics = metrics = MetricsLogger(
        run_dir, enabled=rank == 0, report_to=cfg.logging.report_to, log_every=cfg.logging.log_every,
        progress=cfg.logging.progress, total_steps=cfg.optim.total_steps, resume_step=start,
        run_name=cfg.stage.name, config=to_dict(cfg))
    prof = StepProfiler(cfg.logging.profile, run_dir, device, enabled=rank == 0)  # logging.profile
    tput = Throughput(stage.flops_per_clip(ctx), device, cfg.precision.encoder, world)
    images: list[str] = []

    def image(step: int, batch: dict, out: Any) -> None:
        path = stage.image(ctx, step, batch, out)
        if path:
            images.append(str(path))

    def scalars(step: int) -> dict:
        epoch = batches.state_dict().get("epoch", 0)
        return {"epoch": epoch, "data_failures": failures.failed, **stage.scalars(ctx, step)}

    hooks = LoopHooks(save=save, log_step=lambda step, v: (metrics.log_step(step, v), prof.at(step)),
                      scalars=scalars, image=image,
                      throughput=lambda step, s: {**tput.update(info.global_batch_clips, s),
                                                  **memory_stats(device)},
                      counters=failures.counters, agreed=failures.agreed,
                      evaluate=lambda step: stage.evaluate(ctx, step),
                      judge=lambda step, result: keeper.judge(step, result, save))
    log.info("%s %s: steps %d→%d, %d ranks, global batch %d clips, run dir %s", stage.kind,
             model_cfg.name, start, cfg.optim.total_steps, world, info.global_batch_clips, run_dir)
    if rank == 0 and stage.evaluates and cfg.stage.eval_every > 0 and not cfg.data.val_manifest:
        log.warning("stage.eval_every=%d but data.val_manifest is empty: this run validates nothing "
                    "(set data.val_manifest, or stage.eval_every=0 to silence this)", cfg.stage.eval_every)
    try:
        prof.at(start)
        stopped = keeper.resumed_stop(start)  # a relaunched early-stopped run trains no further
        result = stopped or train_loop(engine, info.optim, batches, stage.step_fn(ctx, failures),
                                       info.loss_scaler, hooks, start, device,
                                       checkpoint_every=cfg.checkpoint.every_steps,
                                       image_every=cfg.logging.image_every, stop_after=cfg.stage.stop_after,
                                       fp16=cfg.precision.encoder == "fp16", flag=flag,
                                       eval_every=cfg.stage.eval_every)
        return _finish(stage, ctx, result, ckpt.root, images, keeper)
    finally:
        prof.close()
        metrics.close()


# ----------------------------------------------------------------------------- entry points
def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)
    logging.getLogger("giant").setLevel(level)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # giant logs the engine summary itself
    # DeepSpeed 0.19 calls a collective torch 2.x deprecates; one warning per rank per run is noise.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")


def check_inputs(cfg: RunConfig, kind: str = "pretrain") -> None:
    """Everything static the stage needs (manifests parsed, weights, run dir), before a run dir,
    a process group or a model exists: giant/stages/inputs.py."""
    from giant.stages.inputs import check_stage

    check_stage(kind, cfg)


def check_weights(key: str, path: str, fix: str = "") -> None:
    """`path` is weights giant can start from (giant/stages/inputs.py; names only)."""
    from giant.stages.inputs import check_weights as check

    check(key, path, fix)


def mark_error(run_dir: Path, exc: Exception) -> None:
    """RUN_DIR/ERROR: the batch script must not requeue a run a person has to fix, whatever
    exit code the launcher reports once it has killed the other ranks."""
    if not run_dir.is_dir():  # failed before starting: leave no run dir behind; exit 2 says it
        return
    try:
        (run_dir / "ERROR").write_text(f"{type(exc).__name__}: {exc}\n")
    except OSError:
        pass  # the run dir itself may be the problem; the exit code still says 2

