"""Engine checkpoints (resume) and consolidated weights (next stage).

Layout under `RUN_DIR/checkpoints/`:
    latest                 text: the tag of the newest COMPLETE checkpoint
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

Export uses DeepSpeed's zero_to_fp32 (any ZeRO stage, ZeRO-3 included) and needs neither the
training world size nor a GPU: `giant export RUN_DIR`.

Resuming ZeRO shards on a different number of ranks (a requeue that got fewer or more nodes)
goes through DeepSpeed's universal checkpoint: rank 0 converts `step_N/` once into
`step_N/universal/` (ds_to_universal; parameters and Adam moments per parameter, independent of
the world size), and the engine is built with `checkpoint.load_universal` to load it. Every save
carries the `universal_checkpoint_info` DeepSpeed's converter asks for.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from giant.console import ArgumentParser
from giant.engine import safe_load
from giant.errors import CheckpointError, ConfigError, GiantError
from giant.safety import CHECKPOINT_NAMES, remove_checkpoint_dir

log = logging.getLogger(__name__)

META = "giant_meta.json"
LATEST = "latest"
UNIVERSAL = "universal"  # sub-directory of a step_* checkpoint: its world-size-free copy
TAG_RE = re.compile(r"^step_(\d{8,})$")
WEIGHTS, MODEL_JSON = "weights.safetensors", "model.json"
FORMAT = "giant-weights-v1"
# Model fields that decide parameter shapes: a checkpoint must match them to be resumed.
ARCH_KEYS = ("name", "img_size", "num_frames", "tubelet_size", "in_chans", "patch_size", "embed_dim",
             "depth", "num_heads", "mlp_ratio", "decoder_embed_dim", "decoder_depth",
             "decoder_num_heads", "decoder_mlp_ratio", "num_classes", "arch", "sampler", "pred_t_dim")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _fsync_write(path: Path, text: str) -> None:
    """Write via a temp file + os.replace so readers see the old or the new content, never half."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


# What a run that has started training leaves in its directory (config.yaml, ds_config.json
# and the ERROR/PREEMPTED markers are rewritten by every start and prove nothing).
RUN_RECORDS = ("checkpoints", "metrics.jsonl", "tensorboard", "images", WEIGHTS, "summary.json")


def prepare_run_dir(run_dir: str | Path, resume: str) -> None:
    """Refuse checkpoint.resume=never over an earlier run: the new run would append to its
    metrics.jsonl and TensorBoard logs, and its later checkpoints would stay next to the new
    ones (a requeue with resume=auto would then continue the OLD run). Runs before any process
    group exists; every rank sees the same files, so every rank refuses alike."""
    if resume != "never":
        return
    def holds(path: Path) -> bool:  # an empty file or folder (a start that failed) holds nothing
        return path.stat().st_size > 0 if path.is_file() else path.is_dir() and any(path.iterdir())

    run_dir = Path(run_dir)
    found = [name for name in RUN_RECORDS if holds(run_dir / name)]
    if found:
        raise ConfigError(
            f"checkpoint.resume=never but {run_dir} already holds a run ({', '.join(found)}); "
            f"starting over there would mix the two. Use a new stage.run_dir, move or delete "
            f"{run_dir}, or set checkpoint.resume=auto to continue that run")


