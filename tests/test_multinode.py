"""More than one node on one machine. Two torchrun agents (`--nnodes 2 --node_rank 0|1
--nproc_per_node 1`, one rendezvous on 127.0.0.1: rank 1 has LOCAL_RANK 0) pre-train with a
checkpoint (steps 1-2) and resume (step 3); one node with 1 rank re-shards and resumes (step
4); then two hosts through DeepSpeed's own multi-node launcher (`deepspeed --hostfile`, pdsh
over ssh to `localhost` and `127.0.0.1`, a private sshd) re-shard back onto 2 ranks (step 5):
rank 0 converts while rank 1, on the other "node", waits for the universal copy on the shared
filesystem. The losses equal one node's 2-rank run. Under strace, every file of the run is
written from one node only: the second node writes nothing but its own shards.
Where this machine cannot run sshd + pdsh, step 5 goes through torchrun agents and the
DeepSpeed-launcher test is skipped, saying why."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from _launch import REPO, env, free_port, tail, torchrun
from _slurm import apt_install
from giant.engine import checkpoint as ck

pytestmark = pytest.mark.slow
STEPS = 5
TRACED = "openat,open,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,truncate"
# what the second node may write: its own ZeRO optimizer shard and RNG state in each checkpoint
NODE1_OWN = re.compile(r"checkpoints/\.tmp_step_\d+/(\w*zero_pp_rank_1_mp_rank_00_optim_states\.pt|rng_rank00001\.pt)$")


def _args(synth, run_dir: Path, *extra: str) -> list[str]:
    """One clip per micro-batch: 2 ranks × 1 and 1 rank × 2 accumulation steps see the same clips."""
    return ["--ds", str(REPO / "ds_configs/zero2.json"), "--recipe", str(REPO / "launch/recipes/demo_pretrain.yaml"),
            f"data.manifest={synth.train_manifest}", f"stage.run_dir={run_dir}", "model.img_size=32",
            "model.patch_size=8", "model.num_frames=4", "data.sampling_rate=2", "data.num_sample=1",
            "data.num_workers=0", "optim.batch_size=1", f"optim.total_steps={STEPS}", "optim.warmup_steps=1",
            "checkpoint.every_steps=1", "precision.encoder=fp32", "logging.image_every=0",
            "logging.progress=false", "logging.report_to=[]", *extra]


def _run_all(cmds: list[list[str]], logs: list[Path], timeout: int = 300, env_: Optional[dict] = None,
             run_dir: Optional[Path] = None) -> list[str]:
    """Start every command at once (output to files: a blocked pipe would stall a rendezvous),
    wait for all → their outputs; on a failure or hang everything is killed and reported."""
    from _launch import _dump_and_kill

    procs = []
    for cmd, log in zip(cmds, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                          env=env_ or env(), start_new_session=True))
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs:
            _dump_and_kill(p)
        _kill_run(run_dir)
    texts = [log.read_text() for log in logs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), f"exit codes {codes}\n" + "\n".join(
        f"--- {log.name} ---\n{text[-4000:]}" for log, text in zip(logs, texts))
    return texts


def _kill_run(run_dir: Optional[Path]) -> None:
    """Ranks started through sshd are nobody's children here: find them by their run dir."""
    import psutil

    if run_dir is None:
        return
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"stage.run_dir={run_dir}" in (p.info["cmdline"] or []):
                p.kill()
        except psutil.NoSuchProcess:
            pass


def two_nodes(synth, run_dir: Path, logs: Path, *extra: str, trace: bool = False) -> list[str]:
    port, cmds, outs = free_port(), [], []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
               str(REPO / "launch/pretrain.py"), *_args(synth, run_dir, *extra)]
        if trace:
            cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", f"trace={TRACED}",
                   "-o", str(logs / f"node{node}.strace"), *cmd]
        cmds.append(cmd)
        outs.append(logs / f"node{node}.log")
    return _run_all(cmds, outs, run_dir=run_dir)


def one_rank(synth, run_dir: Path, logs: Path, *extra: str) -> str:
    return _run_all([[sys.executable, str(REPO / "launch/pretrain.py"),
                      *_args(synth, run_dir, "optim.accum_steps=2", *extra)]], [logs / "one.log"])[0]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


def written(trace: Path, run_dir: Path) -> set[str]:
    """Paths under `run_dir` that a traced process tree opened for writing, created, renamed to
    or truncated (run-dir relative)."""
    root, out = str(run_dir), set()
    for line in trace.read_text().splitlines():
        m = re.search(r"\b(\w+)\((?:AT_FDCWD, |\d+, )?\"([^\"]+)\"(.*)", line)
        if not m:
            continue
        call, path, rest = m.groups()
        if call.startswith("rename") or call.startswith("link") or call.startswith("symlink"):
            target = re.search(r"\"([^\"]+)\"", rest)  # the second path: what now exists
            path = target.group(1) if target else path
        elif call in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND", rest):
            continue
        if path.startswith(root + "/"):
            out.add(path[len(root) + 1:])
    return out


