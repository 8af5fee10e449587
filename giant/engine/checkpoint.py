"""Engine checkpoints for resuming a run: save, find, load, prune.

Layout under `RUN_DIR/checkpoints/`:
    latest                 text: the tag of the newest COMPLETE checkpoint
    best                   text: the tag pinned as the best evaluation's (checkpoint.export
                           best|both, engine/best.py): never pruned, never the resume point
                           unless it is also the newest
    step_00001200/         DeepSpeed files + giant_meta.json + rng_rankNNNNN.pt
    .tmp_step_00001300/    a save in progress (ignored, removed by the next save)

Atomicity: every rank writes into `.tmp_<tag>` (DeepSpeed's save_checkpoint with that tag and
`save_latest=False`, then its own RNG file); after a barrier rank 0 writes giant_meta.json,
renames the directory to `<tag>` (rename is atomic on POSIX) and swaps `latest` via os.replace.
A crash at any moment leaves `latest` naming a complete checkpoint; resume also falls back to
the newest directory that has giant_meta.json if `latest` is missing. Assumes the checkpoint
directory is on a filesystem all ranks share (the usual cluster setup).

What is saved: DeepSpeed's own files (module, ZeRO optimizer shards, skipped-step count) with
`client_state` = step, sampler position, loss-scaler and data-failure state, resolved config;
giant_meta.json = model architecture, world size, ZeRO stage (checked before loading, so a wrong
model is a CheckpointError, not a size-mismatch traceback); one RNG file per rank, because
DeepSpeed writes client_state from data-parallel rank 0 only and RNG streams differ per rank.

Resuming on another world size goes through a universal copy (engine/reshard.py); consolidating
a checkpoint into the next stage's artifact is engine/export.py. `check_compatible` is the one
check of a checkpoint against the run that wants to resume it. Every save carries the
`universal_checkpoint_info` DeepSpeed's converter asks for.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from giant.artifact import write_text_atomic
from giant.errors import CheckpointError, GiantError
from giant.safety import CHECKPOINT_NAMES, remove_checkpoint_dir

log = logging.getLogger(__name__)

META = "giant_meta.json"
LATEST = "latest"
BEST = "best"  # the pinned tag: kept by pruning (engine/best.py)
UNIVERSAL = "universal"  # sub-directory of a step_* checkpoint: its world-size-free copy
TAG_RE = re.compile(r"^step_(\d{8,})$")
# Model fields that decide parameter shapes: a checkpoint must match them to be resumed.
ARCH_KEYS = ("name", "img_size", "num_frames", "tubelet_size", "in_chans", "patch_size", "embed_dim",
             "depth", "num_heads", "mlp_ratio", "decoder_embed_dim", "decoder_depth",
             "decoder_num_heads", "decoder_mlp_ratio", "num_classes", "arch", "sampler", "pred_t_dim")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def global_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def rng_state() -> dict:
    """This rank's generators in plain types (tensors, numbers, tuples), so the file loads with
    weights_only=True. CUDA: the current device's generator only, the one this rank draws from
    (every visible device's made a resume fail when the ranks see other devices)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore rng_state(); also reads the older files (numpy's ndarray state, and a list with
    every visible device's CUDA state: this rank's device's is used when the same number of
    devices is visible, else the fresh per-rank seeds stay)."""
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32) if torch.is_tensor(keys) else keys, *rest))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if torch.is_tensor(cuda):
        torch.cuda.set_rng_state(cuda)
    elif len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state(cuda[torch.cuda.current_device()])
    else:
        log.info("the checkpoint's CUDA RNG states are of %d devices, this rank sees %d: it keeps its "
                 "fresh per-rank seed", len(cuda), torch.cuda.device_count())


def _numpy_rng_globals() -> list:
    """What an older rng file pickled numpy's state with (an ndarray of uint32)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_rng_state(path: Path) -> dict:
    """An rng_rank*.pt file, weights-only (numpy's array types allowed for the older format)."""
    with torch.serialization.safe_globals(_numpy_rng_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- listing
def list_checkpoints(root: Path) -> list[tuple[int, str]]:
    """Complete checkpoints (those with giant_meta.json), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = TAG_RE.match(d.name)
        if m and (d / META).is_file():
            found.append((int(m.group(1)), d.name))
    return sorted(found)


def latest_tag(root: Path) -> Optional[str]:
    """`latest` if it names a complete checkpoint, else the newest complete one, else None."""
    latest = root / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        if (root / tag / META).is_file():
            return tag
        log.warning("%s names %r, which is incomplete or missing; using the newest complete one", latest, tag)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def pinned_tag(root: Path) -> Optional[str]:
    """The tag checkpoints/best names (a step_N name), or None."""
    try:
        tag = (root / BEST).read_text().strip()
    except OSError:
        return None
    return tag if TAG_RE.match(tag) else None


def verify_files(tag_dir: Path) -> Optional[str]:
    """Cheap integrity check of every torch file in a checkpoint (the zip directory at its end
    is present and lists a data.pkl): catches truncation without reading the tensors.
    → None, or 'path: reason' for the first damaged file."""
    for f in sorted(tag_dir.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    return f"{f}: not a torch checkpoint file (no data.pkl)"
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{f}: damaged ({exc})"
    return None


def _newest_intact(root: Path) -> Optional[str]:
    """latest_tag's choice, or the newest older complete checkpoint if that one is damaged."""
    first = latest_tag(root)
    order = [first] + [t for _, t in reversed(list_checkpoints(root)) if t != first] if first else []
    for tag in order:
        damage = verify_files(root / tag)
        if damage is None:
            return tag
        log.warning("skipping checkpoint %s: %s; trying an older one (the damaged one is left for "
                    "inspection and replaced when training passes that step again)", root / tag, damage)
    return None


def read_meta(tag_dir: Path) -> dict:
    try:
        return json.loads((tag_dir / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{tag_dir / META}: unreadable ({exc}); pick another checkpoint "
                              "with checkpoint.resume=PATH or delete this directory") from exc


# ----------------------------------------------------------------------------- save
class CheckpointManager:
    """Save / resume / prune engine checkpoints of one run (`root` = RUN_DIR/checkpoints)."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = max(1, keep_last)

    def save(self, engine: Any, step: int, client_state: dict, meta: dict, pin: bool = False) -> Path:
        """Collective: every rank must call. Returns the final checkpoint directory. `pin`: it
        becomes checkpoints/best (after it is complete, so a crash leaves the previous pin)."""
        tag, rank = tag_for(step), global_rank()
        tmp, final = self.root / f".tmp_{tag}", self.root / tag
        t0 = time.time()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_checkpoint_dir(tmp)  # leftover of a crashed save
        barrier()
        client_state = {**client_state, **universal_info()}
        engine.save_checkpoint(str(self.root), tag=tmp.name, client_state=client_state, save_latest=False)
        torch.save(rng_state(), tmp / f"rng_rank{rank:05d}.pt")
        barrier()
        if rank == 0:
            write_text_atomic(tmp / META, json.dumps({**meta, "step": step, "tag": tag,
                                                 "saved_at": time.time()}, indent=2))
            if final.exists():  # re-saving a step (e.g. after resuming from it): replace
                trash = self.root / f".old_{tag}"
                os.rename(final, trash)
                _discard(trash)
            os.rename(tmp, final)
            write_text_atomic(self.root / LATEST, tag)
            if pin:
                write_text_atomic(self.root / BEST, tag)
            self._prune(keep=tag)
            log.info("checkpoint %s saved in %.1fs", final, time.time() - t0)
        barrier()
        return final

    def _prune(self, keep: str) -> None:
        found = [t for _, t in list_checkpoints(self.root)]
        pinned = pinned_tag(self.root)
        for tag in found[:-self.keep_last]:
            if tag not in (keep, pinned):
                _discard(self.root / tag)
        # abandoned partial saves, and replaced copies a crash left behind mid-re-save (giant's
        # names only: anything else in checkpoints/ is not giant's to delete)
        for d in [*self.root.glob(".tmp_*"), *self.root.glob(".old_*")]:
            if d.name != f".tmp_{keep}" and CHECKPOINT_NAMES.match(d.name):
                _discard(d)

    # ------------------------------------------------------------------------- resume
    def find(self, resume: str) -> Optional[tuple[Path, str]]:
        """checkpoint.resume → (checkpoints dir, tag) or None for a fresh start.

        auto / a run dir: the newest complete checkpoint whose files are intact; a damaged one
        (truncated by a storage fault after it was committed) is skipped with a warning, so an
        auto-requeued run falls back instead of failing on every requeue. An explicit step_*
        dir must be intact.

        Collective under a process group of several ranks: rank 0 chooses and broadcasts its
        answer (or its error), so the other ranks open no checkpoint file (not world × files
        opens) and every rank resumes the same tag even when a network filesystem shows the
        ranks different listings."""
        if resume == "never":
            return None
        if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return self._choose(resume)
        answer: list = [None]
        error: Optional[BaseException] = None
        if global_rank() == 0:
            try:
                answer = [("ok", self._choose(resume))]
            except Exception as exc:  # the peers wait in the broadcast: they must hear of it too
                error = exc
                said = str(exc) if isinstance(exc, CheckpointError) else \
                    f"rank 0 could not choose the checkpoint to resume ({type(exc).__name__}: {exc})"
                answer = [("error", said)]
        torch.distributed.broadcast_object_list(answer, src=0)
        if error is not None:
            raise error
        kind, value = answer[0]
        if kind == "error":
            raise CheckpointError(value)
        return value

    def _choose(self, resume: str) -> Optional[tuple[Path, str]]:
        """find()'s choice, made from this rank's view of the filesystem."""
        path = Path(resume)
        if resume != "auto" and (path / META).is_file():  # a tag directory: exactly that one
            damage = verify_files(path)
            if damage:
                raise CheckpointError(f"{damage}; pick another checkpoint with checkpoint.resume=PATH")
            return path.parent, path.name
        roots = [self.root] if resume == "auto" else [path, path / "checkpoints"]
        for root in roots:
            found = _newest_intact(root)
            if found:
                return root, found
            if list_checkpoints(root):  # never start a long run over silently
                raise CheckpointError(f"{root}: every complete checkpoint is damaged (see the warnings "
                                      "above); restore one, or set checkpoint.resume=never to start over")
        if resume == "auto":
            return None
        raise CheckpointError(f"checkpoint.resume={resume}: no complete checkpoint there (expected a "
                              f"run dir, its checkpoints/ dir or a step_* dir containing {META})")

    def load(self, engine: Any, root: Path, tag: str, meta: dict, reshard: bool, expect: dict) -> dict:
        """Restore engine + this rank's RNG as the caller's resume plan decided: `meta` is the
        checkpoint's giant_meta.json, already checked against `expect` (check_compatible), and
        `reshard` says it loads through its universal copy (prepare_universal done, the engine
        built with load_universal). → client_state."""
        load_dir, load_tag = root, tag
        if reshard:
            if not getattr(engine, "load_universal_checkpoint", lambda: False)():
                raise CheckpointError(f"{root / tag} was written by {meta.get('world_size')} ranks with "
                                      f"ZeRO-{meta.get('zero_stage')}: build the engine with "
                                      "load_universal=True after prepare_universal()")
            load_dir, load_tag = root / tag, UNIVERSAL
        try:
            path, client = engine.load_checkpoint(str(load_dir), tag=load_tag, load_module_strict=True,
                                                  load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        except (RuntimeError, KeyError, ValueError, FileNotFoundError, AssertionError) as exc:
            raise CheckpointError(f"{root / tag}: cannot be loaded into this model/engine ({exc}); "
                                  "resume with the recipe that wrote it or set checkpoint.resume=never") from exc
        if path is None:
            raise CheckpointError(f"{root / tag}: DeepSpeed found no checkpoint files; delete it or "
                                  "set checkpoint.resume=never")
        rng_file = root / tag / f"rng_rank{global_rank():05d}.pt"
        if rng_file.is_file() and not reshard:
            # on another world size rank r's stream would belong to different samples: keep
            # the fresh per-rank seeds (data order and augmentation do not depend on them)
            set_rng_state(read_rng_state(rng_file))
        if reshard:
            log.info("resumed from %s (step %d): written by %d ranks with ZeRO-%d, re-sharded onto %d "
                     "ranks with ZeRO-%d", root / tag, meta["step"], meta["world_size"],
                     meta.get("zero_stage", 0), expect["world_size"], expect.get("zero_stage", 0))
        else:
            log.info("resumed from %s (step %d)", root / tag, meta["step"])
        return client


def _discard(path: Path) -> None:
    """Prune under giant.safety's rule; a refused or failed deletion leaves the folder and warns
    (the checkpoint just written is safe either way, so training goes on)."""
    try:
        remove_checkpoint_dir(path, ignore_errors=True)
    except GiantError as exc:
        log.warning("%s", exc)


def check_compatible(meta: dict, expect: dict, where: Path) -> bool:
    """The one check of a checkpoint against the run resuming it: same model architecture and
    kind, and ZeRO state this run can load; a different global batch only warns.
    → whether it loads through a universal copy (another world size or ZeRO stage)."""
    got, want = meta.get("model", {}), expect.get("model", {})
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if diff:
        pairs = ", ".join(f"model.{k}: checkpoint {got.get(k)!r} vs recipe {want.get(k)!r}" for k in diff[:4])
        raise CheckpointError(f"{where} holds a different model ({pairs}); use the recipe that wrote it, "
                              "another stage.run_dir, or checkpoint.resume=never")
    if meta.get("kind") and expect.get("kind") and meta["kind"] != expect["kind"]:
        raise CheckpointError(f"{where} is a {meta['kind']} checkpoint, this run trains a {expect['kind']} "
                              "model; use checkpoint.init_from for weights from another stage")
    got_batch, want_batch = meta.get("global_batch_clips"), expect.get("global_batch_clips")
    if got_batch and want_batch and got_batch != want_batch:
        log.warning("%s was trained with a global batch of %d clips, this run has %d: the lr scales "
                    "with it and the data order shifts; set optim.accum_steps so that "
                    "batch_size×num_sample×accum_steps×ranks stays %d to continue the same run",
                    where, got_batch, want_batch, got_batch)
    if not needs_reshard(meta, expect):
        return False
    check_reshardable(meta, expect, where)
    return True


def _family(stage: int) -> int:
    """ZeRO-1 and -2 share DeepSpeed's optimizer-shard format; 0 and 3 each have their own."""
    return {0: 0, 1: 1, 2: 1}.get(stage, 3)


def needs_reshard(meta: dict, expect: dict) -> bool:
    """ZeRO shards written by another world size or ZeRO stage load through a universal copy."""
    got, want = meta.get("zero_stage", 0), expect.get("zero_stage", 0)
    if got == 0 and want == 0:
        return False  # one full copy, no shards
    return meta.get("world_size") != expect.get("world_size") or got != want


def check_reshardable(meta: dict, expect: dict, where: Path) -> None:
    got, want = meta.get("zero_stage", 0), expect.get("zero_stage", 0)
    if _family(got) != _family(want):
        raise CheckpointError(
            f"{where} holds ZeRO-{got} state, this run uses ZeRO-{want}: DeepSpeed cannot move optimizer "
            f"state between these; resume with a ZeRO-{got} config (any number of ranks), or `giant export` "
            "it and start a new run with checkpoint.init_from (weights only)")


def universal_info() -> dict:
    """The client-state entry DeepSpeed's ds_to_universal requires of ZeRO-1/2 checkpoints
    (Megatron writes it; a plain model has no tensor-parallel slices to describe)."""
    try:
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO,
                                                    UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)
    except ImportError:  # an optional extra must never break a save; conversion injects it then
        return {}
    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def resolve_root(path: Path, tag: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """(checkpoints dir, tag or None) from what the user named: a run dir, its checkpoints/ dir
    or one step_* dir."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; expected a run dir, its checkpoints/ dir or a "
                              "step_* checkpoint dir")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a run dir, its checkpoints/ dir or a step_* "
                              "checkpoint dir (giant convert reads single checkpoint files)")
    if tag is not None and tag != BEST and not TAG_RE.match(tag):
        raise CheckpointError(f"--tag {tag!r}: a checkpoint tag is step_ and 8 or more digits (the "
                              "directory names under RUN_DIR/checkpoints), or best")
    if (path / META).is_file():
        root, tag = path.parent, tag or path.name
    else:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if tag == BEST:  # the pinned best evaluation's checkpoint
        tag = pinned_tag(root)
        if tag is None or not (root / tag).is_dir():
            raise CheckpointError(f"{root}: no best checkpoint pinned (the run needs checkpoint.export="
                                  "best or both and an evaluation); export --tag step_N or the latest")
    return root, tag

