"""Cross-field checks of a loaded config; each error names the key and the fix."""
from __future__ import annotations

import dataclasses
import importlib.util

from giant.config.schema import DistillConfig, LoggingConfig, MaskConfig, ModelConfig, RunConfig
from giant.errors import ConfigError


def _check_running_cell(mask: MaskConfig) -> None:
    """The official count of dropped positions per 2×2 cell is int(4·ratio) and must be 1..3
    (giant.masking.running_cell_count says the same at mask construction; config.py imports
    nothing of giant, so the arithmetic is repeated here to fail before any process starts)."""
    if mask.decoder != "running_cell" or mask.decoder_ratio == 0:
        return  # ratio 0 / decoder none: VideoMAE V1, the decoder reconstructs the masked tokens
    count = int(4 * mask.decoder_ratio)
    if not 0 < count < 4:
        raise ConfigError(
            f"mask.decoder_ratio={mask.decoder_ratio}: the running-cell decoder mask drops "
            f"int(4·ratio)={count} of the 4 positions of each cell, which must be 1..3; use a "
            "ratio in [0.25, 1) (official 0.5), or mask.decoder_ratio=0 / mask.decoder=none "
            "for VideoMAE V1")


def _check_pixel_stats(mean: list, std: list, chans: int) -> None:
    for key, values in (("data.mean", mean), ("data.std", std)):
        if len(values) != chans or not all(isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"{key}={values}: need {chans} numbers, one per channel "
                              f"(model.in_chans={chans})")
    if any(v <= 0 for v in std):
        raise ConfigError(f"data.std={std}: every value must be > 0")