# ----------------------------------------------------------------------------- save
class CheckpointManager:
    """Save / resume / prune engine checkpoints of one run (`root` = RUN_DIR/checkpoints)."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = max(1, keep_last)

    def save(self, engine: Any, step: int, client_state: dict, meta: dict) -> Path:
        """Collective: every rank must call. Returns the final checkpoint directory."""
        tag, rank = tag_for(step), _rank()
        tmp, final = self.root / f".tmp_{tag}", self.root / tag
        t0 = time.time()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_checkpoint_dir(tmp)  # leftover of a crashed save
        _barrier()
        client_state = {**client_state, **universal_info()}
        engine.save_checkpoint(str(self.root), tag=tmp.name, client_state=client_state, save_latest=False)
        torch.save(rng_state(), tmp / f"rng_rank{rank:05d}.pt")
        _barrier()
        if rank == 0:
            _fsync_write(tmp / META, json.dumps({**meta, "step": step, "tag": tag,
                                                 "saved_at": time.time()}, indent=2))
            if final.exists():  # re-saving a step (e.g. after resuming from it): replace
                trash = self.root / f".old_{tag}"
                os.rename(final, trash)
                _discard(trash)
            os.rename(tmp, final)
            _fsync_write(self.root / LATEST, tag)
            self._prune(keep=tag)
            log.info("checkpoint %s saved in %.1fs", final, time.time() - t0)
        _barrier()
        return final

    def _prune(self, keep: str) -> None:
        found = [t for _, t in list_checkpoints(self.root)]
        for tag in found[:-self.keep_last]:
            if tag != keep:
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
        if _rank() == 0:
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

    def load(self, engine: Any, root: Path, tag: str, expect: dict) -> dict:
        """Restore engine + this rank's RNG; check the checkpoint fits `expect`. → client_state.

        A checkpoint from another world size loads its universal copy (see `needs_reshard`);
        the engine must then have been built with load_universal (build_engine does that)."""
        meta = read_meta(root / tag)
        check_compatible(meta, expect, root / tag)
        load_dir, load_tag = root, tag
        reshard = needs_reshard(meta, expect)
        if reshard:
            check_reshardable(meta, expect, root / tag)
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
        rng_file = root / tag / f"rng_rank{_rank():05d}.pt"
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


def check_compatible(meta: dict, expect: dict, where: Path) -> None:
    """Same model architecture and kind; a different global batch only warns (see needs_reshard
    for world size and ZeRO stage)."""
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


def convert_universal(root: Path, tag: str, trust_pickle: bool = False) -> Path:
    """root/tag → root/tag/universal (once; temp dir + rename, so a crash mid-way is redone).
    Weights-only unless `trust_pickle` (a resume, which unpickles the run dir anyway)."""
    src, dst = root / tag, root / tag / UNIVERSAL
    if (dst / "zero").is_dir():
        return dst
    tmp, failed = root / tag / f".tmp_{UNIVERSAL}", root / tag / f".failed_{UNIVERSAL}"
    remove_checkpoint_dir(tmp, ignore_errors=True)
    remove_checkpoint_dir(failed, ignore_errors=True)
    need = sum(f.stat().st_size for f in src.glob("*.pt"))  # the copy is about as large
    free = shutil.disk_usage(src).free
    if free < need:
        msg = (f"{src}: converting for another world size needs about {need / 2**30:.1f} GiB free there, "
               f"{free / 2**30:.1f} GiB is; free space, or relaunch with the world size that wrote it")
        with contextlib.suppress(OSError):
            _fsync_write(failed, msg)
        raise CheckpointError(msg)
    safe_load.check_files(sorted(src.glob("*_states.pt")), safe_load.deepspeed_types(), trust_pickle)
    t0 = time.time()
    log.info("%s: converting to a universal checkpoint (world-size and ZeRO-stage free)", src)
    try:
        _ds_to_universal(src, tmp, trust_pickle)
    except Exception as exc:  # its asserts and I/O errors: one line naming the checkpoint
        remove_checkpoint_dir(tmp, ignore_errors=True)
        msg = (f"{src}: converting to a universal checkpoint failed ({type(exc).__name__}: {exc}); "
               "relaunch with the world size and ZeRO config that wrote it")
        with contextlib.suppress(OSError):  # e.g. a read-only checkpoint dir: the launcher ends the peers
            _fsync_write(failed, msg)
        raise CheckpointError(msg) from exc
    os.rename(tmp, dst)
    log.info("%s written in %.1fs", dst, time.time() - t0)
    return dst


def prepare_universal(root: Path, tag: str, poll_s: float = 2.0, wait_s: float = 6 * 3600,
                      rank: Optional[int] = None) -> Path:
    """Collective. Rank 0 converts; the other ranks poll the shared filesystem instead of waiting
    in a barrier, because converting a ViT-g checkpoint can outlast a process-group timeout."""
    dst, failed = root / tag / UNIVERSAL, root / tag / f".failed_{UNIVERSAL}"
    first = (_rank() if rank is None else rank) == 0
    if first:  # a marker from an earlier failed attempt must not stop the peers this time
        remove_checkpoint_dir(failed)
    _barrier()
    if first:
        convert_universal(root, tag, trust_pickle=True)
    else:
        deadline = time.time() + wait_s
        while not (dst / "zero").is_dir():
            if failed.is_file():
                raise CheckpointError(failed.read_text())
            if time.time() > deadline:
                raise CheckpointError(f"{dst} did not appear within {wait_s:.0f}s; run `giant reshard "
                                      f"{root / tag}` once, then relaunch")
            time.sleep(poll_s)
    _barrier()
    return dst


@contextlib.contextmanager
def _patched_argv(argv: list[str]):
    import sys

    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def _ds_to_universal(src: Path, out: Path, trust_pickle: bool = False) -> None:
    import multiprocessing

    from deepspeed.checkpoint import ds_to_universal

    workers = max(1, min(4, (os.cpu_count() or 1) // 2))
    start = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if not trust_pickle and start != "fork":
        workers = 1  # spawned workers would not inherit weights_only_everywhere's allow-list
    argv = ["ds_to_universal", "--input_folder", str(src), "--output_folder", str(out),
            "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2)),
            "--inject_missing_state"]  # checkpoints saved before universal_info() existed
    chatter = io.StringIO()  # it print()s stages and draws tqdm bars
    loads = contextlib.nullcontext() if trust_pickle else \
        safe_load.weights_only_everywhere(safe_load.deepspeed_types())
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
            _patched_argv(argv), loads:  # its own parser: future options keep their defaults
        ds_to_universal.main(ds_to_universal.parse_arguments())
    log.debug("ds_to_universal: %s", chatter.getvalue().strip())


# ----------------------------------------------------------------------------- export
def consolidated_state_dict(root: Path, tag: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """FP32 full state dict from any ZeRO stage, on CPU, without a process group. Weights-only
    (DeepSpeed's loaders forced too) unless `trust_pickle`: a run dir from elsewhere runs no code."""
    meta = read_meta(root / tag)
    types = safe_load.deepspeed_types()
    if meta.get("zero_stage", 0) == 0:
        files = sorted((root / tag).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{root / tag}: no mp_rank_*_model_states.pt; the checkpoint is incomplete")
        saved = safe_load.load(files[0], types, trust_pickle, expected="a DeepSpeed model-states file",
                               fix="if you trust this run dir, re-run with --trust-pickle")
        if not isinstance(saved, dict) or not isinstance(saved.get("module"), dict):
            raise CheckpointError(f"{files[0]}: no 'module' weights in it; not a DeepSpeed checkpoint file")
        return saved["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    safe_load.check_files(sorted((root / tag).glob("*_states.pt")), types, trust_pickle)
    loads = contextlib.nullcontext() if trust_pickle else safe_load.weights_only_everywhere(types)
    try:
        chatter = io.StringIO()  # it print()s its progress and draws a tqdm bar
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), loads, \
                safe_load.guard(root / tag):
            state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        log.debug("zero_to_fp32: %s", chatter.getvalue().strip())
        return state
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{root / tag}: cannot consolidate ZeRO shards ({exc})") from exc


def export_weights(root: str | Path, out_dir: str | Path, tag: Optional[str] = None,
                   provenance: Optional[dict] = None, trust_pickle: bool = False) -> tuple[Path, Path]:
    """Write out_dir/weights.safetensors (fp32) + out_dir/model.json from one checkpoint."""
    from safetensors.torch import save_file

    root, out_dir = Path(root), Path(out_dir)
    tag = tag or latest_tag(root)
    if not tag:
        raise CheckpointError(f"{root}: no complete checkpoint to export (train first, or point at a "
                              "run dir / its checkpoints dir)")
    meta = read_meta(root / tag)
    state = consolidated_state_dict(root, tag, trust_pickle)
    # Own, contiguous fp32 copies: safetensors refuses views that share storage.
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, model_json = out_dir / WEIGHTS, out_dir / MODEL_JSON
    tmp = weights.with_name(weights.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.chmod(tmp, 0o644)
    os.replace(tmp, weights)
    info = {"format": FORMAT, "kind": meta.get("kind", "pretrain"),
            "model": meta.get("model_full", meta.get("model", {})),
            "mask": meta.get("mask"), "num_params": int(sum(t.numel() for t in tensors.values())),
            "provenance": {"checkpoint": str((root / tag).resolve()), "step": meta.get("step"),
                           "stage": meta.get("stage"), "zero_stage": meta.get("zero_stage"),
                           "world_size": meta.get("world_size"), "exported_at": time.time(),
                           **(provenance or {})}}
    _fsync_write(model_json, json.dumps(info, indent=2) + "\n")
    log.info("exported %d tensors (%d params) from %s to %s", len(tensors), info["num_params"],
             root / tag, weights)
    return weights, model_json


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, model.json) from an exported directory (or its weights file), or from an
    official VideoMAE / V2 checkpoint or HF VideoMAE directory, converted (giant.interop)."""
    from safetensors.torch import load_file

    path = Path(path)
    d = path if path.is_dir() else path.parent
    if path.is_file() and path.name not in (WEIGHTS, MODEL_JSON) or not (d / WEIGHTS).is_file() \
            or not (d / MODEL_JSON).is_file():
        from giant.interop import load_foreign  # official VideoMAE / V2 files, HF dirs: converted

        foreign = load_foreign(path)
        if foreign is not None:
            return foreign
        raise CheckpointError(f"{d}: expected {WEIGHTS} and {MODEL_JSON} (run `giant export RUN_DIR` first), "
                              "an official VideoMAE / V2 checkpoint file or a Hugging Face VideoMAE directory")
    info = json.loads((d / MODEL_JSON).read_text())
    return load_file(str(d / WEIGHTS)), info


def _resolve_root(path: Path, tag: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """(checkpoints dir, tag or None) from what the user named: a run dir, its checkpoints/ dir
    or one step_* dir."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; expected a run dir, its checkpoints/ dir or a "
                              "step_* checkpoint dir")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a run dir, its checkpoints/ dir or a step_* "
                              "checkpoint dir (giant convert reads single checkpoint files)")
    if tag is not None and not TAG_RE.match(tag):
        raise CheckpointError(f"--tag {tag!r}: a checkpoint tag is step_ and 8 or more digits (the "
                              "directory names under RUN_DIR/checkpoints)")
    if (path / META).is_file():
        return path.parent, tag or path.name
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", tag
    return path, tag


