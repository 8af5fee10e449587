"""Stopping cleanly. A preemption signal delivered the way Slurm delivers it, to EVERY process of
the job (launcher, ranks, data-loader workers), makes every rank finish its step, save, write
PREEMPTED and exit 0, under torchrun, the deepspeed launcher and one process per rank (srun);
the relaunch resumes at that step and the losses equal an uninterrupted run's. A non-finite
loss raises TrainingError without writing a checkpoint over the last good one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from _launch import REPO, env, free_port
from giant.data.loader import TimeoutNamingDataLoader, _worker_init, iterate_with_timeout_errors
from giant.engine import checkpoint as ck
from giant.engine.loop import SignalFlag
from giant.errors import DataError
from test_pretrain_resume import losses, overrides, single

WORKER = "pt_data_worker"  # the name torch gives its DataLoader worker processes


# ----------------------------------------------------------------------------- workers
class _Slow(torch.utils.data.Dataset):
    """Item i takes `delay` s in the worker (item 0 is instant and sets `first_done`)."""

    def __init__(self, n: int, delay: float):
        import torch.multiprocessing as mp

        self.n, self.delay, self.first_done = n, delay, mp.Event()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i:
            time.sleep(self.delay)
        else:
            self.first_done.set()
        return i


def _kill_from_elsewhere(pid: int, sig: signal.Signals) -> None:
    """As Slurm or a launcher does: the signal comes from a process other than the worker's rank."""
    subprocess.run(["kill", f"-{sig.name[3:]}", str(pid)], check=True)


def _wait(condition, timeout: float = 30) -> None:
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_leave_stop_signals_to_their_rank(persistent):
    loader = torch.utils.data.DataLoader(_Slow(4, 0.2), batch_size=1, num_workers=1,
                                         worker_init_fn=_worker_init, persistent_workers=persistent)
    pids = set()
    for _epoch in range(2 if persistent else 1):
        it = iter(loader)
        got = [int(next(it))]
        (worker,) = it._workers
        pids.add(worker.pid)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGTERM):
            _kill_from_elsewhere(worker.pid, sig)
        got += [int(b) for b in it]  # a dead worker would raise "killed by signal" here
        assert got == [0, 1, 2, 3]
    if persistent:
        assert len(pids) == 1  # the same worker served both epochs
    del it, loader  # the rank's own shutdown still ends the worker
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=30)
    assert not alive


def _late_shield(worker_id: int) -> None:
    """Shield only once both signals the test sends are pending here (blocked since the fork):
    they arrive between the fork and the shield by construction, not by a head start."""
    deadline = time.monotonic() + 60
    while not {signal.SIGTERM, signal.SIGUSR1} <= signal.sigpending():
        assert time.monotonic() < deadline, f"signals never arrived: {signal.sigpending()}"
        time.sleep(0.005)
    _worker_init(worker_id)


def test_a_signal_before_the_worker_is_shielded_waits_for_the_shield():
    """Slurm signals the whole job at once, often just as an epoch forks new workers."""
    loader = TimeoutNamingDataLoader(_Slow(3, 0.0), batch_size=1, num_workers=1,
                                     worker_init_fn=_late_shield)
    before = {c.pid for c in psutil.Process().children()}
    it = iter(loader)  # forks the worker
    # the new child, not a name lookup: torch renames the worker only once it runs, which on a
    # loaded machine can be after this line (a lookup by name here once found no worker on CI)
    (worker,) = [c for c in psutil.Process().children() if c.pid not in before]
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            _kill_from_elsewhere(worker.pid, sig)
        assert [int(b) for b in it] == [0, 1, 2]
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set()  # this process: unblocked again
    finally:
        del it  # a failure here must not leave a worker for the next test
    psutil.wait_procs([worker], timeout=30)
    assert not worker.is_running()


def test_loader_timeout_ends_the_stuck_worker_at_once():
    """After the timeout the rank's SIGTERM (sent by the rank itself) still ends a worker that
    ignores everyone else's: exit code 0, not SIGKILL, and long before its 60 s item ends."""
    items = _Slow(2, 60.0)
    raw = iter(torch.utils.data.DataLoader(items, batch_size=1, num_workers=1, timeout=2,
                                           worker_init_fn=_worker_init))
    assert items.first_done.wait(120)  # the timeout counts from next(), not from the fork
    batches = iterate_with_timeout_errors(raw, 2)
    assert int(next(batches)) == 0
    with pytest.raises(DataError, match="data.loader_timeout_s=2"):
        next(batches)
    assert [w.exitcode for w in raw._workers] == [0]
    assert not any(psutil.pid_exists(w.pid) and _name(psutil.Process(w.pid)) for w in raw._workers)


