"""Masked-autoencoder pre-training (VideoMAE V2 dual masking): compose model, data and engine.

`run(cfg)` is the whole stage; `main(argv)` is what `deepspeed launch/pretrain.py`, `torchrun`,
`python launch/pretrain.py` and `giant pretrain` call. The stage owns no math: the model computes
the loss, the engine layer does precision, ZeRO, checkpoints and the loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from giant.config import RunConfig, dump_config, load_config, to_dict
from giant.engine.checkpoint import (ARCH_KEYS, CheckpointManager, check_compatible, check_reshardable,
                                     export_weights, load_weights, needs_reshard, prepare_universal,
                                     read_meta, prepare_run_dir)
from giant.engine.deepspeed import (build_engine, check_ds_config, construct_model, init_distributed,
                                    load_state, zero_stage)
from giant.engine.loop import EpochBatches, LoopHooks, SignalFlag, train_loop
from giant.errors import CheckpointError, ConfigError, GiantError

log = logging.getLogger(__name__)


def _model(cfg: RunConfig, model_cfg: Any) -> torch.nn.Module:
    torch.manual_seed(cfg.stage.seed)  # identical init on every rank (ZeRO-3 keeps local shards)
    model = construct_model(cfg, model_cfg, "pretrain")
    if cfg.checkpoint.init_from:
        state, info = load_weights(cfg.checkpoint.init_from)
        missing, unexpected = load_state(model, state)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint.init_from={cfg.checkpoint.init_from}: weights do not fit this model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}; exported model {info.get('model', {}).get('name')})")
        log.info("initialised from %s", cfg.checkpoint.init_from)
    return model


def _data(cfg: RunConfig, model_cfg: Any, rank: int, world: int) -> tuple[EpochBatches, Any]:
    from giant.data import (FailureTracker, PretrainClips, ResumableDistributedSampler,
                            collate_pretrain, make_loader, set_loader_epoch)
    from giant.masking import MaskGenerator, token_grid

    if not cfg.data.manifest:
        raise ConfigError("data.manifest is empty: point it at a manifest (e.g. `giant data synth "
                          "data/synth` then data.manifest=data/synth/train.csv)")
    mask_fn = MaskGenerator(cfg.mask, token_grid(model_cfg))
    dataset = PretrainClips.from_config(dataclasses.replace(cfg, model=model_cfg), "train", mask_fn)
    sampler = ResumableDistributedSampler(len(dataset), rank, world, seed=cfg.stage.seed,
                                          shuffle=True, drop_last=len(dataset) >= world)
    # a decode stuck in C code raises DataError after data.loader_timeout_s; the launcher
    # (torchrun / srun --kill-on-bad-exit) then ends the peers instead of leaving them waiting
    loader = make_loader(dataset, sampler, cfg.optim.batch_size, cfg.data.num_workers,
                         collate_pretrain, pin_memory=torch.cuda.is_available(),
                         timeout=cfg.data.loader_timeout_s)
    return (EpochBatches(loader, on_epoch=set_loader_epoch, full_batch=cfg.optim.batch_size),
            FailureTracker.from_config(cfg))


class _GlobalFailures:
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


def _step_fn(cfg: RunConfig, device: torch.device, tracker: Any):
    from giant.data import normalize_on_device

    # on the device once: a list would be copied host→device (blocking) every micro-step
    mean = torch.tensor(cfg.data.mean, dtype=torch.float32, device=device)
    std = torch.tensor(cfg.data.std, dtype=torch.float32, device=device)

    def step(engine: Any, batch: dict) -> tuple[torch.Tensor, Any]:
        tracker.add(batch)
        video = batch["video"].to(device, non_blocking=True)
        x = normalize_on_device(video, mean, std)
        out = engine(x, batch["enc_keep"].to(device, non_blocking=True),
                     batch["dec_keep"].to(device, non_blocking=True))
        return out.loss, out

    return step


def _meta(cfg: RunConfig, model_cfg: Any, world: int, zero_stage: int, global_batch: int) -> dict:
    model = to_dict(model_cfg)
    return {"kind": "pretrain", "stage": "pretrain", "world_size": world, "zero_stage": zero_stage,
            "global_batch_clips": global_batch,
            "model": {k: model[k] for k in ARCH_KEYS if k in model}, "model_full": model,
            "mask": to_dict(cfg.mask), "config": to_dict(cfg)}


class _Observer:
    """Rank-0 metrics, throughput and reconstruction images for the loop's hooks."""

    def __init__(self, cfg: RunConfig, model_cfg: Any, run_dir: Path, rank: int, world: int,
                 device: torch.device, global_clips: int, tracker: Any, batches: EpochBatches,
                 start: int = 0):
        from giant.engine.metrics import MetricsLogger, Throughput, memory_stats
        from giant.flops import train_flops_per_clip

        self.cfg, self.model_cfg, self.rank, self.device = cfg, model_cfg, rank, device
        self.tracker, self.batches, self.global_clips = tracker, batches, global_clips
        self.metrics = MetricsLogger(run_dir, enabled=rank == 0, tensorboard=cfg.logging.tensorboard,
                                     log_every=cfg.logging.log_every, progress=cfg.logging.progress,
                                     total_steps=cfg.optim.total_steps, resume_step=start)
        self._memory = memory_stats
        self.tput = Throughput(train_flops_per_clip(model_cfg, cfg.mask, "pretrain"), device,
                               cfg.precision.encoder, world)
        self.images: list[str] = []

    def throughput(self, step: int, seconds: float) -> dict:
        return {**self.tput.update(self.global_clips, seconds), **self._memory(self.device)}

    def scalars(self, step: int) -> dict:
        return {"epoch": self.batches.state_dict().get("epoch", 0), "data_failures": self.tracker.failed}

    def image(self, step: int, batch: dict, out: Any) -> None:
        if self.rank != 0:
            return
        from giant.engine.visualize import reconstruction_image

        img = reconstruction_image(batch["video"][0], batch["enc_keep"][0], batch["dec_keep"][0],
                                   out.pred[0].detach().float().cpu(), self.model_cfg, min_size=128)
        path = self.metrics.log_image(step, "reconstruction", img)
        if path is not None:
            self.images.append(str(path))