TRUST_HELP = ("load the checkpoint with DeepSpeed's unrestricted unpickler, which runs code stored "
              "in the files (only for run dirs you trust); by default it loads weights only")


def main(argv: Optional[list] = None) -> int:
    """`giant export RUN_DIR [--tag step_N] [--out DIR]`: consolidate for the next stage. The
    checkpoint loads weights-only: exporting a run dir from elsewhere runs none of its code."""
    p = ArgumentParser(prog="giant export", description=main.__doc__)
    p.add_argument("path", help="run dir, its checkpoints/ dir, or one step_* checkpoint dir")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest complete)")
    p.add_argument("--out", default=None, help="output dir (default: the run dir)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    root, tag = _resolve_root(Path(args.path), args.tag)
    out = Path(args.out) if args.out else (root.parent if root.name == "checkpoints" else root)
    weights, model_json = export_weights(root, out, tag, trust_pickle=args.trust_pickle)
    log.info("wrote %s and %s", weights, model_json)
    return 0


def reshard_main(argv: Optional[list] = None) -> int:
    """`giant reshard PATH`: write the universal copy of a checkpoint ahead of a resume on a
    different number of ranks (the resume does it itself otherwise, on rank 0, while the other
    ranks wait). Runs on CPU, no process group; needs about the checkpoint's size again on disk.
    The checkpoint loads weights-only (DeepSpeed's converter included): no code from it runs."""
    p = ArgumentParser(prog="giant reshard", description=reshard_main.__doc__)
    p.add_argument("path", help="run dir, its checkpoints/ dir, or one step_* checkpoint dir")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: latest complete)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    args = p.parse_args(argv)
    root, tag = _resolve_root(Path(args.path), args.tag)
    tag = tag or latest_tag(root)
    if not tag:
        raise CheckpointError(f"{args.path}: no complete checkpoint to convert")
    meta = read_meta(root / tag)
    if meta.get("zero_stage", 0) == 0:
        raise CheckpointError(f"{root / tag}: a ZeRO-0 checkpoint holds one full copy and resumes on any "
                              "number of ranks as it is")
    dst = convert_universal(root, tag, args.trust_pickle)
    log.info("wrote %s: resume with any number of ranks and a ZeRO-%d config", dst, meta["zero_stage"])
    return 0
