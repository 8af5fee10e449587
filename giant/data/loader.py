"""Sharding, collation and failure accounting between the datasets and the engine.

* `ResumableDistributedSampler`: any world size; its state (epoch + samples consumed) restores
  the exact remaining order mid-epoch, even under a different world size.
* `collate_*`: flatten repeated clips, and carry how many reads failed in the workers (which
  are separate processes) to the main process.
* `FailureTracker`: in the main process, stops training with a `DataError` listing the first
  failures once more than `data.max_fail_fraction` of reads fail.
* `make_loader(..., timeout=cfg.data.loader_timeout_s)`: a worker stuck on one batch longer
  than that stops the run with a `DataError` naming the setting instead of hanging forever.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from giant.data.seeding import derive_seed
from giant.errors import DataError

log = logging.getLogger(__name__)


class ResumableDistributedSampler(Sampler):
    """Rank `rank` of `world_size` gets every world_size-th index of the epoch's permutation.

    Padding (drop_last=False) wraps around the permutation so every rank gets the same count;
    drop_last=True truncates instead. The training loop calls `advance(n)` after consuming n
    samples on this rank; `state_dict()` then records the global position."""

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        if dataset_len < 1:
            raise DataError("cannot shard an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if drop_last and dataset_len < world_size:
            raise DataError(f"drop_last with {dataset_len} videos and {world_size} ranks leaves "
                            "no samples; use drop_last=False or a larger manifest")
        self.dataset_len, self.rank, self.world_size = dataset_len, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.consumed = 0  # global samples consumed this epoch (all ranks)

    def set_epoch(self, epoch: int) -> None:
        """New epoch → start at its beginning; the epoch just restored keeps its position."""
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.dataset_len)
        # mixed, not seed + epoch: that would make (seed s, epoch e+1) replay (s+1, e)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(self.dataset_len, generator=g).numpy()

    def _remaining(self) -> np.ndarray:
        """Global order still to come this epoch, padded/truncated to a multiple of world size."""
        perm = self._permutation()
        rest = perm[self.consumed:]
        if self.drop_last:
            return rest[:len(rest) // self.world_size * self.world_size]
        pad = (-len(rest)) % self.world_size
        return np.concatenate([rest, np.resize(perm, pad)]) if pad else rest

    def __iter__(self):
        return iter(self._remaining()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return len(self._remaining()) // self.world_size

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank sees in a whole epoch (for schedules)."""
        n = self.dataset_len
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def advance(self, num_samples: int) -> None:
        """Record that this rank consumed `num_samples` (every rank consumes the same)."""
        self.consumed = min(self.consumed + num_samples * self.world_size, self.dataset_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "dataset_len": self.dataset_len, "shuffle": self.shuffle,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["dataset_len"] != self.dataset_len or state["seed"] != self.seed:
            raise DataError(f"sampler state is for {state['dataset_len']} videos / seed "
                            f"{state['seed']}, this run has {self.dataset_len} / {self.seed}; "
                            "resume with the same manifest and stage.seed")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if state.get("world_size", self.world_size) != self.world_size:
            log.info("resuming sampler saved with world size %s on %s ranks: the remaining "
                     "%d samples are re-sharded", state["world_size"], self.world_size,
                     self.dataset_len - self.consumed)


def _failures(samples: list[dict]) -> dict:
    return {"num_videos": sum(1 for s in samples if s.get("valid", True)),
            "num_failed": sum(s["failed"] for s in samples),
            "failed_paths": [p for s in samples for p in s["failed_paths"]],
            "failed_reasons": [r for s in samples for r in s["failed_reasons"]],
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64)}


def collate_pretrain(samples: list[dict]) -> dict:
    """video uint8 [B·R, C, T, H, W], enc_keep [B·R, K], dec_keep [B·R, M] + failure info."""
    out = {"video": torch.cat([s["video"] for s in samples])}
    for key in ("enc_keep", "dec_keep"):
        if key in samples[0]:
            out[key] = torch.cat([s[key] for s in samples])
    out.update(_failures(samples))
    return out


