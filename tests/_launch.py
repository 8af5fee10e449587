"""Start N CPU ranks for multi-process tests: torchrun (as users do) on a free port, gloo."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONFAULTHANDLER"] = "1"  # a rank sent SIGABRT on a timeout prints every thread's stack
    e.pop("RANK", None), e.pop("WORLD_SIZE", None), e.pop("LOCAL_RANK", None)
    return e


def _dump_and_kill(proc: subprocess.Popen) -> None:
    """A hung run: every descendant prints its Python stacks (SIGABRT under faulthandler), then
    the whole session dies, so no orphaned rank keeps a core busy for the rest of the suite."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for k in kids:
        try:
            k.send_signal(signal.SIGABRT)
        except psutil.NoSuchProcess:
            pass
    time.sleep(3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass


def run_captured(cmd: list, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output=True, text=True) in its own session; past `timeout` the
    process tree's stacks are dumped, it is killed, and the error carries the output's tail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _dump_and_kill(proc)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n"
                             f"--- stdout tail ---\n{out[-3000:]}\n--- stderr tail ---\n{err[-30000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script args` on `nproc` ranks; returns the finished process (output captured)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", script, *args]
    return run_captured(cmd, timeout, cwd=REPO, env=env())


def tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]
