"""What `giant pipeline run` shows while a stage runs, and where the stage's own output goes.

A stage's launcher and ranks write a lot (DeepSpeed's launcher lines, a metrics line per step
of every rank): the pipeline's own progress would drown in it. So each stage's stdout+stderr is
appended to RUN_DIR/stage.log (one header line per attempt), and the console gets one start
line, one live line built from RUN_DIR/metrics.jsonl (rewritten in place on a terminal; printed
at most every `StageConsole.interval` seconds, and only when a step was added, otherwise: CI
logs and pipes keep a few lines per stage), and one final line. A failing stage shows the tail
of its log. `--verbose` streams everything to the console as well (`tee`).
"""
from __future__ import annotations

import codecs
import json
import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

LOG = "stage.log"
HEADER = "===== giant pipeline:"  # starts each attempt's line in stage.log
TAIL_LINES = 25
RECENT = 20  # rows the computed ETA's step rate is measured over
CLEAR = "\r\033[K"


def clock(seconds: float) -> str:
    """An ETA: 0:42, 12:05, 3:07:09."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def took(seconds: float) -> str:
    """A duration: 8s, 1m12s, 2h03m."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _num(row: Optional[dict], key: str) -> Optional[float]:
    value = (row or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and value == value else None


class Progress:
    """What a stage's metrics.jsonl says so far. Read incrementally (a long run's file is
    large); ETA rows count only from `since` (this attempt: a resumed run's earlier rows are
    separated from it by the pause)."""

    def __init__(self, path: Path, total: Optional[int], since: float):
        self.path, self.total, self.since = Path(path), total, since
        self.offset, self.inode = 0, None
        self.last: Optional[dict] = None
        self.val: Optional[float] = None  # latest val/top1 seen
        self.best: Optional[float] = None
        self.recent: list[tuple[float, float]] = []  # (time, step) of this attempt's rows

    def poll(self) -> bool:
        """Read the rows added since the last poll; True when there were any."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:  # rewritten (a resume trims it)
                    self.offset, self.inode = 0, st.st_ino
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return False
        end = data.rfind(b"\n")  # a row still being written waits for the next poll
        if end < 0:
            return False
        self.offset += end + 1
        added = False
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                self.add(row)
                added = True
        return added

    def add(self, row: dict) -> None:
        self.last = row
        self.val = _num(row, "val/top1") if "val/top1" in row else self.val
        self.best = _num(row, "val/best_top1") if "val/best_top1" in row else self.best
        t = _num(row, "time")
        if t is not None and t >= self.since:
            self.recent.append((t, float(row["step"])))
            del self.recent[:-RECENT]

    def eta(self) -> Optional[float]:
        """The row's own eta_s, else steps left at this attempt's recent step rate."""
        own = _num(self.last, "eta_s")
        if own is not None or not self.total or len(self.recent) < 2:
            return own
        (t0, s0), (t1, s1) = self.recent[0], self.recent[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return max(0.0, self.total - s1) * (t1 - t0) / (s1 - s0)

    def step_text(self, step: Any = None) -> str:
        step = int(self.last["step"]) if step is None else int(step)
        return f"step {step}/{self.total}" if self.total else f"step {step}"


def live_text(name: str, p: Optional[Progress], elapsed: float) -> str:
    """`[finetune] step 40/60 · loss 0.812 · val top-1 93.5% · 12.3 clips/s · data wait 4% · ETA 0:42`;
    an evaluation (p None) or a stage before its first step: the time it has run."""
    if p is None:
        return f"[{name}] evaluating · {took(elapsed)}"
    if p.last is None:
        return f"[{name}] starting · {took(elapsed)}"
    parts = [p.step_text()]
    loss, clips, wait, eta = _num(p.last, "loss"), _num(p.last, "clips_per_s"), \
        _num(p.last, "data_wait_share"), p.eta()
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    if p.val is not None:
        parts.append(f"val top-1 {p.val:.1f}%")
    if clips is not None:
        parts.append(f"{clips:.1f} clips/s")
    if wait is not None:
        parts.append(f"data wait {100 * wait:.0f}%")
    if eta is not None:
        parts.append(f"ETA {clock(eta)}")
    return f"[{name}] " + " · ".join(parts)


def final_text(name: str, elapsed: float, p: Optional[Progress], row: dict) -> str:
    """`[name] done in 1m12s · step 60/60 · loss 0.53 · val top-1 96.5%`; an evaluation: its
    results (`row` is pipeline_state.status_row's)."""
    parts = [f"[{name}] done in {took(elapsed)}"]
    if p is not None:
        step = row.get("steps") if row.get("steps") is not None else (p.last or {}).get("step")
        loss = row.get("last_loss") if row.get("last_loss") is not None else _num(p.last, "loss")
        val = p.val if p.val is not None else row.get("best_val_top1")
        parts += [p.step_text(step)] if step is not None else []
        parts += [f"loss {loss:.4g}"] if loss is not None else []
        parts += [f"val top-1 {val:.1f}%"] if val is not None else []
        best = row.get("best_val_top1")
        if best is not None and val is not None and abs(best - val) >= 0.05:
            parts[-1] += f" (best {best:.1f}%)"
        return " · ".join(parts)
    if row.get("test_top1") is not None:
        parts.append(f"test top-1 {row['test_top1']:.1f}%")
    if row.get("test_top5") is not None:
        parts.append(f"top-5 {row['test_top5']:.1f}%")
    if row.get("test_videos") is not None:
        parts.append(f"{row['test_videos']} videos" + (f" × {row['views']} views" if row.get("views") else ""))
    if row.get("agreement_top1") is not None:
        kl = row.get("kl_from_reference")
        parts.append(f"agrees with {row.get('reference')} on {row['agreement_top1']:.1f}%"
                     + (f" (KL {kl:.3f})" if kl is not None else ""))
    return " · ".join(parts)


class StageConsole:
    """One stage's live line. `tick` is called every `poll` seconds while the stage runs."""

    interval = 60.0  # seconds between progress lines when the console is not a terminal
    poll = 1.0  # seconds between reads of metrics.jsonl

    def __init__(self, name: str, run_dir: Path, total: Optional[int], trains: bool,
                 stream: Optional[IO[str]] = None, start: Optional[float] = None):
        self.name, self.stream = name, stream or sys.stdout
        self.start = time.time() if start is None else start
        self.progress = Progress(Path(run_dir) / "metrics.jsonl", total, self.start) if trains else None
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.printed, self.printed_step, self.shown = self.start, None, False

    def elapsed(self, now: Optional[float] = None) -> float:
        return (time.time() if now is None else now) - self.start

    def text(self, now: Optional[float] = None) -> str:
        return live_text(self.name, self.progress, (time.time() if now is None else now) - self.start)

    def tick(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        if self.progress is not None:
            self.progress.poll()
        text = self.text(now)
        if self.tty:  # one line, rewritten in place; cut to the width so it never wraps
            self._write(CLEAR + text[:max(20, shutil.get_terminal_size((100, 20)).columns - 1)])
            self.shown = True
            return
        step = None if self.progress is None or self.progress.last is None else self.progress.last["step"]
        if now - self.printed >= self.interval and (self.progress is None or step != self.printed_step):
            self._write(text + "\n")
            self.printed, self.printed_step = now, step

    def clear(self) -> None:
        """Take the live line off the terminal before anything else is printed."""
        if self.shown:
            self._write(CLEAR)
            self.shown = False

    def final(self, row: dict, now: Optional[float] = None) -> str:
        if self.progress is not None:
            self.progress.poll()
        return final_text(self.name, (time.time() if now is None else now) - self.start, self.progress, row)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a console gone away must not stop the stage
            pass


# ----------------------------------------------------------------------------- stage.log
def open_log(run_dir: Path, cmd: list[str]) -> IO[bytes]:
    """RUN_DIR/stage.log for appending, after this attempt's header line (time, command)."""
    log = open(Path(run_dir) / LOG, "ab")
    log.write(f"{HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')} attempt: $ {shlex.join(cmd)}\n".encode())
    log.flush()
    return log


def log_tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last `n` lines of the newest attempt, read from the end of the file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace").rstrip("\n")
    except OSError:
        return []
    lines = text.split("\n") if text else []  # not at \r: a progress bar's states are one line
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HEADER):
            lines = lines[i + 1:]
            break
    return [line.rsplit("\r", 1)[-1][:500] for line in lines[-n:]]  # a progress bar: its last state


def tee(src: IO[bytes], log: IO[bytes], stream: IO[str]) -> threading.Thread:
    """--verbose: the stage's output to the console as it comes, and to its log."""

    def pump() -> None:
        text = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            chunk = os.read(src.fileno(), 65536)
            if not chunk:
                return
            log.write(chunk)
            log.flush()
            try:
                stream.write(text.decode(chunk))
                stream.flush()
            except (OSError, ValueError):  # a closed console: the log still gets everything
                pass

    thread = threading.Thread(target=pump, name="stage-tee", daemon=True)
    thread.start()
    return thread
