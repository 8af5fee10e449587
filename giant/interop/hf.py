"""Hugging Face transformers VideoMAE (VideoMAEForPreTraining / VideoMAEForVideoClassification) ↔ giant.

Key table (docs/reference.md §8), giant → HF, per encoder block i (giant `blocks.i.` in classifiers,
`encoder.blocks.i.` in pre-training models → `videomae.encoder.layer.i.`) and decoder block j
(`decoder.blocks.j.` → `decoder.decoder_layers.j.`):
    attn.qkv.weight        → attention.attention.{query,key,value}.weight (split in thirds)
    attn.q_bias / v_bias   → attention.attention.query.bias / value.bias (transformers 5.x)
                             attention.attention.q_bias / v_bias           (transformers 4.x)
    attn.proj              → attention.output.dense
    mlp.fc1 / mlp.fc2      → intermediate.dense / output.dense
    norm1 / norm2          → layernorm_before / layernorm_after
and `patch_embed.proj` → `videomae.embeddings.patch_embeddings.projection`, `encoder.norm` →
`videomae.layernorm`, `head` → `classifier`; fc_norm, encoder_to_decoder, mask_token,
decoder.norm and decoder.head keep their names. The 4.x/5.x bias names are chosen by
instantiating the installed transformers' model and reading its keys; imports accept both.

Inputs differ in layout only: HF takes (B, T, C, H, W) and a boolean mask (True = masked; its
decoder reconstructs every masked token, i.e. giant with decoder mask `none`).

Epsilon: giant uses one LayerNorm eps (1e-6, the official value). HF reads `layer_norm_eps` for
the blocks and the encoder norm, which export sets to giant's value, but builds `fc_norm` and
`decoder.norm` with PyTorch's default 1e-5 whatever the config says. `match_norm_eps(model)`
sets those too for exact parity; without it outputs agree to the tolerance in docs/interop.md.

Only export needs transformers (the `giant[hf]` extra); reading an HF directory, as `giant convert`
source, init_from or teacher, needs config.json and safetensors only.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch

from giant.config import ModelConfig
from giant.errors import CheckpointError, ConfigError
import giant.interop.layout as layout

log = logging.getLogger(__name__)

CONFIG, SAFE, SAFE_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
ARCH = {"pretrain": "VideoMAEForPreTraining", "classifier": "VideoMAEForVideoClassification"}
BLOCK = [("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
         ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
         ("mlp.fc2", "output.dense")]
TOP = [("encoder.patch_embed.proj", "videomae.embeddings.patch_embeddings.projection"),
       ("patch_embed.proj", "videomae.embeddings.patch_embeddings.projection"),
       ("encoder.norm", "videomae.layernorm"), ("head", "classifier")]
BIAS_STYLES = {"5.x": ("query.bias", "value.bias"), "4.x": ("q_bias", "v_bias")}


def key_table(cfg: ModelConfig, kind: str, bias_style: str = "5.x") -> list[tuple[str, list[str]]]:
    """(giant key, HF keys) for every giant tensor; qkv.weight maps to three HF tensors."""
    q_name, v_name = BIAS_STYLES[bias_style]
    table = []
    for gkey in layout.expected_shapes(cfg, kind):
        m = re.match(r"^(encoder\.|decoder\.)?blocks\.(\d+)\.(.+)$", gkey)
        if m:
            base = (f"decoder.decoder_layers.{m.group(2)}." if m.group(1) == "decoder."
                    else f"videomae.encoder.layer.{m.group(2)}.")
            rest, att = m.group(3), base + "attention.attention."
            if rest == "attn.qkv.weight":
                table.append((gkey, [att + n + ".weight" for n in ("query", "key", "value")]))
            elif rest in ("attn.q_bias", "attn.v_bias"):
                table.append((gkey, [att + (q_name if rest == "attn.q_bias" else v_name)]))
            else:
                part, leaf = rest.rsplit(".", 1)
                table.append((gkey, [base + dict(BLOCK)[part] + "." + leaf]))
            continue
        part, _, leaf = gkey.rpartition(".")
        hf = dict(TOP).get(part)
        table.append((gkey, [f"{hf}.{leaf}" if hf else gkey]))
    return table


def to_hf_state(state: dict, cfg: ModelConfig, kind: str, bias_style: str = "5.x") -> dict:
    out = {}
    for gkey, hkeys in key_table(cfg, kind, bias_style):
        parts = state[gkey].chunk(3) if len(hkeys) == 3 else [state[gkey]]
        out.update({h: p.contiguous().clone() for h, p in zip(hkeys, parts)})
    return out


def from_hf_state(hf: dict, cfg: ModelConfig, kind: str, src: str) -> dict:
    """giant state dict from HF tensors; unknown / missing keys → one error listing them."""
    style = "4.x" if any(k.endswith("attention.attention.q_bias") for k in hf) else "5.x"
    table = key_table(cfg, kind, style)
    used = {h for _, hkeys in table for h in hkeys}
    missing = [h for _, hkeys in table for h in hkeys if h not in hf]
    unexpected = [k for k in hf if k not in used]
    if missing or unexpected:
        parts = [f"{label} {layout.listed(items)}" for label, items in
                 (("unexpected", unexpected), ("missing", missing)) if items]
        raise CheckpointError(
            f"{src}: {len(missing) + len(unexpected)} tensor(s) do not fit the model its config.json "
            f"describes, a {layout.describe(cfg, kind)}: {'; '.join(parts)}")
    out = {}
    for gkey, hkeys in table:
        parts = [hf[h].float() for h in hkeys]
        out[gkey] = torch.cat(parts) if len(parts) == 3 else parts[0].clone()
    layout.check_fit(out, cfg, kind, src, rename={g: h[0] for g, h in table})
    return out


def hf_config_dict(cfg: ModelConfig, kind: str, labels: Optional[list[str]] = None) -> dict:
    """VideoMAEConfig arguments describing a giant model."""
    side = cfg.img_size // cfg.patch_size
    if cfg.pos_grid and tuple(cfg.pos_grid) != (cfg.num_frames // cfg.tubelet_size, side, side):
        raise CheckpointError(f"model.pos_grid={cfg.pos_grid} (a resampled position table) has no "
                              "transformers equivalent; HF builds the table for its own grid")
    conf = dict(image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans,
                num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim,
                num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), hidden_act="gelu",
                layer_norm_eps=cfg.norm_eps, qv_bias=True, use_mean_pooling=kind == "classifier",
                decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
                decoder_num_attention_heads=cfg.decoder_num_heads,
                decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.decoder_mlp_ratio),
                norm_pix_loss=True, architectures=[ARCH[kind]])
    if kind == "classifier":
        names = labels if labels is not None else [f"LABEL_{i}" for i in range(cfg.num_classes)]
        conf["id2label"] = {i: n for i, n in enumerate(names)}
        conf["label2id"] = {n: i for i, n in enumerate(names)}
    return conf


def config_from_hf(conf: dict, keys: set[str], src: str) -> tuple[ModelConfig, str, Optional[list]]:
    """(giant config, kind, labels) from a config.json."""
    from giant.models import resolve as resolve_model
    arch = (conf.get("architectures") or [""])[0]
    kind = {v: k for k, v in ARCH.items()}.get(arch) or layout.kind_of(
        {k.replace("decoder.decoder_layers", "decoder.blocks"): None for k in keys})
    if kind == "classifier" and "classifier.weight" not in keys:
        raise CheckpointError(f"{src}: {arch or 'a VideoMAE model'} without a classifier head; giant "
                              "converts VideoMAEForPreTraining and VideoMAEForVideoClassification")
    if kind == "classifier" and not conf.get("use_mean_pooling", True):
        raise CheckpointError(f"{src}: use_mean_pooling=false classifies the first token; giant's "
                              "classifier mean-pools (the official fine-tuned models do too)")
    if conf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{src}: hidden_act={conf['hidden_act']!r}; giant's MLP uses exact GELU")
    img, patch = conf.get("image_size", 224), conf.get("patch_size", 16)
    img, patch = (_square(img, "image_size", src), _square(patch, "patch_size", src))
    dim, dec = conf.get("hidden_size", 768), conf.get("decoder_hidden_size", 384)
    fields = dict(img_size=img, patch_size=patch, in_chans=conf.get("num_channels", 3),
                  num_frames=conf.get("num_frames", 16), tubelet_size=conf.get("tubelet_size", 2),
                  embed_dim=dim, depth=conf.get("num_hidden_layers", 12),
                  num_heads=conf.get("num_attention_heads", 12),
                  mlp_ratio=layout.mlp_ratio_for(conf.get("intermediate_size", 3072), dim),
                  decoder_embed_dim=dec, decoder_depth=conf.get("decoder_num_hidden_layers", 4),
                  decoder_num_heads=conf.get("decoder_num_attention_heads", 6),
                  decoder_mlp_ratio=layout.mlp_ratio_for(conf.get("decoder_intermediate_size", 1536), dec),
                  norm_eps=float(conf.get("layer_norm_eps", 1e-12)))
    labels = None
    if kind == "classifier":
        id2label = {int(k): v for k, v in (conf.get("id2label") or {}).items()}
        fields["num_classes"] = len(id2label) or int(conf.get("num_labels", 2))
        names = [id2label.get(i, f"LABEL_{i}") for i in range(fields["num_classes"])]
        labels = None if names == [f"LABEL_{i}" for i in range(len(names))] else names
    elif not conf.get("norm_pix_loss", True):
        log.warning("%s: norm_pix_loss=false; giant's loss always uses the per-patch normalised "
                    "target (outputs are unchanged, the loss differs)", src)
    fields["name"] = layout.size_name(fields)
    return resolve_model(ModelConfig(**fields)), kind, labels


def _square(value, name: str, src: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{src}: {name}={value} is not square; giant models are square")
        value = value[0]
    return int(value)


def read_hf_tensors(d: Path, src: str) -> dict:
    """All tensors of an HF model directory: single or sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    if (d / SAFE).is_file():
        return load_file(str(d / SAFE))
    for index, loader in ((SAFE_INDEX, lambda f: load_file(str(f))),
                          (BIN_INDEX, lambda f: torch.load(f, map_location="cpu", weights_only=True))):
        if (d / index).is_file():
            files = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            out = {}
            for name in files:
                out.update(loader(d / name))
            return out
    if (d / BIN).is_file():
        return torch.load(d / BIN, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{src}: has {CONFIG} but no {SAFE}, {SAFE_INDEX} or {BIN}")


def load_hf(path: str | Path, overrides: Optional[dict] = None) -> tuple[dict, dict]:
    """(giant state dict in FP32, model.json-style info) from an HF VideoMAE directory."""
    from giant.models import resolve as resolve_model
    path = Path(path)
    d = path if path.is_dir() else path.parent
    src = str(d)
    conf = json.loads((d / CONFIG).read_text())
    if conf.get("model_type", "videomae") != "videomae":
        raise CheckpointError(f"{src}: model_type={conf.get('model_type')!r}; giant converts 'videomae'")
    hf = read_hf_tensors(d, src)
    cfg, kind, labels = config_from_hf(conf, set(hf), src)
    if overrides:
        import dataclasses

        cfg = resolve_model(dataclasses.replace(cfg, **overrides))
    state = from_hf_state(hf, cfg, kind, src)
    return state, layout.model_info(cfg, kind, state, labels, converted_from=str(d.resolve()),
                                    source_format="hf")


def save_hf(out_dir: str | Path, state: dict, info: dict) -> Path:
    """A directory `VideoMAEFor*.from_pretrained(out_dir)` loads: config.json + model.safetensors,
    with the installed transformers' key names."""
    from giant.models import resolve as resolve_model
    from safetensors.torch import save_file

    VideoMAEConfig = require_transformers().VideoMAEConfig
    cfg, kind = resolve_model(ModelConfig(**info["model"])), info["kind"]
    hf_conf = VideoMAEConfig(**hf_config_dict(cfg, kind, info.get("labels")))
    expected = hf_model_keys(hf_conf, kind)  # the installed version's names decide 4.x vs 5.x
    style = "4.x" if any(k.endswith("attention.attention.q_bias") for k in expected) else "5.x"
    tensors = to_hf_state(state, cfg, kind, style)
    if set(tensors) != expected:  # the installed transformers renamed something: say what
        raise CheckpointError(f"the installed transformers' {ARCH[kind]} expects other keys: missing "
                              f"{sorted(expected - set(tensors))[:5]}, "
                              f"extra {sorted(set(tensors) - expected)[:5]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(out_dir / SAFE),
              metadata={"format": "pt"})
    hf_conf.save_pretrained(str(out_dir))
    return out_dir


def hf_model_keys(hf_conf, kind: str) -> set[str]:
    """State-dict keys of the installed transformers' model for this config (built on meta)."""
    transformers = require_transformers()

    with torch.device("meta"):
        return set(getattr(transformers, ARCH[kind])(hf_conf).state_dict())


def require_transformers():
    """The transformers module, or one line naming the extra: it is not a core dependency
    (~150 MB with tokenizers and huggingface_hub for one export path)."""
    try:
        import transformers
    except ImportError as exc:  # a broken install (found but does not import) gets the same line
        absent = isinstance(exc, ModuleNotFoundError) and exc.name == "transformers"
        why = "" if absent else f" (transformers does not import: {(str(exc) or type(exc).__name__).splitlines()[0]})"
        raise ConfigError(f"--to hf needs the Hugging Face extra{why}: pip install 'giant[hf]'") from None
    return transformers


def match_norm_eps(model: torch.nn.Module, eps: float = 1e-6) -> torch.nn.Module:
    """Set every LayerNorm's eps (HF hard-codes 1e-5 in fc_norm and decoder.norm) for exact parity."""
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps
    return model
