"""`giant convert SRC DST [--to giant|hf|official] [--label-map FILE] ...`

SRC is detected: a giant export (weights.safetensors + model.json), an official VideoMAE / V2
checkpoint file (.pth/.pt/.bin, any released layout), or a Hugging Face VideoMAE directory.
DST is a directory for `giant` and `hf`, one .pth file for `official`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from giant.commands._args import ArgumentParser
from giant.console import out
from giant.errors import CheckpointError


def _labels(path: Optional[str]) -> Optional[list[str]]:
    if not path:
        return None
    from giant.data.kinetics710 import read_label_map

    return read_label_map(path)


def _row_map(path: Optional[str]) -> Optional[list[int]]:
    if not path:
        return None
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"--row-map {path}: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, int) for r in rows):
        raise CheckpointError(f"--row-map {path}: expected a JSON list of head rows (integers)")
    return rows


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="giant convert", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="giant export dir, official checkpoint file, or HF VideoMAE dir")
    p.add_argument("dst", help="output directory (giant, hf) or .pth file (official)")
    p.add_argument("--to", choices=["giant", "hf", "official"], default="giant",
                   help="output format (default: giant)")
    p.add_argument("--label-map", default=None,
                   help="class names of the output head, one per line (row i = class i); HF export "
                        "writes them as id2label")
    p.add_argument("--head-labels", default=None,
                   help="label map the stored head was trained with (e.g. the official "
                        "label_map_k710.txt): rows are matched to --label-map by name, K710 renames "
                        "included, which slices 710 -> 400/600/700 and reorders")
    p.add_argument("--row-map", default=None,
                   help="JSON list of stored head rows to keep, in order (e.g. label_710to400.json "
                        "or `giant data k710 rowmap` output)")
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field the weights do not record (num_frames, img_size, "
                        "num_heads for non-standard widths, norm_eps, ...); repeatable")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a torch file that holds Python objects beyond tensors and argparse "
                        "args (runs code from the file: only for files you trust)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    from giant.config import ModelConfig
    from giant.interop import layout
    from giant.interop.convert import apply_labels, load, save
    from giant.models import resolve as resolve_model

    if args.to == "hf":  # before reading a multi-GB source, not after
        from giant.interop.hf import require_transformers

        require_transformers()
    overrides = layout.parse_model_overrides(args.model_override)
    state, info, fmt = load(args.src, args.to, overrides, args.trust_pickle)
    state, info = apply_labels(state, info, _labels(args.label_map), _labels(args.head_labels),
                               _row_map(args.row_map))
    dst = save(args.to, args.dst, state, info)
    cfg = resolve_model(ModelConfig(**info["model"]))
    unknown = f"; input size not recorded ({', '.join(info['unknown'])})" if info.get("unknown") else ""
    out(f"convert: {args.src} ({fmt}) -> {dst} ({args.to}): {layout.describe(cfg, info['kind'])}, "
        f"{sum(t.numel() for t in state.values()):,} parameters{unknown}")
    return 0