def collate_labeled(samples: list[dict]) -> dict:
    """video uint8 [B·R, C, T, H, W], label int64 [B·R] (labels repeat with their clips),
    valid bool [B·R] (False = unreadable eval video, zeros) + failure info."""
    videos = [s["video"] if s["video"].dim() == 5 else s["video"][None] for s in samples]
    repeats = torch.tensor([v.shape[0] for v in videos])
    out = {"video": torch.cat(videos),
           "label": torch.tensor([s["label"] for s in samples]).repeat_interleave(repeats),
           "valid": torch.tensor([s["valid"] for s in samples]).repeat_interleave(repeats)}
    out.update(_failures(samples))
    return out


def collate_test(samples: list[dict]) -> dict:
    """video uint8 [B, V, C, T, H, W] (views kept per video for score averaging), label [B]."""
    out = {"video": torch.stack([s["video"] for s in samples]),
           "label": torch.tensor([s["label"] for s in samples]),
           "valid": torch.tensor([s["valid"] for s in samples])}
    out.update(_failures(samples))
    return out


class FailureTracker:
    """Main-process tally of unreadable videos reported by the collated batches."""

    def __init__(self, max_fail_fraction: float = 0.01, min_fail_count: int = 20, keep: int = 10):
        self.max_fail_fraction, self.min_fail_count, self.keep = max_fail_fraction, min_fail_count, keep
        self.attempts = 0
        self.failed = 0
        self.first: list[str] = []  # "path: reason" of the first `keep` failures

    @classmethod
    def from_config(cls, cfg) -> "FailureTracker":
        return cls(cfg.data.max_fail_fraction, cfg.data.min_fail_count)

    def update(self, batch: dict) -> None:
        """Add one collated batch's counts, then raise DataError if past the threshold."""
        self.add(batch["num_videos"], batch["num_failed"], batch["failed_paths"],
                 batch.get("failed_reasons"))
        self.check()

    def add(self, num_ok: int, num_failed: int, paths=(), reasons=None) -> None:
        self.attempts += int(num_ok) + int(num_failed)
        self.failed += int(num_failed)
        reasons = reasons or ["unreadable"] * len(paths)
        for path, reason in zip(paths, reasons):
            if len(self.first) < self.keep:
                self.first.append(f"{path}: {reason}")

    @property
    def fraction(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    def check(self, attempts: Optional[int] = None, failed: Optional[int] = None) -> None:
        """Raise past the threshold; `attempts`/`failed` are totals across ranks when given."""
        attempts = self.attempts if attempts is None else attempts
        failed = self.failed if failed is None else failed
        fraction = failed / attempts if attempts else 0.0
        if failed >= self.min_fail_count and fraction > self.max_fail_fraction:
            listing = "\n  ".join(self.first) or "(none on this rank)"
            raise DataError(
                f"{failed} of {attempts} video reads failed ({fraction:.2%} > "
                f"data.max_fail_fraction={self.max_fail_fraction:g}); first failures here:\n  {listing}\n"
                "Fix or drop these entries (`giant data validate MANIFEST` lists every bad line) "
                "or raise data.max_fail_fraction.")

    def state_dict(self) -> dict:
        return {"attempts": self.attempts, "failed": self.failed, "first": list(self.first)}

    def load_state_dict(self, state: dict) -> None:
        self.attempts, self.failed = int(state["attempts"]), int(state["failed"])
        self.first = list(state["first"])


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}
_CAN_SHIELD = hasattr(signal, "sigwaitinfo")  # Linux


def _worker_init(_: int) -> None:
    # one process per core already; intra-op threads in each would oversubscribe the CPU
    torch.set_num_threads(1)
    shield_worker_from_stop_signals()