def validate(cfg: RunConfig) -> None:
    """Cross-field checks a user can trip over; each names the key and the fix."""
    if cfg.precision.encoder not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision.encoder={cfg.precision.encoder!r}: use auto, fp32, bf16 or fp16")
    if cfg.precision.decoder != "fp32":
        raise ConfigError("precision.decoder must be fp32 (docs/reference.md §5: the decoder and loss stay FP32)")
    if not 0 <= cfg.mask.ratio < 1:
        raise ConfigError(f"mask.ratio={cfg.mask.ratio}: must be in [0, 1)")
    if not 0 <= cfg.mask.decoder_ratio < 1:
        raise ConfigError(f"mask.decoder_ratio={cfg.mask.decoder_ratio}: must be in [0, 1)")
    _check_running_cell(cfg.mask)
    _check_pixel_stats(cfg.data.mean, cfg.data.std, cfg.model.in_chans)
    if cfg.optim.batch_size < 1 or cfg.optim.accum_steps < 1:
        raise ConfigError("optim.batch_size and optim.accum_steps must be >= 1")
    lrs = {"optim.lr": cfg.optim.lr, "optim.blr": cfg.optim.blr, "optim.min_lr": cfg.optim.min_lr,
           "optim.min_blr": cfg.optim.min_blr, "optim.warmup_lr": cfg.optim.warmup_lr}
    negative = [k for k, v in lrs.items() if v is not None and v < 0]
    if negative:
        raise ConfigError(f"{negative[0]}={lrs[negative[0]]}: learning rates must be >= 0")
    if cfg.optim.warmup_steps > cfg.optim.total_steps:
        raise ConfigError(
            f"optim.warmup_steps={cfg.optim.warmup_steps} exceeds optim.total_steps={cfg.optim.total_steps}")
    ft = cfg.finetune
    for key in ("mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "label_smoothing"):
        if getattr(ft, key) < 0:
            raise ConfigError(f"finetune.{key}={getattr(ft, key)}: must be >= 0")
    if ft.label_smoothing >= 1 or ft.mixup_prob > 1 or ft.mixup_switch_prob > 1:
        raise ConfigError("finetune.label_smoothing must be < 1, mixup_prob and mixup_switch_prob <= 1")
    _validate_methods(cfg)
    _validate_distill(cfg.distill)
    _validate_logging(cfg.logging)
    act = cfg.engine.activation_checkpointing
    if not (act in ("off", "all") or (act.startswith("first:") and act[6:].isdigit())):
        raise ConfigError(f"engine.activation_checkpointing={act!r}: use off, all or first:N")
    _validate_speed(cfg)
    _validate_best(cfg)


def _validate_best(cfg: RunConfig) -> None:
    """The best export and early stopping act on evaluations: a stage without any is a mistake."""
    ck, st = cfg.checkpoint, cfg.stage
    if ck.export not in ("last", "best", "both"):
        raise ConfigError(f"checkpoint.export={ck.export!r}: use last, best or both")
    if ck.best_mode not in ("auto", "max", "min"):
        raise ConfigError(f"checkpoint.best_mode={ck.best_mode!r}: use auto, max or min")
    if not ck.best_metric.strip():
        raise ConfigError("checkpoint.best_metric is empty: name an evaluation scalar, e.g. val/top1")
    if st.early_stop < 0 or st.early_stop_min_delta < 0:
        raise ConfigError(f"stage.early_stop={st.early_stop}, stage.early_stop_min_delta="
                          f"{st.early_stop_min_delta}: both must be >= 0 (early_stop 0 = off)")
    wanted = [k for k, on in ((f"checkpoint.export={ck.export}", ck.export != "last"),
                              (f"stage.early_stop={st.early_stop}", st.early_stop > 0)) if on]
    missing = [k for k, off in (("stage.eval_every > 0", st.eval_every <= 0),
                                ("data.val_manifest", not cfg.data.val_manifest)) if off]
    if wanted and missing:
        raise ConfigError(f"{' and '.join(wanted)} acts on evaluations of {ck.best_metric}: set "
                          f"{' and '.join(missing)} (a supervised stage), or leave checkpoint.export=last "
                          "and stage.early_stop=0")


SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math")


def _validate_speed(cfg: RunConfig) -> None:
    """The GPU speed settings (kernels, casts, loader prefetch): each names its choices."""
    if cfg.precision.decoder_matmul not in ("tf32", "fp32"):
        raise ConfigError(f"precision.decoder_matmul={cfg.precision.decoder_matmul!r}: use tf32 or fp32")
    if cfg.precision.cast not in ("auto", "model", "block"):
        raise ConfigError(f"precision.cast={cfg.precision.cast!r}: use auto, model or block")
    names = [n.strip() for n in cfg.engine.attention_backends.split(",")]
    if names != ["auto"] and (not all(n in SDPA_BACKENDS for n in names) or len(set(names)) != len(names)):
        raise ConfigError(f"engine.attention_backends={cfg.engine.attention_backends!r}: use auto or a "
                          f"comma list of distinct {', '.join(SDPA_BACKENDS)} (e.g. cudnn,flash)")
    if cfg.data.prefetch_factor < 1:
        raise ConfigError(f"data.prefetch_factor={cfg.data.prefetch_factor}: must be >= 1")


def _validate_methods(cfg: RunConfig) -> None:
    """Which method a run is (VideoMAE / V2 / AdaMAE / MAE-ST) comes from these fields."""
    m, mask, data = cfg.model, cfg.mask, cfg.data
    if mask.encoder not in ("tube", "random", "frame", "block", "adaptive"):
        raise ConfigError(f"mask.encoder={mask.encoder!r}: use tube, random, frame, block or adaptive")
    if m.arch not in ("videomae", "maest"):
        raise ConfigError(f"model.arch={m.arch!r}: use videomae or maest")
    if m.sampler not in ("none", "adaptive"):
        raise ConfigError(f"model.sampler={m.sampler!r}: use none or adaptive")
    if (m.sampler == "adaptive") != (mask.encoder == "adaptive"):
        raise ConfigError(f"model.sampler={m.sampler} with mask.encoder={mask.encoder}: the AdaMAE "
                          "sampler draws the encoder mask; set mask.encoder=adaptive (model.sampler "
                          "follows it), or model.sampler=none")
    if m.sampler == "adaptive" and m.arch != "videomae":
        raise ConfigError(f"mask.encoder=adaptive with model.arch={m.arch}: the AdaMAE sampler is "
                          "implemented for model.arch=videomae only")
    if m.sampler_loss_weight < 0:
        raise ConfigError(f"model.sampler_loss_weight={m.sampler_loss_weight}: must be >= 0")
    if m.pred_t_dim is not None:
        slices = m.num_frames // max(m.tubelet_size, 1)
        if m.arch != "maest":
            raise ConfigError("model.pred_t_dim is an MAE-ST option: set model.arch=maest or remove it")
        if m.pred_t_dim % max(slices, 1) or not slices <= m.pred_t_dim <= m.num_frames:
            raise ConfigError(f"model.pred_t_dim={m.pred_t_dim}: must be a multiple of num_frames/"
                              f"tubelet_size={slices} and at most num_frames={m.num_frames}")
    if data.pretrain_crop not in ("multiscale", "rrc"):
        raise ConfigError(f"data.pretrain_crop={data.pretrain_crop!r}: use multiscale or rrc")
    _check_range(data.pretrain_crop_scale, "data.pretrain_crop_scale", 1.0, "[0.5, 1.0]")
    _check_range(data.pretrain_crop_ratio, "data.pretrain_crop_ratio", float("inf"), "[0.75, 1.3333]")


def _validate_distill(d: DistillConfig) -> None:
    if d.temperature <= 0:
        raise ConfigError(f"distill.temperature={d.temperature}: must be > 0 (1 = plain softmax)")
    if d.hard_weight < 0:
        raise ConfigError(f"distill.hard_weight={d.hard_weight}: must be >= 0 (0 = KL only)")
    if d.teacher_precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"distill.teacher_precision={d.teacher_precision!r}: use auto, bf16, fp16 or fp32")
    if not isinstance(d.teacher_model, dict):
        raise ConfigError(f"distill.teacher_model={d.teacher_model!r}: give a mapping of model fields, "
                          "e.g. {name: vit_g}")
    unknown = sorted(set(d.teacher_model) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ConfigError(f"distill.teacher_model: unknown key(s) {unknown}; it takes model.* fields "
                          "(name, patch_size, embed_dim, depth, ...)")


def _check_range(pair: list, key: str, upper: float, example: str) -> None:
    if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= upper:
        raise ConfigError(f"{key}={pair}: give [min, max] with 0 < min <= max"
                          f"{' <= 1' if upper == 1.0 else ''}, e.g. {example}")


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module


def _validate_logging(lg: LoggingConfig) -> None:
    """Trackers and the profiler window; a tracker's package is looked for (not imported) here,
    so a missing one is one line before any model or process group exists."""
    names = lg.report_to
    bad = [n for n in names if n not in TRACKERS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"logging.report_to={names}: a list of distinct {', '.join(TRACKERS)} "
                          "(e.g. [tensorboard, wandb]; [] for none)")
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"logging.report_to names {name}, which is not installed: "
                              f"pip install 'giant[{name}]' (or drop it from logging.report_to)")
    prof = lg.profile
    example = "e.g. logging.profile={start: 10, steps: 3}"
    if not isinstance(prof, dict):
        raise ConfigError(f"logging.profile={prof!r}: give a mapping {{start, steps}}, {example}; {{}} = off")
    unknown = sorted(set(prof) - {"start", "steps"})
    if unknown:
        raise ConfigError(f"logging.profile: unknown key(s) {unknown}; it takes start and steps, {example}")
    for key, low in (("start", 0), ("steps", 1)):
        value = prof.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"logging.profile.{key}={value!r}: must be an integer >= {low}, {example}")
