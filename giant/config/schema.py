"""The config tree's types: one dataclass per recipe section, their defaults, and the YAML
1.2 loader recipes are read with (giant.config re-exports every name)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import yaml


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
    """Architecture. `name` picks a row of giant.models.MODEL_SIZES; any None field is filled
    from it by giant.models.resolve."""

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
    # Sizes are filled and checked by giant.models.resolve(cfg) (the models own MODEL_SIZES).


def token_grid(cfg: ModelConfig) -> tuple[int, int, int]:
    """(T', H', W') of the token grid for a resolved model config: pure arithmetic, so data and
    masking code can ask without importing the model package."""
    return (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size,
            cfg.img_size // cfg.patch_size)


@dataclass
class MaskConfig:
    """Encoder and decoder masking (docs/reference.md §3). decoder='none' or decoder_ratio 0 = VideoMAE V1."""

    # tube | random | frame | block | adaptive (AdaMAE: the model's sampler draws int(N·(1−ratio))
    # visible tokens; the loader then sends a placeholder, see giant/masking.py)
    encoder: str = "tube"
    ratio: float = 0.9
    decoder: str = "running_cell"  # running_cell | none
    decoder_ratio: float = 0.5
    block_min_tokens: int = 16  # block masking: smallest cube (in tokens) drawn per step


@dataclass
class DataConfig:
    """Where clips come from and how they are sampled (docs/reference.md §4)."""

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
    short_side: int = 0  # eval/test: resize the short side to this before cropping; 0 = model.img_size (docs/reference.md §4)
    test_manifest: str = ""  # multi-view test list; "" = val_manifest
    sampling: str = "dense"  # dense (stride τ) | segments (TSN: 1 frame per segment, SSv2)
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # fine-tune RandAugment; "" = off
    flip: bool = True  # fine-tune horizontal flip (false for Something-Something)
    train_scale: list = field(default_factory=lambda: [0.08, 1.0])  # fine-tune random resized crop area range
    # Pre-training crop: multiscale (VideoMAE / V2 / AdaMAE: MultiScaleCrop, docs/reference.md §4) | rrc
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
    """Supervised stages (post-pre-train, fine-tune, distil): targets and head (docs/reference.md §4-5).
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
    # What RUN_DIR/weights.safetensors holds: the last step (last), the best evaluation's step
    # (best), or the best with the last one in RUN_DIR/last/ too (both); best needs evaluation
    export: str = "last"  # last | best | both
    best_metric: str = "val/top1"  # an evaluation scalar; also what stage.early_stop watches
    best_mode: str = "auto"  # auto (min when the name contains "loss", else max) | max | min


@dataclass
class LoggingConfig:
    # keys a recipe may still carry from older releases: named with their replacement
    RETIRED: ClassVar[dict] = {"tensorboard": "replaced by logging.report_to: write "
                               "logging.report_to=[tensorboard] (or [] for none)"}
    log_every: int = 10
    # experiment trackers (rank 0): tensorboard | wandb | mlflow; wandb / mlflow are the
    # `giant[wandb]` / `giant[mlflow]` extras and are imported only when named here
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    image_every: int = 0  # reconstruction images every N steps (0 = only at the end)
    progress: bool = True
    # torch.profiler over optimizer steps start+1 .. start+steps on rank 0, trace under
    # RUN_DIR/tensorboard/profile/; {} = off, e.g. {start: 10, steps: 3}
    profile: Any = field(default_factory=dict)


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
    # Stop after this many evaluations in a row without checkpoint.best_metric improving by more
    # than early_stop_min_delta (0 = off; needs eval_every > 0); ends with reason early_stop
    early_stop: int = 0
    early_stop_min_delta: float = 0.0


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