def shield_worker_from_stop_signals() -> None:
    """In a DataLoader worker: preemption signals are the rank's to act on, not the worker's.

    Slurm signals every process of a job step, torchrun each rank's process group and the
    deepspeed launcher each rank's process tree, so workers get SIGTERM/SIGUSR1 too. A worker
    that died of one would crash its rank ("DataLoader worker is killed by signal") before the
    rank could finish its step and save. So SIGUSR1 is ignored, and SIGTERM ends a worker only
    when its own rank sent it (DataLoader shutdown, multiprocessing's exit: torch's behaviour)
    or when the rank is gone; from anyone else it is ignored. Without sigwaitinfo (not Linux)
    torch's default stays: SIGTERM from anyone ends the worker."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # also drops one pending since the fork
    if not _CAN_SHIELD:
        return
    rank_pid = os.getppid()
    # blocked since the fork (TimeoutNamingDataLoader), before any other thread of the worker
    # existed: every thread (decoder threads, the queue feeder) inherits the mask, so only the
    # waiter below receives SIGTERM, one that came before it started included
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    threading.Thread(target=_wait_for_sigterm, args=(rank_pid,), name="giant-sigterm",
                     daemon=True).start()


def _wait_for_sigterm(rank_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == rank_pid or os.getppid() != rank_pid:
            os._exit(0)  # what torch's own worker handler does for its parent's SIGTERM


TIMEOUT_SETTING = "data.loader_timeout_s"


def iterate_with_timeout_errors(batches: Iterable, timeout: Optional[float] = None,
                                setting: str = TIMEOUT_SETTING) -> Iterator:
    """Yield the batches of a DataLoader (or of its iterator); DataLoader's bare
    `RuntimeError: DataLoader timed out after N seconds` becomes a DataError naming `setting`.
    Every other error passes through unchanged."""
    timeout = getattr(batches, "timeout", None) if timeout is None else timeout
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if "DataLoader timed out" not in str(exc):
                raise
            _end_stuck_workers(it)
            shown = f"{timeout:g}" if isinstance(timeout, (int, float)) else "?"
            raise DataError(
                f"no batch from the data loader workers within {shown} s ({setting}={shown}): "
                "a worker is stuck, most likely decoding one video (a hung network mount or a "
                "pathological file). Find bad files with `giant data validate MANIFEST`, or "
                f"raise {setting} (0 = wait forever).") from None
        yield batch


def _end_stuck_workers(it: Iterator) -> None:
    """After a timeout: end the workers now, so the rank can exit with the DataError instead
    of waiting at exit for a worker still stuck in its decode. SIGTERM from the rank ends a
    worker at once (see shield_worker_from_stop_signals) unless C code holds the worker's
    GIL; SIGKILL then ends what is left (its pids are out of torch's SIGCHLD watch by then)."""
    workers = getattr(it, "_workers", None)
    if not workers:
        return
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(timeout=1)
    it._shutdown_workers()
    for w in workers:
        if w.is_alive():
            w.kill()
            w.join(timeout=5)


class TimeoutNamingDataLoader(DataLoader):
    """A DataLoader whose iterators raise DataError (naming data.loader_timeout_s) instead of
    DataLoader's bare RuntimeError when a worker exceeds `timeout`.

    Workers are forked with SIGTERM/SIGUSR1 blocked (a child inherits the mask): a preemption
    signal that reaches a new worker before its worker_init_fn has shielded it stays pending
    instead of killing it (Slurm signals the whole job at once, often as an epoch starts)."""

    def __iter__(self) -> Iterator:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if _CAN_SHIELD else None
        try:
            it = super().__iter__()
        finally:  # this process's own signals: pending ones are delivered now
            if previous is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return iterate_with_timeout_errors(it, self.timeout)


class SharedEpochDataset(Dataset):
    """`dataset` for persistent workers: they were forked with the epoch of their first epoch, so
    `set_epoch` also writes the epoch into a shared-memory tensor, which each worker reads
    before an item and hands on to its own copy (items are functions of (seed, epoch, index),
    so they stay the same). Everything else is the wrapped dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._epoch = torch.full((), int(getattr(dataset, "epoch", 0)), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index):
        epoch = int(self._epoch)
        if getattr(self.dataset, "epoch", epoch) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # before __init__ set it (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def make_loader(dataset, sampler: Optional[Sampler], batch_size: int, num_workers: int,
                collate_fn, pin_memory: bool = False, prefetch_factor: int = 2,
                timeout: float = 0, persistent: bool = False, item_bytes: int = 0) -> DataLoader:
    """A DataLoader with the settings the datasets rely on: one torch thread per worker, and
    workers that see `dataset.set_epoch` (re-created each epoch, or with `persistent` kept and
    told through shared memory: SharedEpochDataset).

    `timeout`: seconds a worker may take for one batch (pass `cfg.data.loader_timeout_s`);
    0 = wait forever. Past it, iterating raises DataError naming data.loader_timeout_s. With
    num_workers=0 batches are built in this process and no timeout applies. `item_bytes`: the
    bytes one item puts into shared memory, for check_shared_memory (0 = no check)."""
    if timeout < 0:
        raise DataError(f"{TIMEOUT_SETTING}={timeout:g}: use seconds > 0, or 0 to wait forever")
    persistent = persistent and num_workers > 0
    if item_bytes and num_workers > 0:
        check_shared_memory(item_bytes * batch_size, num_workers, prefetch_factor)
    return TimeoutNamingDataLoader(
        SharedEpochDataset(dataset) if persistent else dataset, batch_size=batch_size, sampler=sampler,
        num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory, drop_last=False,
        persistent_workers=persistent, worker_init_fn=_worker_init,
        prefetch_factor=prefetch_factor if num_workers > 0 else None, timeout=timeout if num_workers > 0 else 0)


# ----------------------------------------------------------------------------- shared memory
SHM = "/dev/shm"
SHM_WARN_SHARE = 0.5  # warn past this share of the free space: other ranks' loaders and peaks need room


def clip_item_bytes(clips: int, chans: int, frames: int, size: int, index_tokens: int = 0,
                    labels: bool = False) -> int:
    """Bytes one dataset item sends from a worker: `clips` uint8 clips (C, T, H, W), int64 index
    tensors of `index_tokens` per clip (the masks), int64 labels."""
    return clips * (chans * frames * size * size + 8 * index_tokens + (8 if labels else 0))


def ranks_on_this_node() -> int:
    """Loaders of every rank on a node share its /dev/shm: LOCAL_WORLD_SIZE (torchrun),
    SLURM_NTASKS_PER_NODE (srun --ntasks-per-node), else 1."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def check_shared_memory(batch_bytes: int, num_workers: int, prefetch_factor: int,
                        path: str = SHM) -> Optional[str]:
    """Workers hand batches to their rank through shared memory, `prefetch_factor` each ahead:
    up to batch × workers × prefetch per rank, × the ranks of the node, live in `path` at once.
    A container's small /dev/shm then kills the run with a bus error mid-epoch, so: a DataError
    when the estimate exceeds the free space, a warning past half of it. → the warning or None."""
    import shutil

    try:
        free = shutil.disk_usage(path).free
    except OSError:  # no /dev/shm (not Linux): torch shares memory another way there
        return None
    ranks = ranks_on_this_node()
    need = batch_bytes * num_workers * prefetch_factor * ranks
    if need <= SHM_WARN_SHARE * free:
        return None
    fit = int(SHM_WARN_SHARE * free // max(1, batch_bytes * prefetch_factor * ranks))
    fixes = [f"data.num_workers={fit}" if fit >= 1 else "data.num_workers=0 (batches built in the rank)"]
    if prefetch_factor > 1:
        fixes.append("data.prefetch_factor=1")
    gib = 2 ** 30
    msg = (f"the data loaders need about {need / gib:.1f} GiB of shared memory ({batch_bytes / gib:.2f} GiB "
           f"per batch × data.num_workers={num_workers} × data.prefetch_factor={prefetch_factor} × "
           f"{ranks} rank(s) on this node) and {path} has {free / gib:.1f} GiB free: set "
           f"{' or '.join(fixes)}, or give the container more shared memory (docker --shm-size)")
    if need > free:
        raise DataError(msg)
    log.warning("%s", msg)
    return msg


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch on the sampler and the dataset before `iter(loader)`."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
