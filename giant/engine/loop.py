"""The step loop: accumulate, step, schedule, log, checkpoint, signals, non-finite guard.

Knows nothing about videos: a stage hands it a batch source and a `step_fn(engine, batch) ->
(loss, output)`. One optimizer step = `accum_steps` micro-batches; DeepSpeed's engine.step()
is called after each backward and applies the update at the accumulation boundary.

Every step ends with ONE small all-reduce of (loss sum, signal flag): every rank sees the same
mean loss and the same stop decision, so a signal that reaches ranks at different moments, or
a NaN on one rank, can never leave ranks waiting on each other.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from giant.config import OptimConfig
from giant.engine.deepspeed import set_lr_wd
from giant.engine.metrics import StepTimer
from giant.engine.precision import LossScaler
from giant.engine.schedule import lr_at, wd_at
from giant.errors import TrainingError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MAX_CONSECUTIVE_SKIPS = 20  # skipped (non-finite gradient) steps in a row before giving up


class SignalFlag:
    """SIGTERM / SIGUSR1 → a flag checked at the end of each step (handlers must not do I/O).

    The signal reaches every process of a job, and more than once: Slurm signals every
    process of the step, torchrun then signals each rank's process group again, the deepspeed
    launcher each rank's process tree, one rank after the other. Until `restore` a repeat only
    sets the flag again (a second signal during the save cannot cut it short). Once the run is
    stopping for a signal (this rank got one, or the ranks agreed to stop: `stopping`),
    `restore` ignores these signals from then on instead of restoring the default action: a
    late repeat during the PREEMPTED marker or the exit (Python's own exit drops every Python
    handler, only an ignored signal stays ignored) would otherwise kill the rank with exit
    code -15 after a clean save. DataLoader workers leave the decision to their rank
    (giant.data.loader.shield_worker_from_stop_signals)."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.received: Optional[str] = None  # the first signal's name
        self.count = 0  # signals received, repeats included
        self.stopping = False  # set by the loop when the ranks agreed to stop for a signal
        self._previous: dict[int, Any] = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handlers
                pass

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name

    def restore(self) -> None:
        """The previous handlers back; or, when stopping for a signal, ignore these signals
        until the process exits. Idempotent."""
        ignore = self.stopping or self.received is not None
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if ignore else handler)
        self._previous.clear()


class EpochBatches:
    """Endless batches from a DataLoader whose sampler is resumable (epoch + position).

    `advance` is called as batches are *consumed* by the loop (not when workers prefetch them),
    so the sampler state saved in a checkpoint is exactly where training stands.
    """

    def __init__(self, loader: Any, on_epoch: Optional[Callable[[Any, int], None]] = None,
                 full_batch: int = 0):
        self.loader = loader
        self.sampler = loader.sampler
        self.on_epoch = on_epoch
        self.full_batch = full_batch  # > 0: skip an epoch's short last batch (keeps the global batch)
        self._it: Optional[Iterator] = None

    def _start(self) -> None:
        epoch = getattr(self.sampler, "epoch", 0)
        if self.on_epoch is not None:
            self.on_epoch(self.loader, epoch)
        self._it = iter(self.loader)

    def __next__(self) -> dict:
        if self._it is None:
            self._start()
        for _ in range(4):
            try:
                batch = next(self._it)
            except StopIteration:
                if self.on_epoch is not None:
                    self.on_epoch(self.loader, getattr(self.sampler, "epoch", 0) + 1)
                self._it = iter(self.loader)
                continue
            size = len(batch["index"]) if "index" in batch else 1
            if hasattr(self.sampler, "advance"):
                self.sampler.advance(size)
            if size >= self.full_batch:  # every rank has the same count, so all skip together
                return batch
        raise TrainingError("the training loader yields no full batch: fewer videos per rank than "
                            "optim.batch_size (use a larger manifest or a smaller batch)")

    def __iter__(self) -> "EpochBatches":
        return self

    def state_dict(self) -> dict:
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state)
        self._it = None  # restart iteration at the restored position