def _plan_resume(cfg: RunConfig, ckpt: CheckpointManager, model_cfg: Any, world: int,
                 ds: dict) -> tuple[Optional[tuple[Path, str]], bool]:
    """Before the engine exists: which checkpoint to resume, and whether it must be re-sharded
    (then it is converted now, so the engine can be built to load it)."""
    found = ckpt.find(cfg.checkpoint.resume)
    if found is None:
        return None, False
    expect = _meta(cfg, model_cfg, world, zero_stage(ds), ds["train_batch_size"])
    meta = read_meta(found[0] / found[1])
    check_compatible(meta, expect, found[0] / found[1])  # a wrong model fails before converting
    universal = needs_reshard(meta, expect)
    if universal:
        check_reshardable(meta, expect, found[0] / found[1])
        prepare_universal(*found)
    return found, universal


def _resume(found: Optional[tuple[Path, str]], ckpt: CheckpointManager, engine: Any, meta: dict,
            states: dict) -> int:
    if found is None:
        return 0
    client = ckpt.load(engine, found[0], found[1], meta)
    for name, obj in states.items():
        if name in client.get("states", {}):
            obj.load_state_dict(client["states"][name])
    return int(client["step"])


def _finish(cfg: RunConfig, run_dir: Path, rank: int, result: Any, obs: _Observer, ckpt_root: Path) -> dict:
    art = {"run_dir": str(run_dir), "config": str(run_dir / "config.yaml"),
           "ds_config": str(run_dir / "ds_config.json"), "metrics": str(run_dir / "metrics.jsonl"),
           "tensorboard": str(run_dir / "tensorboard"), "images": obs.images,
           "checkpoint": result.last_checkpoint, "steps": result.steps_done, "reason": result.reason,
           "first_loss": result.first_loss, "last_loss": result.last_loss,
           "skipped_steps": result.skipped_steps}
    if result.reason == "completed":  # also when a finished run is relaunched: re-export latest
        if rank == 0:  # consolidate for the next stage (any ZeRO stage, no process group needed)
            weights, model_json = export_weights(ckpt_root, run_dir, provenance={"recipe_run_dir": str(run_dir)})
            art.update(weights=str(weights), model_json=str(model_json))
        # no barrier: other ranks have nothing left to do, and waiting in a collective while
        # rank 0 consolidates a ViT-g checkpoint could outlast the process-group timeout
    if result.reason.startswith("signal") and rank == 0:
        (run_dir / "PREEMPTED").write_text(result.reason + "\n")  # launch/slurm requeues on it
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(art, indent=2) + "\n")
    return art


