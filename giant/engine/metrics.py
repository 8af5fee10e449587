"""Throughput, MFU, memory and the logging sinks (TensorBoard, JSONL, console, progress bar).

Only rank 0 writes; other ranks get a disabled logger so call sites need no rank checks.
MFU uses the analytic training FLOPs from `giant.flops` and a dense-peak table, so numbers
are comparable with the papers' (docs/reference.md §6).
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

# Dense (no 2:4 sparsity) BF16/FP16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets (which
# print the sparse figure, twice these); fp32 runs count against the dense TF32 peak. Matched as a
# substring of torch.cuda.get_device_name, first match wins: the variants share a family name
# ("NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe", "NVIDIA H100 NVL") and differ in
# clocks and power, so one H100 figure would misstate MFU by up to 30%.
_PEAK_TFLOPS = (
    ("H200 NVL", {"low": 835.5, "fp32": 417.5}),
    ("H200", {"low": 989.4, "fp32": 494.7}),  # H200 SXM; GH200's GPU is the same part
    ("H100 NVL", {"low": 835.5, "fp32": 417.5}),
    ("H100 PCIe", {"low": 756.5, "fp32": 378.0}),
    ("H100", {"low": 989.4, "fp32": 494.7}),  # SXM5 (HBM3); H800 SXM is the same
    ("H800", {"low": 989.4, "fp32": 494.7}),
    ("A100", {"low": 312.0, "fp32": 156.0}),  # SXM4 and PCIe, 40 and 80 GB
    ("A800", {"low": 312.0, "fp32": 156.0}),
    ("L40S", {"low": 362.0, "fp32": 183.0}),
    ("A10G", {"low": 125.0, "fp32": 62.5}),
    ("V100", {"low": 125.0, "fp32": 15.7}),
)


def peak_for_name(name: str, precision: str = "bf16") -> Optional[float]:
    """The dense peak (TFLOP/s) for a CUDA device name, or None when the table lacks it."""
    for key, peaks in _PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks["fp32" if precision == "fp32" else "low"]
    return None


def peak_tflops(device: torch.device | str, precision: str = "bf16") -> Optional[float]:
    """Peak dense TFLOP/s of `device`, or None when unknown (e.g. CPU): MFU is then omitted.

    GIANT_PEAK_TFLOPS overrides the table (for GPUs it does not list).
    """
    if os.environ.get("GIANT_PEAK_TFLOPS"):
        return float(os.environ["GIANT_PEAK_TFLOPS"])
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_for_name(torch.cuda.get_device_name(device), precision)


class Throughput:
    """Turns (clips, seconds) into clips/s, achieved TFLOP/s and MFU."""

    def __init__(self, flops_per_clip: float, device: torch.device | str, precision: str = "bf16",
                 world_size: int = 1):
        self.flops_per_clip = flops_per_clip
        self.peak = peak_tflops(device, precision)
        self.world_size = world_size

    def update(self, num_clips: int, seconds: float) -> dict:
        """`num_clips` across all ranks; TFLOP/s and MFU are per device."""
        seconds = max(seconds, 1e-9)
        clips_per_s = num_clips / seconds
        tflops = clips_per_s * self.flops_per_clip / self.world_size / 1e12
        out = {"clips_per_s": clips_per_s, "tflops": tflops}
        if self.peak:
            out["mfu"] = tflops / self.peak
        return out


def memory_stats(device: torch.device | str) -> dict:
    """Peak accelerator memory (GiB) when on CUDA, else the process's peak RSS (GiB)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return {"mem_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mem_rss_gib": rss_kib / 2**20}


def _fmt(key: str, value: float) -> str:
    if key == "eta_s":
        minutes, seconds = divmod(int(round(value)), 60)
        return f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    if key == "lr" or (value != 0 and abs(value) < 1e-3):
        return f"{key} {value:.3e}"
    if key in ("mfu", "data_wait_share"):
        return f"{key} {100 * value:.1f}%"
    return f"{key} {value:.4g}"


