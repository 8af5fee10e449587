"""One typed config tree for every stage: recipe YAML + dotted overrides, validated, dumpable.

Recipes state only what differs from these defaults. Unknown keys are errors (a typo must never
silently fall back to a default on a week-long run). The resolved tree is written to the run
directory and into every checkpoint.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from giant.errors import ConfigError


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (so `off` stays the string "off") and
    `1e-3` is a float, as users expect from recipes."""


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
               r"|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


# ImageNet pixel statistics: the default of data.mean / data.std, and the only copy. The model
# un-normalises its input with the values of data.mean / data.std it is built with
# (giant.models.build_model), so a recipe that changes them changes both together.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Yaml12Loader)


@dataclass
class ModelConfig:
    """Architecture. `name` picks a row of MODEL_SIZES; any None field is filled from it."""

    name: str = "tiny"
    img_size: int = 224
    num_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    decoder_mlp_ratio: Optional[float] = None
    num_classes: int = 0
    drop_path_rate: float = 0.0
    head_drop_rate: float = 0.0
    init_scale: float = 0.001
    norm_eps: float = 1e-6
    # Token grid (T', H', W') the fixed position table was defined on; None = this model's grid.
    # Set when fine-tuning at another frame count / resolution so positions keep their meaning.
    pos_grid: Optional[list] = None
    # Architecture family. videomae: VideoMAE / V2 / AdaMAE (fixed sin-cos positions, fused qkv
    # with q/v biases, no cls token). maest: MAE-ST (learnable separable space + time positions,
    # a cls token, separate q/k/v Linears with biases; giant/models/maest.py).
    arch: str = "videomae"
    # MAE-ST target: frames predicted per clip (indices linspace(0, T-1, n) truncated, as the
    # official code); a multiple of num_frames/tubelet_size. None = num_frames/tubelet_size (8 of 16).
    pred_t_dim: Optional[int] = None
    # AdaMAE token sampler inside the encoder: none | adaptive. Set from mask.encoder when the
    # config is loaded (mask.encoder=adaptive gives adaptive); a recipe need not write it.
    sampler: str = "none"
    sampler_loss_weight: float = 1e-4  # AdaMAE: total = reconstruction + weight × sampling loss

    def resolved(self) -> "ModelConfig":
        from giant.models.vit import resolve_model_config

        return resolve_model_config(self)