# ----------------------------------------------------------------------------- DeepSpeed's launcher
def _sshd(tmp: Path):
    """A private sshd on a free port of 127.0.0.1 (root by key), so DeepSpeed's pdsh launcher can
    reach this machine as two hosts → (generator yielding the launcher's extra env and options,
    or None and why not). Nothing outside `tmp` changes but /run/sshd, removed again if made."""
    why = apt_install({"/usr/sbin/sshd": "openssh-server", "pdsh": "pdsh", "ssh-keygen": "openssh-client"})
    if not why and os.geteuid() != 0:
        why = "a private sshd that lets the launcher log in by key needs root here"
    if why:
        yield None, why
        return
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True)
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\nAuthorizedKeysFile "
        f"{tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    made = not Path("/run/sshd").exists()  # sshd's privilege-separation directory
    if made:
        os.makedirs("/run/sshd", mode=0o755)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "sshd.log", "w"))
    try:
        ssh = (f"-i {tmp / 'client_key'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               "-o BatchMode=yes -o LogLevel=ERROR")
        ok = _wait_port(port) and subprocess.run(
            ["ssh", "-p", str(port), *ssh.split(), "127.0.0.1", "true"], timeout=30).returncode == 0
        if not ok:
            yield None, f"a private sshd did not accept root by key ({(tmp / 'sshd.log').read_text()[-300:]})"
            return
        (tmp / "hostfile").write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # one machine, two names
        # exported to the remote shells (DeepSpeed passes only PYTHON*/NCCL*-like variables itself)
        (tmp / "ds_env").write_text(f"OMP_NUM_THREADS=1\nTORCH_EXTENSIONS_DIR={env()['TORCH_EXTENSIONS_DIR']}\n")
        extra_env = {"PDSH_SSH_ARGS_APPEND": ssh, "DS_ENV_FILE": str(tmp / "ds_env")}
        opts = ["--hostfile", str(tmp / "hostfile"), "--launcher", "pdsh", "--ssh_port", str(port),
                "--no_ssh_check", "--master_addr", "127.0.0.1"]
        yield (extra_env, opts), None
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        if made:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def _wait_port(port: int, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def two_hosts_deepspeed(synth, run_dir: Path, logs: Path, launcher: tuple, *extra: str) -> str:
    extra_env, opts = launcher
    cmd = [str(Path(sys.executable).parent / "deepspeed"), *opts, "--master_port", str(free_port()),
           str(REPO / "launch/pretrain.py"), *_args(synth, run_dir, *extra)]
    return _run_all([cmd], [logs / "deepspeed.log"], env_={**env(), **extra_env}, run_dir=run_dir)[0]


# ----------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def runs(synth_videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("multinode")
    ref = d / "ref"
    proc = torchrun(str(REPO / "launch/pretrain.py"), *_args(synth_videos, ref))
    assert proc.returncode == 0, tail(proc)

    traced = apt_install({"strace": "strace"}) is None
    run, logs = d / "run", {k: d / k for k in ("first", "resume", "reshard", "grow")}
    for folder in logs.values():
        folder.mkdir()
    out = {"ref": ref, "run": run, "traced": traced, "logs": logs}
    out["first"] = two_nodes(synth_videos, run, logs["first"], "stage.stop_after=2", trace=traced)
    out["resume"] = two_nodes(synth_videos, run, logs["resume"], "stage.stop_after=1", trace=traced)
    out["reshard"] = one_rank(synth_videos, run, logs["reshard"], "stage.stop_after=1")
    gen = _sshd(d / "ssh")
    launcher, out["no_deepspeed"] = next(gen)
    try:
        if launcher is not None:
            out["grow"] = [two_hosts_deepspeed(synth_videos, run, logs["grow"], launcher)]
        else:
            out["grow"] = two_nodes(synth_videos, run, logs["grow"])
    finally:
        gen.close()
    return out


def test_two_nodes_checkpoint_resume_reshard_match_one_node(runs):
    want, got = losses(runs["ref"]), losses(runs["run"])
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    node0 = runs["first"][0] + runs["resume"][0]
    assert "pretrain tiny: steps 0→5, 2 ranks" in node0 and "pretrain tiny: steps 2→5, 2 ranks" in node0
    assert f"resumed from {runs['run'] / 'checkpoints' / 'step_00000002'} (step 2)" in runs["resume"][0]
    assert "written by 2 ranks with ZeRO-2, re-sharded onto 1 ranks with ZeRO-2" in runs["reshard"]
    grown = "\n".join(runs["grow"])
    assert "written by 1 ranks with ZeRO-2, re-sharded onto 2 ranks with ZeRO-2" in grown
    assert (runs["run"] / "checkpoints" / "step_00000004" / ck.UNIVERSAL / "zero").is_dir()
    assert json.loads((runs["run"] / "summary.json").read_text())["reason"] == "completed"


def test_each_file_is_written_from_one_node(runs):
    if not runs["traced"]:
        pytest.skip("strace is not available here and cannot be installed")
    for phase in ("first", "resume"):
        node0 = written(runs["logs"][phase] / "node0.strace", runs["run"])
        node1 = written(runs["logs"][phase] / "node1.strace", runs["run"])
        assert node0 & node1 == set(), phase
        assert node1 and all(NODE1_OWN.search(p) for p in node1), (phase, sorted(node1))
        assert {"metrics.jsonl", "config.yaml", "ds_config.json", "summary.json", "checkpoints/latest"} <= node0
        assert any("rng_rank00000.pt" in p for p in node0)


def test_deepspeed_hostfile_launcher_runs_two_hosts(runs):
    if runs["no_deepspeed"]:
        pytest.skip(f"deepspeed --hostfile cannot run here: {runs['no_deepspeed']}")
    log = runs["grow"][0]
    assert "Running on the following workers: localhost,127.0.0.1" in log
    assert "global_rank_mapping=defaultdict(<class 'list'>, {'localhost': [0], '127.0.0.1': [1]})" in log
    assert "nnodes=2, num_local_procs=1, node_rank=1" in log
    assert "done (completed): 5 steps" in log