def test_repeated_signals_are_absorbed_once_stopping():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    quiet = SignalFlag()
    quiet.restore()  # no signal came: the previous handlers are back
    assert {sig: signal.getsignal(sig) for sig in before} == before
    flag = SignalFlag()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        _wait(lambda: flag.count == 1)
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher's repeat, e.g. during the save
        _wait(lambda: flag.count == 2)
        assert flag.received == "SIGUSR1"
        flag.restore()  # stopping: ignored from now on, through the interpreter's exit
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in before)
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest if not ignored
        time.sleep(0.1)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- whole jobs
def _job(roots: list[subprocess.Popen]) -> list[psutil.Process]:
    """Every live process of the job: the roots and all their descendants, workers first."""
    procs = []
    for root in roots:
        try:
            top = psutil.Process(root.pid)
            procs += [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return sorted(procs, key=lambda p: _name(p) != WORKER)


def _name(p: psutil.Process) -> str:
    try:
        return p.name() if p.status() != psutil.STATUS_ZOMBIE else ""
    except psutil.Error:
        return ""


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> int:
    sent = 0
    for p in procs:
        try:
            p.send_signal(sig)
            sent += 1
        except psutil.NoSuchProcess:
            pass
    return sent


def _kill_leftovers(run: Path) -> None:
    """Every process of this run, orphans of a launcher that died included (their command
    line names the run directory; forked workers share it)."""
    mark = f"stage.run_dir={run}"
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and mark in (p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _signal_after(run: Path, roots: list[subprocess.Popen], steps: int, sig: signal.Signals,
                  storm: bool = False, timeout: float = 300) -> dict:
    """Once the run has logged `steps` rows and every rank has its loader worker, send `sig` to
    every process of the job (a storm: keep signalling every few ms until all have exited,
    alternating SIGTERM and SIGUSR1, so repeats land during the save and the exit)."""
    t0 = time.time()
    while True:
        assert time.time() - t0 < timeout, "training did not reach the expected step in time"
        assert all(r.poll() is None for r in roots), "the job exited before the signal"
        procs = _job(roots)
        workers = [p for p in procs if _name(p) == WORKER]
        if len(_rows(run)) >= steps and len(workers) >= 2:
            break
        time.sleep(0.1)
    seen = len(_rows(run))
    _signal_all(procs, sig)
    rounds, kinds = 1, [sig, signal.SIGUSR1 if sig == signal.SIGTERM else signal.SIGTERM]
    while storm and any(r.poll() is None for r in roots):
        time.sleep(0.005)
        if _signal_all(_job(roots), kinds[rounds % 2]):
            rounds += 1
    return {"rows_at_signal": seen, "workers_signalled": len(workers), "rounds": rounds}


def _finish(roots: list[subprocess.Popen], run: Path, timeout: float = 300) -> list[str]:
    try:
        return [r.communicate(timeout=timeout)[0] for r in roots]
    finally:
        _kill_leftovers(run)  # never leave a process behind, whatever failed


def _launch(kind: str, args: list[str]) -> list[subprocess.Popen]:
    """The job as `kind` starts it, each root in its own session so the test reaches it all."""
    common = dict(cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                  start_new_session=True)
    port = str(free_port())
    if kind == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={port}", "launch/pretrain.py", *args]
    elif kind == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
               "--master_port", port, "launch/pretrain.py", *args]
    else:  # one process per rank with the env srun sets through launch/slurm/env.sh
        return [subprocess.Popen([sys.executable, "launch/pretrain.py", *args], **common,
                                 env={**env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                for r in range(2)]
    return [subprocess.Popen(cmd, env=env(), **common)]


def _args(synth, run_dir: Path, *extra: str) -> list[str]:
    # total_steps far away: the schedule is the same whichever step a signal stops at
    return ["--ds", "ds_configs/zero2.json", "--recipe", "launch/recipes/demo_pretrain.yaml",
            *overrides(synth, run_dir, "optim.total_steps=500", "checkpoint.every_steps=0",
                       "logging.image_every=0", *extra)]


SEGMENTS = [("torchrun", signal.SIGTERM, False), ("srun", signal.SIGUSR1, True),
            ("deepspeed", signal.SIGTERM, False)]


@pytest.fixture(scope="module")
def preempted(synth_videos, tmp_path_factory):
    """One run preempted three times, each time under another launcher, each launch the
    sbatch script's relaunch (same command, auto-resume); and the same run uninterrupted.
    The last segment's checkpoint is checked but not relaunched (one launch less to wait for:
    it is written by the same code as the two before it, which are)."""
    d = tmp_path_factory.mktemp("signals")
    run = d / "run"
    args = _args(synth_videos, run)
    segments = []
    for kind, sig, storm in SEGMENTS:
        start = len(_rows(run))
        (run / "summary.json").unlink(missing_ok=True)  # each segment must write its own
        roots = _launch(kind, args)
        try:
            info = _signal_after(run, roots, start + 2, sig, storm)
        finally:
            outs = _finish(roots, run)
        (d / f"{kind}.log").write_text("".join(outs))  # the whole story, when something fails
        rows = _rows(run)
        codes = [r.returncode for r in roots]
        assert (run / "summary.json").is_file(), (
            f"{kind}, {sig.name}: the run wrote no summary; exit codes {codes}\n" + "".join(outs)[-6000:])
        summary = json.loads((run / "summary.json").read_text())
        latest = (run / "checkpoints" / "latest").read_text()
        tag = run / "checkpoints" / latest  # checked now: keep_last prunes it later
        segments.append({**info, "kind": kind, "signal": sig.name, "start": start, "summary": summary,
                         "rc": codes, "out": "".join(outs),
                         "latest": latest, "intact": ck.verify_files(tag),
                         "shards": len(list(tag.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))),
                         "preempted": (run / "PREEMPTED").is_file(), "last_row": rows[-1]["step"],
                         "first_row": rows[start]["step"] if len(rows) > start else None,
                         "leftovers": [p.name for p in (run / "checkpoints").glob(".tmp_*")]})
        (run / "PREEMPTED").unlink(missing_ok=True)  # as launch/slurm does before requeueing
    end = segments[-1]["summary"]["steps"]
    reference = _launch("srun", _args(synth_videos, d / "uninterrupted", f"stage.stop_after={end}"))
    ref_out = _finish(reference, d / "uninterrupted")
    assert [r.returncode for r in reference] == [0, 0], ref_out[0][-3000:]
    return {"run": run, "segments": segments, "end": end, "reference": losses(d / "uninterrupted")}


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(SEGMENTS)), ids=[k for k, _, _ in SEGMENTS])
def test_signal_to_every_process_saves_at_that_step(preempted, i):
    seg = preempted["segments"][i]
    out, step = seg["out"], seg["summary"]["steps"]
    assert seg["workers_signalled"] >= 2, "the signal must reach the data-loader workers too"
    assert "killed by signal" not in out, out[-4000:]
    # no rank failed; torchrun itself ends by re-raising the signal it got (its own traceback)
    assert out.count("Traceback") == (seg["kind"] == "torchrun"), out[-4000:]
    assert seg["summary"]["reason"] == f"signal:{seg['signal']}", out[-4000:]
    # the step that was running when the signal came (or the next, if a rank had passed the
    # step's agreement already), and nothing after it
    assert seg["rows_at_signal"] <= step <= seg["rows_at_signal"] + 2
    assert seg["last_row"] == step
    assert seg["latest"] == f"step_{step:08d}" and seg["preempted"] and not seg["leftovers"]
    assert seg["shards"] == 2 and seg["intact"] is None  # both ranks' optimizer shards, whole
    if seg["kind"] == "srun":  # one process per rank: each rank's own exit code
        assert seg["rc"] == [0, 0], out[-4000:]
        assert seg["rounds"] >= 2  # repeats kept coming through the save and the exit,
        assert "repeated stop signals during the stop and the save: ignored" in out  # some before
    if seg["kind"] == "torchrun":  # every rank ended within torchrun's grace period
        assert "forcefully exiting" not in out