def token_grid(cfg: ModelConfig) -> tuple[int, int, int]:
    """(T', H', W') of the token grid for a resolved model config: pure arithmetic, so data and
    masking code can ask without importing the model package."""
    return (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size,
            cfg.img_size // cfg.patch_size)


@dataclass
class MaskConfig:
    """Encoder and decoder masking (SPEC §3). decoder='none' or decoder_ratio 0 = VideoMAE V1."""

    # tube | random | frame | block | adaptive (AdaMAE: the model's sampler draws int(N·(1−ratio))
    # visible tokens; the loader then sends a placeholder, see giant/masking.py)
    encoder: str = "tube"
    ratio: float = 0.9
    decoder: str = "running_cell"  # running_cell | none
    decoder_ratio: float = 0.5
    block_min_tokens: int = 16  # block masking: smallest cube (in tokens) drawn per step


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled (SPEC §4)."""

    manifest: str = ""  # CSV / official list / sources YAML
    val_manifest: str = ""
    root: str = ""  # prefix for relative paths in manifests
    backend: str = "decord"  # decord | pyav | frames
    sampling_rate: int = 4  # τ; a sources YAML can override it per source
    num_sample: int = 4  # repeated augmentation: clips per decoded video
    num_workers: int = 2
    max_fail_fraction: float = 0.01  # stop when more than this share of videos is unreadable
    min_fail_count: int = 20  # ...but never before this many failures (small-sample noise)
    # per-channel pixel statistics (of x/255) for input normalisation; the pre-training model
    # un-normalises its target with the same values (one source)
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    short_side: int = 0  # eval/test: resize the short side to this before cropping; 0 = model.img_size (SPEC §4)
    test_manifest: str = ""  # multi-view test list; "" = val_manifest
    sampling: str = "dense"  # dense (stride τ) | segments (TSN: 1 frame per segment, SSv2)
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # fine-tune RandAugment; "" = off
    flip: bool = True  # fine-tune horizontal flip (false for Something-Something)
    train_scale: list = field(default_factory=lambda: [0.08, 1.0])  # fine-tune random resized crop area range
    # Pre-training crop: multiscale (VideoMAE / V2 / AdaMAE: MultiScaleCrop, SPEC §4) | rrc
    # (MAE-ST: random resized crop of area share pretrain_crop_scale and aspect pretrain_crop_ratio
    # on the decoded frames; the official pre-training path applies no short-side jitter then).
    pretrain_crop: str = "multiscale"
    pretrain_crop_scale: list = field(default_factory=lambda: [0.5, 1.0])
    pretrain_crop_ratio: list = field(default_factory=lambda: [0.75, 1.3333])
    pretrain_flip: bool = False  # pre-training horizontal flip (MAE-ST: true)
    reprob: float = 0.25  # fine-tune cube random-erasing probability
    test_temporal_views: int = 5  # multi-view test: K temporal clips (SSv2: 2)
    test_spatial_views: int = 3  # ...× S spatial crops along the long side
    max_retries: int = 10  # other videos tried (deterministically) when one cannot be read
    # seconds a loader worker may take for one batch before the run stops with an error naming
    # this setting (a hung decode or network mount would otherwise block forever); 0 = wait forever
    loader_timeout_s: float = 600.0
    # batches each loader worker prepares ahead; with num_workers they bound the shared memory
    # (/dev/shm) the loader holds, checked at start-up (giant/data/loader.py)
    prefetch_factor: int = 2
    # training loaders keep their workers across epochs (no re-fork and re-import per epoch;
    # the epoch reaches them through shared memory, so samples stay the same)
    persistent_workers: bool = True


@dataclass
class OptimConfig:
    """Optimiser and schedule (giant/engine/schedule.py), the official VideoMAE V2 curve: linear
    warmup from `warmup_lr` to the peak over `warmup_steps` (the last warmup step at the peak),
    then a half cosine to the end value at `total_steps`. Peak and end scale with the VIDEOS per
    step (videos/GPU × GPUs × accum_steps) / 256, as the official scripts scale --lr and
    --min_lr; the data.num_sample clips of each video are not counted, so repeated augmentation
    leaves the lr alone. `lr` / `min_lr` override them with absolute values."""

    batch_size: int = 2  # videos per GPU per micro-step (each gives data.num_sample clips)
    accum_steps: int = 1
    total_steps: int = 100
    warmup_steps: int = 10
    lr: Optional[float] = None  # absolute peak lr; None = blr · videos per step / 256
    blr: float = 1.5e-4
    # absolute end lr; None = min_blr · videos per step / 256
    min_lr: Optional[float] = None
    # official pre-training --min_lr 1e-5 per 256 videos (ViT-g: × 2048 / 256 = 8e-5); the
    # official fine-tuning default is 1e-6, which its recipes state
    min_blr: float = 1e-5
    warmup_lr: float = 0.0  # absolute lr of step 0 (official: 0)
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None  # cosine wd schedule end; None = constant
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: Optional[float] = None
    layer_decay: Optional[float] = None


@dataclass
class FinetuneConfig:
    """Supervised stages (post-pre-train, fine-tune, distil): targets and head (SPEC §4-5).
    Mixup/CutMix/label smoothing are timm's; mixup and cutmix 0 turn mixing off."""

    mixup: float = 0.8  # Beta(α, α) for Mixup; 0 = off
    cutmix: float = 1.0  # Beta(α, α) for CutMix; 0 = off
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    label_smoothing: float = 0.1
    # JSON list of head rows (`giant data k710 rowmap`): slice a K710 head to K400/600/700
    head_rowmap: str = ""
    eval_batch_size: int = 0  # videos per rank per validation forward; 0 = optim.batch_size


@dataclass
class DistillConfig:
    """Distillation (VideoMAE V2 Table 16): the student (`model`, started from
    `checkpoint.init_from`) learns a frozen teacher classifier's class distribution on the same
    (mixed) clips. The teacher is not trained, not checkpointed and reloaded from `teacher`."""

    # teacher weights (required): a giant run dir / weights.safetensors, an official VideoMAE / V2
    # checkpoint or a Hugging Face VideoMAE directory. A teacher without weights teaches nothing.
    teacher: str = ""
    # model.* fields over the teacher's own model.json, e.g. {name: vit_g} (checked against the
    # weights); the input geometry always follows the student's clips
    teacher_model: Any = field(default_factory=dict)
    temperature: float = 1.0  # T in softmax(logits / T); the KL term is scaled by T²
    hard_weight: float = 0.0  # + weight × CE with the (mixed, smoothed) labels; 0 = KL only
    # weights of the teacher's backbone: auto (bf16 on GPUs, fp16 on GPUs without BF16, bf16 on
    # CPUs with native BF16, else fp32) | bf16 | fp16 | fp32. fc_norm and head stay fp32.
    teacher_precision: str = "auto"
    # JSON list of teacher head rows, one per student class (a K710 teacher for a K400 student:
    # `giant data k710 rowmap`); "" = the class sets are the same
    head_rowmap: str = ""
    # partition the teacher's weights over the ranks with DeepSpeed ZeRO-3 (no optimizer: the
    # ZeRO-Inference path), for a teacher that does not fit one device beside the student: each
    # rank keeps 1/world of it and gathers one module at a time per forward (an all-gather of the
    # whole teacher per micro-step). The whole teacher, head included, is then in teacher_precision.
    teacher_zero3: bool = False


@dataclass
class PrecisionConfig:
    """The policy: encoder in low precision, decoder + target + loss always FP32."""

    # auto | fp32 | bf16 | fp16. auto: BF16 on GPUs (FP16 without BF16), BF16 on CPUs with native
    # BF16, else FP32; resolved once per run (engine/precision.py) and recorded resolved.
    encoder: str = "auto"
    decoder: str = "fp32"  # kept as a field so recipes state it; anything else is refused
    # tf32 | fp32: how a GPU runs the FP32 matmuls (decoder, encoder_to_decoder, heads). tf32 rounds
    # their inputs to TF32 on the tensor cores and accumulates in FP32 (the official code's
    # setting; weights, activations and the loss stay FP32 either way). No effect on CPUs.
    decoder_matmul: str = "tf32"
    # auto | model | block: where the low-precision trunk casts. model: once into it and once out
    # (a BF16/FP16 residual stream, as the official autocast); block: in and out of every block
    # (an FP32 residual stream, two full casts per block). auto: model on GPUs, block elsewhere
    # (the CPU results recorded so far come from it).
    cast: str = "auto"


@dataclass
class EngineConfig:
    """Engine-only knobs that are not DeepSpeed JSON (activation checkpointing, compile)."""

    ds_config: str = "ds_configs/zero2.json"
    activation_checkpointing: str = "off"  # off | all | first:N (first N encoder blocks)
    zero_init: bool = True  # ZeRO-3: build inside deepspeed.zero.Init (no rank holds the full model)
    compile: bool = False  # torch.compile each transformer block (encoder + decoder)
    compile_backend: str = "inductor"  # any torch.compile backend (aot_eager to debug a failure)
    compile_mode: str = ""  # "" = default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    dist_backend: str = ""  # "" = nccl on GPU, gloo on CPU
    # SDPA kernel priority on GPUs: auto (cuDNN first on Hopper, torch's own order elsewhere) or a
    # comma list of cudnn, flash, efficient, math, tried in that order; the ones not named follow,
    # so a kernel that cannot take a shape (FP32 attention) falls through instead of failing.
    # CPUs keep torch's choice.
    attention_backends: str = "auto"


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto | never | PATH
    init_from: str = ""  # run dir / weights of a previous stage


@dataclass
class LoggingConfig:
    log_every: int = 10
    tensorboard: bool = True
    image_every: int = 0  # reconstruction images every N steps (0 = only at the end)
    progress: bool = True


@dataclass
class StageConfig:
    name: str = "pretrain"
    run_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = ""  # "" = cuda if available else cpu
    # Supervised stages: validate (single centre view, top-1/top-5) every N steps and at the end
    eval_every: int = 0
    # End this invocation after N optimizer steps, with a checkpoint (0 = run to optim.total_steps).
    # The schedule still spans total_steps, so a later relaunch continues the same run.
    stop_after: int = 0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed here")
    if base is Any:
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if (base is list or typing.get_origin(base) is list) and isinstance(value, (list, tuple)):
        return list(value)
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys raise with their dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        sub = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, sub)
        else:
            kwargs[key] = _coerce(value, tp, sub)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: '{dotted}' goes through a non-section key '{part}'")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`['optim.lr=1e-3', 'model.name=vit_b']` → nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml_load(raw) if raw != "" else "", f"override '{item}'")
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe YAML (may be None) + dotted overrides → validated RunConfig."""
    tree: dict = {}
    where = "config"
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist (see launch/recipes/ for the shipped ones)")
        try:
            tree = yaml_load(path.read_text()) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"recipe {path} is not UTF-8 text (byte {exc.start}); a recipe is YAML "
                              "(see launch/recipes/)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path}: invalid YAML: {exc}") from exc
        where = str(path)
    extra = parse_overrides(overrides or [])
    from_dict(RunConfig, extra, "override")  # a mistyped override is named as one, not as the recipe's
    tree = _merge(tree, extra)
    cfg = from_dict(RunConfig, tree, where)
    if cfg.mask.encoder == "adaptive" and cfg.model.sampler == "none":
        cfg.model.sampler = "adaptive"  # the mask strategy implies the model part
    validate(cfg)
    return cfg


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
        raise ConfigError("precision.decoder must be fp32 (SPEC §5: the decoder and loss stay FP32)")
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
    act = cfg.engine.activation_checkpointing
    if not (act in ("off", "all") or (act.startswith("first:") and act[6:].isdigit())):
        raise ConfigError(f"engine.activation_checkpointing={act!r}: use off, all or first:N")
    _validate_speed(cfg)


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


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
