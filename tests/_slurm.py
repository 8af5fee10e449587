"""A real one-node Slurm for the `slurm` tests: `slurm_cluster` (session scope) starts it with
scripts/slurm_local.sh (installing slurm-wlm + munge from Debian when missing) and stops it
afterwards if it started it. Skipped, with the reason, only where this machine cannot get
Slurm (not root, no apt-get, the install failed: the script's exit code 3).

Helpers: `job(id)` reads `scontrol show job` (finished jobs stay listed for MinJobAge, 10 min),
`wait_for(predicate)` polls, `submit_pipeline(...)` runs launch/slurm/submit_pipeline.sh,
`apt_install(...)` gets other tools a machine-level test needs (strace, sshd, pdsh)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from _launch import REPO, env

SCRIPT = REPO / "scripts" / "slurm_local.sh"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass
class Cluster:
    conf: str  # SLURM_CONF for every client command
    dir: Path

    def env(self, **extra: str) -> dict:
        return {**env(), "SLURM_CONF": self.conf, **extra}


@pytest.fixture(scope="session")
def slurm_cluster():
    run = lambda cmd: subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True,  # noqa: E731
                                     timeout=900, env=env())
    already = run("status").returncode == 0
    started = run("start")
    if started.returncode == 3:
        pytest.skip(f"no real Slurm on this machine: {started.stderr.strip()}")
    assert started.returncode == 0, started.stdout + started.stderr
    conf = re.search(r"export SLURM_CONF=(\S+)", started.stdout).group(1)
    cluster = Cluster(conf=conf, dir=Path(conf).parent)
    try:
        yield cluster
    finally:
        if not already:
            run("stop")


def scontrol(cluster: Cluster, *args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60,
                          env=cluster.env()).stdout


def job(cluster: Cluster, job_id: str) -> dict:
    """`scontrol show job -o ID` as a dict (JobState, Restarts, ExitCode, Reason, StartTime...)."""
    out = scontrol(cluster, "show", "job", "-o", str(job_id)).strip()
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.2) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def final(cluster: Cluster, job_id: str, timeout: float = 300) -> dict:
    """Wait until the job ended for good (a requeued job passes through PENDING again)."""
    return wait_for(lambda: (lambda j: j if j.get("JobState") in FINAL else None)(job(cluster, job_id)),
                    timeout, f"job {job_id} to end", poll=0.5)


def submit_pipeline(cluster: Cluster, pipeline: Path, *sbatch: str, extra_env: Optional[dict] = None
                    ) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """launch/slurm/submit_pipeline.sh PIPELINE -- SBATCH... → (process, {stage: job id} of the
    jobs it submitted or found queued)."""
    cmd = ["bash", str(REPO / "launch/slurm/submit_pipeline.sh"), str(pipeline)]
    cmd += ["--", *sbatch] if sbatch else []
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=cluster.env(**(extra_env or {})))
    jobs = dict(re.findall(r"^\S+?:(\S+): .*?(?:-> job|as job) (\d+)", proc.stdout, re.M))
    return proc, jobs


def apt_install(commands: dict[str, str]) -> Optional[str]:
    """Each command (name on PATH or absolute path) → its Debian package, installed when missing
    (apt-get update only if the install needs it). → None, or why it cannot be had here."""
    missing = sorted({pkg for cmd, pkg in commands.items() if not (shutil.which(cmd) or Path(cmd).is_file())})
    if not missing:
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{', '.join(missing)} not installed, and no root apt-get to install it"
    e = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=e)
        if proc.returncode == 0 and cmd is install:
            return None
    return f"apt-get install {' '.join(missing)} failed: {proc.stderr.strip()[-300:]}"