@dataclass
class LoopResult:
    steps_done: int
    reason: str  # completed | early_stop | stop_after | signal:SIGTERM | signal:SIGUSR1
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    losses: list = field(default_factory=list)
    skipped_steps: int = 0
    last_checkpoint: Optional[str] = None


@dataclass
class LoopHooks:
    """Stage callbacks. `save(step)` writes a checkpoint (collective) and returns its path;
    `scalars(step)` adds stage metrics; `image(step, batch, out)` draws on rank 0."""

    save: Callable[[int], Optional[str]]
    log_step: Callable[[int, dict], None]
    scalars: Optional[Callable[[int], dict]] = None
    image: Optional[Callable[[int, dict, Any], None]] = None
    throughput: Optional[Callable[[int, float], dict]] = None
    # per-rank numbers summed over ranks in the step's one all-reduce (no extra collective):
    # counters() gives this rank's values, agreed(totals) receives the sums on every rank
    counters: Optional[Callable[[], list]] = None
    agreed: Optional[Callable[[list], None]] = None
    # collective: every rank calls it at the same steps (eval_every, and the last step);
    # its scalars join that step's record
    evaluate: Optional[Callable[[int], dict]] = None
    # collective, after each evaluation: judge(step, its scalars) -> (path of a checkpoint it
    # saved at this step or None, stop early?) (engine/best.py)
    judge: Optional[Callable[[int, dict], tuple]] = None


def _micro_steps(engine: Any, batches: Iterator, step_fn: Callable, accum: int,
                 device: torch.device) -> tuple[torch.Tensor, dict, Any, float]:
    # summed on the device: reading each micro-batch's loss would stall the GPU queue
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batch = out = None
    wait = 0.0  # seconds spent waiting for the loader (data_wait_s)
    for _ in range(accum):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        out = None  # drop the previous micro-batch's outputs before this forward (GPU memory)
        loss, out = step_fn(engine, batch)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().double()
    return loss_sum, batch, out, wait


def _agree(loss_sum: torch.Tensor, stop: bool, counters: list) -> tuple[float, bool, list]:
    """All ranks, one all-reduce: mean loss over ranks, whether anyone must stop, and the
    stage's counters summed over ranks."""
    extra = torch.tensor([1.0 if stop else 0.0, *counters], dtype=torch.float64, device=loss_sum.device)
    buf = torch.cat([loss_sum.reshape(1), extra])
    world = 1
    if torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        torch.distributed.all_reduce(buf)
    values = buf.tolist()  # one device→host copy
    return values[0] / world, values[1] > 0, values[2:]


def _step_scalars(engine: Any, lr: float, wd: float, loss: float, applied: bool,
                  scaler: LossScaler, fp16: bool) -> dict:
    out = {"loss": loss, "lr": lr, "wd": wd, "skipped_steps": engine.skipped_steps}
    norm = engine.get_global_grad_norm() if applied else None
    if norm is not None:  # a skipped step has no meaningful norm: it is logged as skipped instead
        out["grad_norm"] = float(norm)
    if fp16:
        out["loss_scale"] = scaler.scale
    return out


def _evaluate(hooks: LoopHooks, step: int, scalars: dict, result: LoopResult, saved_step: int) -> int:
    """The evaluation (before any save: the saved RNG follows it), then the judge's verdict
    (early stop → result.reason) → the step last saved (a pinned best is this step's checkpoint)."""
    evaluated = hooks.evaluate(step)
    scalars.update(evaluated)
    if hooks.judge is None:
        return saved_step
    pinned, early = hooks.judge(step, evaluated)
    if early:
        result.reason = "early_stop"
    if pinned:
        result.last_checkpoint, saved_step = pinned, step
    return saved_step