@pytest.mark.slow
def test_each_relaunch_resumes_at_the_signalled_step_with_the_uninterrupted_losses(preempted):
    segs = preempted["segments"]
    for before, after in zip(segs, segs[1:]):
        assert after["start"] == before["summary"]["steps"]
        assert after["first_row"] == before["summary"]["steps"] + 1
        assert f"resumed from {preempted['run'] / 'checkpoints' / before['latest']}" in after["out"]
    assert segs[0]["first_row"] == 1
    combined, reference = losses(preempted["run"]), preempted["reference"]
    assert sorted(combined) == sorted(reference) == list(range(1, preempted["end"] + 1))
    for step in reference:
        assert combined[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


@pytest.mark.slow
def test_nonfinite_loss_stops_without_touching_checkpoints(synth_videos, tmp_path):
    run = tmp_path / "run"
    proc = single("--recipe", "launch/recipes/demo_pretrain.yaml",
                  *overrides(synth_videos, run, "optim.lr=1e30", "optim.warmup_steps=0",
                             "optim.total_steps=6", "logging.image_every=0"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "non-finite loss" in out and "checkpoints up to the last good one are intact" in out
    assert "Traceback" not in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    bad = rows[-1]["step"]
    good = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert good and good[-1] == f"step_{bad - 1:08d}"  # nothing saved at or after the bad step
    assert (run / "checkpoints" / "latest").read_text() == good[-1]
    assert json.loads((run / "checkpoints" / good[-1] / "giant_meta.json").read_text())["step"] == bad - 1
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert not (run / "summary.json").exists() and not (run / "weights.safetensors").exists()
    assert os.path.getsize(run / "checkpoints" / good[-1] / "mp_rank_00_model_states.pt") > 0
