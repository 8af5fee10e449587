"""`logging.profile: {start, steps}`: torch.profiler over optimizer steps start+1 .. start+steps
on rank 0, one trace under RUN_DIR/tensorboard/profile/ (`*.pt.trace.json`, the layout
TensorBoard's profiler plugin reads). Each step is marked ProfilerStep#<its step number>.

Driven from outside the loop: `at(step)` is called when step `step` has ended (and once with
the start step before the loop), so the loop itself needs no profiler code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch


class StepProfiler:
    def __init__(self, spec: dict, run_dir: Path, device: torch.device, enabled: bool = True):
        self.start = int(spec.get("start", 0))
        self.steps = int(spec.get("steps", 1))
        self.enabled = enabled and bool(spec)
        self.out_dir = Path(run_dir) / "tensorboard" / "profile"
        self.cuda = torch.device(device).type == "cuda"
        self.prof: Optional[Any] = None

    def at(self, step: int) -> None:
        """Step `step` has ended: start before start+1, mark each next step, stop after the last."""
        if not self.enabled:
            return
        if self.prof is None and step == self.start:
            self._begin(step + 1)
        elif self.prof is not None and step >= self.start + self.steps:
            self.close()
        elif self.prof is not None:
            self.prof.step()

    def _begin(self, first: int) -> None:
        from torch.profiler import ProfilerAction, ProfilerActivity, profile, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # a schedule (recording throughout: the window is ours) makes torch mark the steps
        self.prof = profile(activities=activities, schedule=lambda _step: ProfilerAction.RECORD,
                            on_trace_ready=tensorboard_trace_handler(str(self.out_dir)))
        self.prof.step_num = first  # the step markers carry the run's own step numbers
        self.prof.start()

    def close(self) -> None:
        """Stops (and writes the trace) once; also when the run ends inside the window."""
        if self.prof is not None:
            prof, self.prof = self.prof, None
            prof.stop()
            self.enabled = False