def _check_health(loss: float, step: int, lr: float, skips_in_a_row: int) -> int:
    """A non-finite loss, or too many skipped steps in a row, ends the run (no save)."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"non-finite loss {loss} at step {step} (lr {lr:.3g}); stopped without saving, "
            f"checkpoints up to the last good one are intact — lower optim.blr, set "
            f"optim.clip_grad, or use precision.encoder=bf16, then resume")
    if skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
        raise TrainingError(f"{skips_in_a_row} optimizer steps in a row skipped for non-finite "
                            f"gradients (step {step}); the run diverged — lower the lr / clip")
    return skips_in_a_row


def train_loop(engine: Any, optim: OptimConfig, batches: Iterator, step_fn: Callable,
               scaler: LossScaler, hooks: LoopHooks, start_step: int, device: torch.device,
               checkpoint_every: int = 0, image_every: int = 0, stop_after: int = 0,
               fp16: bool = False, flag: Optional[SignalFlag] = None, eval_every: int = 0) -> LoopResult:
    """Run optimizer steps start_step..optim.total_steps; save on signals / every N / at the end.

    Pass `flag` when the handlers were installed earlier (a signal during start-up then stops
    the run cleanly after its first step instead of killing it)."""
    flag = flag or SignalFlag()
    result = LoopResult(steps_done=start_step, reason="completed")
    timer = StepTimer(optim.total_steps)
    skips_in_a_row, step, saved_step = 0, start_step, start_step
    try:
        while step < optim.total_steps:
            if stop_after and step - start_step >= stop_after:
                result.reason = "stop_after"
                break
            lr, wd = lr_at(step, optim), wd_at(step, optim)
            set_lr_wd(engine.optimizer, lr, wd)
            scaler.before_step(engine)
            t0 = time.perf_counter()
            loss_sum, batch, out, wait = _micro_steps(engine, batches, step_fn, optim.accum_steps, device)
            applied = engine.was_step_applied()
            scaler.update(not applied)
            loss, stop, totals = _agree(loss_sum / optim.accum_steps, flag.received is not None,
                                        hooks.counters() if hooks.counters else [])
            if hooks.agreed is not None:
                hooks.agreed(totals)  # may raise (e.g. DataError) on every rank at this step
            seconds = time.perf_counter() - t0
            step += 1
            scalars = _step_scalars(engine, lr, wd, loss, applied, scaler, fp16)
            scalars.update(step_time_s=seconds, **timer.update(step, seconds, wait))  # wait, share, ETA
            if hooks.throughput is not None:
                scalars.update(hooks.throughput(step, seconds))
            if hooks.scalars is not None:
                scalars.update(hooks.scalars(step))
            if hooks.evaluate is not None and not stop and math.isfinite(loss) and (
                    (eval_every and step % eval_every == 0) or step == optim.total_steps):
                saved_step = _evaluate(hooks, step, scalars, result, saved_step)
            hooks.log_step(step, scalars)
            skips_in_a_row = _check_health(loss, step, lr, 0 if applied else skips_in_a_row + 1)
            result.losses.append(loss)
            result.first_loss = loss if result.first_loss is None else result.first_loss
            result.last_loss, result.steps_done = loss, step
            if hooks.image is not None and ((image_every and step % image_every == 0)
                                            or step == optim.total_steps or stop):
                hooks.image(step, batch, out)
            if stop:
                flag.stopping = True
                result.reason = f"signal:{flag.received or 'peer'}"
                log.info("%s: stopping after step %d, saving", result.reason, step)
                break
            if result.reason == "early_stop":  # the judge's verdict: the final save below, as at the end
                break
            batch = out = None  # do not hold this step's outputs through the next forward
            if checkpoint_every and step % checkpoint_every == 0 and step < optim.total_steps and saved_step != step:
                result.last_checkpoint, saved_step = hooks.save(step), step
        result.skipped_steps = int(engine.skipped_steps)
        # final save (still under the signal handlers: a second SIGTERM must not cut it short);
        # nothing new to save when a finished run is relaunched or the step was just saved
        if step > start_step and saved_step != step:
            result.last_checkpoint = hooks.save(step)
    finally:
        if flag.count > 1:  # launchers repeat the signal; say so once, here (not in the handler)
            log.info("%d repeated stop signals during the stop and the save: ignored", flag.count - 1)
        flag.restore()
    return result
