"""Per-GPU peak memory of a training stage from its recipe (`giant memory`, giant/commands/memory.py).

Why analytic: the question ("does ViT-g at 32 videos per GPU fit an 80 GB card, and with how
little activation checkpointing?") must be answered before any GPU is held, for models too large
to build here. Every number is derived from the resolved model shapes, the mask, the DeepSpeed
JSON and giant's precision policy; the activation model is checked against the bytes autograd
actually saves (`saved_tensors_hooks`, tests/test_memory.py).

What one GPU holds (bytes; P parameters, W ranks):
- Model states, giant's policy (engine/precision.py): parameters, gradients, master copy and AdamW
  moments are all FP32. ZeRO-0: 4P + 4P + 8P. ZeRO-1: 4P params, 4P grads + the 4P/W flattened
  partition at the step, 4P/W master (DeepSpeed clones it even from FP32), 8P/W moments. ZeRO-2:
  grads 4P/W. ZeRO-3: params 4P/W plus the gathered working set (stage3_max_live_parameters,
  a bound), master shared with the FP32 shards. Offload moves master, moments and the gradient
  partition (and ZeRO-3 params) to host memory. Plus the JSON's reduce buckets (×2 with
  overlap_comm) and one bucket cast for a non-FP32 communication_data_type.
- Activations saved for backward, per transformer block on n tokens of width D, MLP H, h heads,
  compute dtype a bytes (2 under BF16/FP16 autocast, 4 FP32): the two LayerNorm inputs (an FP32
  copy under CUDA autocast), the four matmul inputs in a, q/k/v (3D·a), the attention output
  (D·a), the MLP hidden before and after GELU (2H·a), softmax statistics (h·4) and LayerNorm
  statistics (4·4): n·(2·ln·D + 6·a·D + 2·a·H + 4·h + 16). A checkpointed block keeps its input
  only (n·D·stream). The BF16 weight copies autocast makes are saved by each non-checkpointed
  matmul and held in autocast's cache until the forward ends.
- Around the blocks: the input batch (uint8 + FP32, + the mixed copy for Mixup/CutMix), the
  pre-training target while the loss is built, the loss terms, a teacher's weights and forward.
- A fixed allowance for the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers
  (CONTEXT_GIB) plus FRAGMENTATION of the allocator's peak for the caching allocator's slack.
Not modelled: AdaMAE's sampler and MAE-ST (model.arch=maest), evaluate stages.

Fastest = least recomputation (off, then first:N with the smallest N, then all); with
`--max-batch`, the largest micro-batch that fits each setting.

Layout: activations.py (the activation model and its policy), planner.py (model states, one
stage's peak, the plan, a stage from a recipe); every name is re-exported here.
"""
from giant.memory.activations import (CONTEXT_GIB, DEFAULT_GPU_GIB, FRAGMENTATION, GIB, KINDS, LOW_BYTES,
                                      Activations, Policy, block_bytes, block_weight_bytes,
                                      classifier_activations, gpu_policy, parse_ckpt, pretrain_activations,
                                      teacher_bytes)
from giant.memory.planner import (Plan, Setting, Stage, Zero, candidates, evaluate, fit_warning, infer_kind,
                                  largest_batch, model_states, plan, stage_from_config, teacher_model)
