"""Multi-view evaluation: K temporal clips × S spatial crops per video, video score = mean of
per-view softmax (docs/reference.md §4). `giant evaluate RUN_DIR_OR_WEIGHTS` / `deepspeed launch/evaluate.py`.

Each video is decoded once for all its views (TestViews) and forwarded as one batch of its
views, so a video's score does not depend on how videos are split over ranks: a 2-rank result
equals a 1-rank one. The test set is sharded with padding (every rank runs the same number of
forwards) and the scores are gathered with torch.distributed, never through text files on a
shared filesystem; padding duplicates are dropped so every video counts once. Unreadable videos
are reported and counted, with accuracy given both over readable videos and over all.

`--reference EVAL_DIR` compares these scores with another evaluation of the same videos (a
distilled student against its teacher's evaluation): top-1 agreement and the mean KL divergence
from the reference's video scores. Every evaluation writes its scores to scores.npz for this.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from giant.config import RunConfig, load_config
from giant.errors import ConfigError
from giant.stages.sharding import PaddedShardSampler, all_gather_rows

log = logging.getLogger(__name__)
SCORES = "scores.npz"  # per video: path, readable, mean softmax over its views (for --reference)


def output_dir(out: Optional[str], target: Optional[str]) -> Optional[Path]:
    """--out, else TARGET/eval for a run dir; None when neither applies."""
    if out:
        return Path(out)
    return Path(target) / "eval" if target and Path(target).is_dir() else None


def _config_from(target: Optional[str], recipe: Optional[str], overrides: list[str]) -> RunConfig:
    """A run dir's own config.yaml (model + data) is the base; the recipe and overrides win."""
    tree_overrides: list[str] = []
    saved = False
    if target:
        p = Path(target)
        run_cfg = p / "config.yaml" if p.is_dir() else p.parent / "config.yaml"
        if run_cfg.is_file() and not recipe:
            recipe, saved = str(run_cfg), True  # written by giant, perhaps an older one
        tree_overrides.append(f"checkpoint.init_from={target}")
    return load_config(recipe, tree_overrides + overrides, saved=saved)


def _model_cfg(cfg: RunConfig) -> Any:
    from giant.artifact import artifact_model

    art = artifact_model(cfg.checkpoint.init_from) if cfg.checkpoint.init_from else None
    if art is None:
        raise ConfigError(f"{cfg.checkpoint.init_from or 'checkpoint.init_from (empty)'} holds no model.json: "
                          "point it at a run dir with weights.safetensors (fine-tune first, or `giant export`)")
    fields = {f.name for f in dataclasses.fields(cfg.model)}
    model_cfg = dataclasses.replace(cfg.model, **{k: v for k, v in art.items() if k in fields})
    if model_cfg.num_classes < 1:
        raise ConfigError(f"{cfg.checkpoint.init_from}: the weights are not a classifier "
                          "(num_classes 0); evaluate a fine-tuned run")
    from giant.models import resolve

    return resolve(model_cfg)


