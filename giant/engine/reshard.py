"""Resuming ZeRO shards on another number of ranks or another ZeRO stage of the same shard
format: rank 0 converts `step_N/` once into `step_N/universal/` with DeepSpeed's
ds_to_universal (parameters and Adam moments per parameter, independent of the world size), and
the engine is built with `checkpoint.load_universal` to load it. `giant reshard PATH` does the
conversion ahead of time, on CPU. Which checkpoints need it: checkpoint.check_compatible.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from giant.artifact import write_text_atomic
from giant.engine import safe_load
from giant.engine.checkpoint import UNIVERSAL, barrier, global_rank
from giant.errors import CheckpointError
from giant.safety import remove_checkpoint_dir

log = logging.getLogger(__name__)


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
            write_text_atomic(failed, msg)
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
            write_text_atomic(failed, msg)
        raise CheckpointError(msg) from exc
    os.rename(tmp, dst)
    log.info("%s written in %.1fs", dst, time.time() - t0)
    return dst


def prepare_universal(root: Path, tag: str, poll_s: float = 2.0, wait_s: float = 6 * 3600,
                      rank: Optional[int] = None) -> Path:
    """Collective. Rank 0 converts; the other ranks poll the shared filesystem instead of waiting
    in a barrier, because converting a ViT-g checkpoint can outlast a process-group timeout."""
    dst, failed = root / tag / UNIVERSAL, root / tag / f".failed_{UNIVERSAL}"
    first = (global_rank() if rank is None else rank) == 0
    if first:  # a marker from an earlier failed attempt must not stop the peers this time
        remove_checkpoint_dir(failed)
    barrier()
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
    barrier()
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