class StepTimer:
    """Per optimizer step: the loader wait and its share of the step, and the time left at this
    attempt's pace: eta_s = (total - step) × wall seconds per step since the attempt's first step
    began. Wall time, not the steps' own times: evaluations and saves recur, and an ETA that
    leaves them out reads low by their share (in the CPU demo, by half)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.started: Optional[float] = None  # perf_counter() when this attempt's first step began
        self.steps = 0

    def update(self, step: int, seconds: float, wait: float, now: Optional[float] = None) -> dict:
        now = time.perf_counter() if now is None else now
        if self.started is None:
            self.started = now - seconds
        self.steps += 1
        pace = (now - self.started) / self.steps
        return {"data_wait_s": wait, "data_wait_share": wait / max(seconds, 1e-9),
                "eta_s": max(self.total_steps - step, 0) * pace}


class _BarStream:
    """A logging handler's stream while a tqdm bar is drawn: lines go through tqdm.write, which
    lifts the bar, prints, and redraws it (a plain write would tear the bar)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


def _route_logging_through_bar() -> list:
    """Point the console handlers (root's, on stderr/stdout) at tqdm.write; returns what to undo."""
    swapped = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            swapped.append((handler, handler.setStream(_BarStream(handler.stream))))
    return swapped


def _truncate_after(jsonl: Path, step: int) -> None:
    """Keep only rows up to `step`: after a resume, the steps a crashed run logged past its last
    checkpoint are re-run and must not appear twice."""
    keep = []
    for line in jsonl.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
    tmp = jsonl.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, jsonl)


class MetricsLogger:
    """Every step → `metrics.jsonl` + the trackers of `report_to` (TensorBoard, wandb, mlflow);
    every `log_every` → one console line; a tqdm bar on terminals."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, report_to: Optional[list] = None,
                 log_every: int = 10, progress: bool = True, total_steps: Optional[int] = None,
                 resume_step: int = 0, run_name: str = "", config: Optional[dict] = None):
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self._tb = self._jsonl = self._bar = None
        self._trackers: list = []
        self._swapped: list = []
        self._last: dict = {}
        if not enabled:
            return
        from giant.engine.trackers import TensorBoardTracker, flatten, open_trackers

        self.run_dir.mkdir(parents=True, exist_ok=True)
        jsonl = self.run_dir / "metrics.jsonl"
        if jsonl.exists():  # resume_step 0: an attempt that crashed before its first checkpoint
            _truncate_after(jsonl, resume_step)
        self._jsonl = open(jsonl, "a", buffering=1)
        self._config = flatten(config or {})
        names = ["tensorboard"] if report_to is None else list(report_to)
        self._trackers = open_trackers(names, self.run_dir, run_name or self.run_dir.name, resume_step,
                                       self._config)
        self._tb = next((t.writer for t in self._trackers if isinstance(t, TensorBoardTracker)), None)
        if progress and sys.stderr.isatty() and total_steps:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, dynamic_ncols=True, leave=False)
            self._swapped = _route_logging_through_bar()

    def log_step(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        tagged = {k if "/" in k else f"train/{k}": v for k, v in clean.items() if math.isfinite(v)}
        self._last.update(tagged)
        for tracker in self._trackers:
            tracker.log(step, tagged)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=clean.get("loss"))
        if step % self.log_every == 0 or step == self.total_steps:
            total = f"/{self.total_steps}" if self.total_steps else ""
            body = " | ".join(_fmt(k, v) for k, v in clean.items())
            log.info("step %d%s | %s", step, total, body)

    def log_tensorboard(self, step: int, scalars: dict) -> None:
        """Scalars for TensorBoard only (e.g. one per class): not rows of metrics.jsonl."""
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)

    def log_image(self, step: int, tag: str, image_HWC: np.ndarray) -> Optional[Path]:
        """TensorBoard image + PNG under run_dir/images/; returns the PNG path."""
        if not self.enabled:
            return None
        from PIL import Image

        out = self.run_dir / "images" / f"{tag.replace('/', '_')}_step{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_HWC).save(out)
        if self._tb is not None:
            self._tb.add_image(tag, image_HWC, step, dataformats="HWC")
        return out

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """The config with the final metrics to every tracker (when a step was logged), then
        each tracker's finish; the console handlers get their streams back."""
        if not self.enabled:
            return
        for handler, stream in self._swapped:
            handler.setStream(stream)
        if self._bar is not None:
            self._bar.close()
        final = {k: v for k, v in self._last.items() if k == "train/loss" or k.startswith("val/")}
        try:
            for tracker in self._trackers:
                if final:
                    tracker.log_config(self._config, final)
        finally:
            for tracker in self._trackers:
                tracker.finish()
            if self._jsonl is not None:
                self._jsonl.close()
            self.enabled = False