def run(cfg: RunConfig) -> dict:
    """Pre-train; returns the artifacts (paths, losses, reason). Collective over all ranks."""
    check_ds_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    prepare_run_dir(cfg.stage.run_dir, cfg.checkpoint.resume)  # resume=never over an old run: refuse
    # handlers first: a preemption signal during the (long, for ViT-g) start-up and resume must
    # end in a clean save + PREEMPTED marker, not the default kill
    flag = SignalFlag()
    try:
        return _run(cfg, flag)
    finally:
        flag.restore()  # idempotent; also when start-up fails before the loop


def _run(cfg: RunConfig, flag: SignalFlag) -> dict:
    rank, world, _, device = init_distributed(cfg)
    run_dir = Path(cfg.stage.run_dir)
    if rank == 0:
        (run_dir / "ERROR").unlink(missing_ok=True)  # an earlier attempt's; this one decides anew
    model_cfg = cfg.model.resolved()
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    found, universal = _plan_resume(cfg, ckpt, model_cfg, world, check_ds_config(cfg, world))
    model = _model(cfg, model_cfg)
    engine, info = build_engine(model, cfg, device, run_dir, rank, load_universal=universal)
    resolved = dataclasses.replace(cfg, model=model_cfg, optim=info.optim)
    if rank == 0:
        dump_config(resolved, run_dir / "config.yaml")
    torch.manual_seed(cfg.stage.seed + 1000 + rank)  # per-rank runtime randomness (drop path)
    batches, local_tracker = _data(cfg, model_cfg, rank, world)
    tracker = _GlobalFailures(local_tracker, rank)
    meta = _meta(resolved, model_cfg, world, info.zero_stage, info.global_batch_clips)
    states = {"sampler": batches, "loss_scaler": info.loss_scaler, "data_failures": tracker}
    start = _resume(found, ckpt, engine, meta, states)

    def save(step: int) -> str:
        client = {"step": step, "states": {k: v.state_dict() for k, v in states.items()},
                  "config": to_dict(resolved)}
        return str(ckpt.save(engine, step, client, meta))

    obs = _Observer(resolved, model_cfg, run_dir, rank, world, device, info.global_batch_clips,
                    tracker, batches, start)
    hooks = LoopHooks(save=save, log_step=obs.metrics.log_step, scalars=obs.scalars,
                      image=obs.image, throughput=obs.throughput, counters=tracker.counters,
                      agreed=tracker.agreed)
    log.info("pre-training %s: steps %d→%d, %d ranks, global batch %d clips, run dir %s",
             model_cfg.name, start, cfg.optim.total_steps, world, info.global_batch_clips, run_dir)
    try:
        result = train_loop(engine, info.optim, batches, _step_fn(cfg, device, tracker), info.loss_scaler,
                            hooks, start, device, checkpoint_every=cfg.checkpoint.every_steps,
                            image_every=cfg.logging.image_every, stop_after=cfg.stage.stop_after,
                            fp16=cfg.precision.encoder == "fp16", flag=flag)
        return _finish(cfg, run_dir, rank, result, obs, ckpt.root)
    finally:
        obs.metrics.close()


def _setup_logging() -> None:
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


def parse_args(argv: Optional[list]) -> RunConfig:
    p = argparse.ArgumentParser(prog="launch/pretrain.py", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", help="recipe YAML (launch/recipes/*.yaml)")
    p.add_argument("--ds", help="DeepSpeed JSON (ds_configs/*.json); same as engine.ds_config=...")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher; LOCAL_RANK is read from the environment")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.blr=3e-4 stage.run_dir=runs/x")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between or after options
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    overrides = list(args.overrides) + ([f"engine.ds_config={args.ds}"] if args.ds else [])
    return load_config(args.recipe, overrides)


def main(argv: Optional[list] = None) -> int:
    _setup_logging()
    cfg = None
    try:
        cfg = parse_args(argv)
        art = run(cfg)
    except GiantError as exc:
        log.error("%s", exc)
        if cfg is not None and int(os.environ.get("RANK", "0")) == 0:
            _mark_error(Path(cfg.stage.run_dir), exc)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("done (%s): %d steps, loss %s → %s; run dir %s", art["reason"], art["steps"],
                 _fmt(art["first_loss"]), _fmt(art["last_loss"]), art["run_dir"])
    return 0


def _mark_error(run_dir: Path, exc: Exception) -> None:
    """RUN_DIR/ERROR: the batch script must not requeue a run a person has to fix, whatever
    exit code the launcher reports once it has killed the other ranks."""
    if not run_dir.is_dir():  # failed before starting: leave no run dir behind; exit 2 says it
        return
    try:
        (run_dir / "ERROR").write_text(f"{type(exc).__name__}: {exc}\n")
    except OSError:
        pass  # the run dir itself may be the problem; the exit code still says 2


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"