def build_eval_model(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    from giant.interop import load_weights
    from giant.engine.precision import apply_precision
    from giant.models import build_model

    model_cfg = _model_cfg(cfg)
    state, _ = load_weights(cfg.checkpoint.init_from)
    model_cfg = _slice_head(cfg, model_cfg, state)
    model = build_model(model_cfg, "classifier", init=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{cfg.checkpoint.init_from}: weights do not fit the classifier "
                          f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    apply_precision(model, cfg.precision.encoder, device.type, cfg.precision.cast)
    return model.to(device).eval(), model_cfg


def _slice_head(cfg: RunConfig, model_cfg: Any, state: dict) -> Any:
    """finetune.head_rowmap on a head with more rows than the map (a K710 model scored on
    K400/600/700 labels, e.g. the distilled student): keep the mapped rows, in the map's order.
    A head with as many rows as the map was sliced when it was fine-tuned and is left alone."""
    from giant.artifact import read_rowmap, slice_head

    if not cfg.finetune.head_rowmap or "head.weight" not in state:
        return model_cfg
    rows = read_rowmap(cfg.finetune.head_rowmap)
    have = state["head.weight"].shape[0]
    if have == len(rows):
        return model_cfg
    slice_head(state, rows, f"finetune.head_rowmap={cfg.finetune.head_rowmap}", cfg.checkpoint.init_from)
    log.info("head sliced %d → %d rows by %s", have, len(rows), cfg.finetune.head_rowmap)
    return dataclasses.replace(model_cfg, num_classes=len(rows))


def video_score(logits_VC: torch.Tensor) -> torch.Tensor:
    """A video's class scores [C] from its views' logits [V, C]: the mean of the per-view
    softmax, as the official merge (method 'prob') forms it. Averaging logits first would let
    one confident view outweigh the others differently and can change the prediction."""
    return logits_VC.float().softmax(dim=-1).mean(dim=0)


@torch.no_grad()
def score_videos(model: torch.nn.Module, loader: Any, device: torch.device, mean, std,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per video in this rank's shard: (index, label, valid, mean softmax over its views)."""
    from giant.data import normalize_on_device

    rows_i, rows_y, rows_v, rows_s = [], [], [], []
    for batch in loader:
        for b in range(batch["video"].shape[0]):  # one video = one forward of its views
            x = normalize_on_device(batch["video"][b].to(device), mean, std)
            rows_s.append(video_score(model(x)).cpu())
        rows_i.append(batch["index"])
        rows_y.append(batch["label"])
        rows_v.append(batch["valid"])
    if not rows_s:
        return (torch.zeros(0, dtype=torch.long),) * 2 + (torch.zeros(0, dtype=torch.bool),
                                                         torch.zeros(0, num_classes))
    return torch.cat(rows_i), torch.cat(rows_y), torch.cat(rows_v), torch.stack(rows_s)


def summarise(index: np.ndarray, label: np.ndarray, valid: np.ndarray, scores: np.ndarray,
              num_classes: int) -> dict:
    """Accuracy over readable videos and over all (unreadable = wrong), per-class accuracy,
    confusion matrix (rows = truth)."""
    pred = scores.argmax(1)
    k = min(5, num_classes)
    top5 = np.argsort(-scores, axis=1)[:, :k]
    hit1 = (pred == label) & valid
    hit5 = (top5 == label[:, None]).any(1) & valid
    n_ok, n_all = int(valid.sum()), len(label)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (label[valid], pred[valid]), 1)
    per_class = {int(c): (float(confusion[c, c] / confusion[c].sum() * 100) if confusion[c].sum() else None)
                 for c in range(num_classes)}
    return {"videos": n_all, "readable": n_ok, "unreadable": n_all - n_ok,
            "top1": 100.0 * hit1.sum() / max(n_ok, 1), "top5": 100.0 * hit5.sum() / max(n_ok, 1),
            "top1_all": 100.0 * hit1.sum() / max(n_all, 1), "top5_all": 100.0 * hit5.sum() / max(n_all, 1),
            "per_class_top1": per_class, "confusion": confusion.tolist()}


def reference_scores(reference: Path) -> Path:
    file = Path(reference) / SCORES
    if not file.is_file():
        raise ConfigError(f"--reference {reference}: no {SCORES} there; evaluate the reference first "
                          f"(`giant evaluate RUN --out {reference}`)")
    return file


def compare(reference: Path, paths: list, valid: np.ndarray, scores: np.ndarray) -> dict:
    """How well these video scores match another evaluation's (the teacher's, for a student):
    top-1 agreement and mean KL(reference ‖ these) over the videos both could read."""
    with np.load(reference_scores(reference), allow_pickle=False) as z:
        r_paths, r_valid, r_scores = list(z["path"]), z["valid"], z["scores"]
    if r_paths != list(paths) or r_scores.shape != scores.shape:
        raise ConfigError(f"--reference {reference}: its {len(r_paths)} videos × {r_scores.shape[1]} classes "
                          f"are not these {len(paths)} × {scores.shape[1]}; evaluate both on the same "
                          "data.test_manifest with the same class list")
    both = valid & r_valid
    p, q = r_scores[both], scores[both]
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(1)
    n = int(both.sum())  # 0: no video both could read, so nothing to compare (not 0% agreement)
    return {"reference": str(reference), "reference_videos": n,
            "agreement_top1": 100.0 * float((p.argmax(1) == q.argmax(1)).mean()) if n else None,
            "kl_from_reference": float(kl.mean()) if n else None}


def confusion_png(confusion: np.ndarray, path: Path, cell: int = 0) -> None:
    """Row-normalised confusion matrix as a heat map (white = 0, dark blue = 1), truth on rows."""
    from PIL import Image

    c = np.asarray(confusion, dtype=np.float64)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    cell = cell or max(1, min(32, 800 // max(len(c), 1)))
    rgb = np.stack([255 * (1 - norm), 255 * (1 - 0.7 * norm), 255 * (1 - 0.2 * norm)], -1)
    img = np.kron(rgb, np.ones((cell, cell, 1))).astype(np.uint8)
    Image.fromarray(img).save(path)


def _write_outputs(out_dir: Path, entries: list, idx: np.ndarray, label: np.ndarray, valid: np.ndarray,
                   scores: np.ndarray, result: dict, class_names: Optional[list]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "path", "label", "pred", "top5", "score_pred", "score_label", "readable"])
        for i, y, v, s in zip(idx, label, valid, scores):
            order = np.argsort(-s)[:5]
            w.writerow([int(i), entries[int(i)].path, int(y), int(order[0]), " ".join(map(str, order)),
                        f"{s[order[0]]:.6f}", f"{s[int(y)]:.6f}", int(v)])
    np.savez(out_dir / SCORES, path=np.array([entries[int(i)].path for i in idx]), valid=valid,
             scores=scores.astype(np.float32))
    confusion_png(np.asarray(result["confusion"]), out_dir / "confusion.png")
    if class_names:
        result["class_names"] = class_names
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")


class EvaluateStage:
    """The evaluate kind as giant/stages/registry.py names it. It trains nothing, so it runs
    `run` below on the driver's set-up (set_up, join) instead of the training loop."""

    kind = "evaluate"

    @staticmethod
    def clip_flops(cfg: RunConfig, model_cfg: Any, teacher: Any = None) -> float:
        """One view's forward; a video costs views × this."""
        from giant.flops import count

        return count(model_cfg, "finetune")["flops"]


def run(cfg: RunConfig, out_dir: Optional[str] = None, reference: Optional[str] = None) -> dict:
    """Collective over all ranks; rank 0 writes results.json, predictions.csv, scores.npz,
    confusion.png."""
    from giant.data import TestViews, collate_test, make_loader
    from giant.stages.driver import join, set_up
    from giant.stages.inputs import check_evaluate

    # weights, test list (every line, labels inside the head), reference scores, output folder:
    # a mistake fails in seconds on every rank, before any process group or output exists
    check_evaluate(cfg, reference, str(output_dir(out_dir, cfg.checkpoint.init_from) or cfg.stage.run_dir))
    cfg, device = set_up(cfg)  # the driver's set-up: device, precision, then the process group
    out = output_dir(out_dir, cfg.checkpoint.init_from) or Path(cfg.stage.run_dir)
    rank, world = join(cfg, device, out)
    model, model_cfg = build_eval_model(cfg, device)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    dataset = TestViews.from_config(cfg, "test")
    sampler = PaddedShardSampler(len(dataset), rank, world, batch=1)
    loader = make_loader(dataset, sampler, 1, cfg.data.num_workers, collate_test,
                         timeout=cfg.data.loader_timeout_s)
    mean = torch.tensor(cfg.data.mean, device=device)
    std = torch.tensor(cfg.data.std, device=device)
    idx, label, valid, scores = score_videos(model, loader, device, mean, std, model_cfg.num_classes)
    real = sampler.real_mask()
    packed = torch.cat([idx[:, None].double(), label[:, None].double(), (valid & real)[:, None].double(),
                        real[:, None].double(), scores.double()], 1).to(device)
    gathered = all_gather_rows(packed).cpu().numpy()
    gathered = gathered[gathered[:, 3] > 0]  # padding duplicates out: each video once
    gathered = gathered[np.argsort(gathered[:, 0], kind="stable")]
    g_idx, g_lab = gathered[:, 0].astype(np.int64), gathered[:, 1].astype(np.int64)
    g_valid, g_scores = gathered[:, 2] > 0, gathered[:, 4:]
    result = summarise(g_idx, g_lab, g_valid, g_scores, model_cfg.num_classes)
    result.update(views=dataset.num_views, temporal=dataset.num_temporal, spatial=dataset.num_spatial,
                  world_size=world, weights=str(cfg.checkpoint.init_from))
    if rank == 0:
        if reference:
            paths = [dataset.entries[int(i)].path for i in g_idx]
            result.update(compare(Path(reference), paths, g_valid, g_scores))
            if result["reference_videos"]:
                log.info("against %s: top-1 agreement %.2f%%, KL %.4f nats over %d videos", reference,
                         result["agreement_top1"], result["kl_from_reference"], result["reference_videos"])
            else:
                log.warning("against %s: no video readable in both evaluations, nothing compared", reference)
        _write_outputs(out, dataset.entries, g_idx, g_lab, g_valid, g_scores, result, None)
        log.info("evaluated %d videos × %d views: top-1 %.2f top-5 %.2f (%d unreadable; over all "
                 "videos top-1 %.2f); results in %s", result["videos"], dataset.num_views,
                 result["top1"], result["top5"], result["unreadable"], result["top1_all"], out)
    result["out_dir"] = str(out)
    return result

