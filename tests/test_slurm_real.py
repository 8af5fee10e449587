"""The Slurm path for real: launch/slurm/submit_pipeline.sh, the *.sbatch scripts and env.sh on
a one-node Slurm (tests/_slurm.py; 2 fake GPUs), tiny stages on the synthetic videos.

One chain, shared by most assertions: pre-train (2 ranks) → fine-tune (`ft`, 1 rank) →
evaluate, plus `ft_ref`, the same fine-tune left alone. Submitting it twice at once submits
nothing the second time; `scancel --signal=USR1` to the running `ft` makes it save, requeue
itself under the same job id and resume to the losses of `ft_ref`, while the evaluation waits
for it (afterok); submitting it again once done skips every stage. Beside the chain, a job with
a one-minute time limit and `--signal=USR1@10` saves and requeues before Slurm's kill (under the
scripts' own `--signal=USR1@600` the same limit is refused at the start). Then a
rank killed twice with GIANT_MAX_CRASH_RESTARTS=1 stops the requeueing, and a configuration
error writes RUN_DIR/ERROR, is not requeued, and Slurm cancels its dependant."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from _slurm import FINAL, Cluster, final, job, slurm_cluster, submit_pipeline, wait_for  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
FT_STEPS = 40  # long enough for the USR1 to land mid-run (a step takes ~0.1 s here)


def _data(synth) -> dict:
    return {"data.manifest": str(synth.train_manifest), "data.val_manifest": str(synth.val_manifest),
            "model.num_frames": 4, "data.num_sample": 2, "data.num_workers": 0, "optim.batch_size": 2,
            "optim.warmup_steps": 1, "logging.log_every": 1, "logging.image_every": 0,
            "logging.progress": False, "logging.report_to": []}


def _pipeline(name: str, root: Path, stages: list) -> dict:
    return {"name": name, "root": str(root), "defaults": {"ds": "ds_configs/zero2.json", "gpus": 2},
            "stages": stages}


def _write(path: Path, pipeline: dict) -> Path:
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _chain(synth, root: Path) -> dict:
    ft = {**_data(synth), "optim.total_steps": FT_STEPS, "checkpoint.every_steps": 0}  # the USR1 save only
    finetune = {"kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "pre",
                "gpus": 1, "overrides": ft}
    return _pipeline("chain", root, [
        {"name": "pre", "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml",
         "overrides": {**_data(synth), "optim.total_steps": 4}},
        {"name": "ft", **finetune},
        {"name": "ft_ref", **finetune},
        {"name": "ev", "kind": "evaluate", "target": "ft", "gpus": 1,
         "overrides": {"data.test_temporal_views": 1, "data.test_spatial_views": 1}},
    ])


def _log(out: Path, name: str, job_id: str) -> str:
    return (out / f"{name}-{job_id}.out").read_text()


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").open()]


def _scancel(cluster: Cluster, *args: str) -> None:
    subprocess.run(["scancel", *args], check=True, timeout=60, env=cluster.env())


@dataclass
class TimeLimitWatch:
    """The time-limited job: once it has requeued itself, what its first run left behind is
    recorded and the job cancelled (its next run would only train until the next signal)."""

    cluster: Cluster
    job_id: str
    run_dir: Path
    seen: dict = field(default_factory=dict)
    last: float = 0.0

    def poll(self) -> bool:
        if not self.seen and time.time() - self.last > 0.5:  # called from faster polls too
            self.last = time.time()
            state = job(self.cluster, self.job_id)
            if int(state.get("Restarts", 0)) >= 1 or state.get("JobState") in ("FAILED", "TIMEOUT", "CANCELLED"):
                summary = self.run_dir / "summary.json"
                self.seen = {"job": state, "latest": (self.run_dir / "checkpoints" / "latest").read_text()
                             if (self.run_dir / "checkpoints" / "latest").is_file() else None,
                             "summary": json.loads(summary.read_text()) if summary.is_file() else {}}
                _scancel(self.cluster, self.job_id)
        return bool(self.seen)


@pytest.fixture(scope="module")
def runs(slurm_cluster, synth_videos, tmp_path_factory):
    cluster, d = slurm_cluster, tmp_path_factory.mktemp("slurm")
    opts = ["--cpus-per-task=1", f"--output={d}/%x-%j.out", "--time=60"]
    chain = _write(d / "chain.yaml", _chain(synth_videos, d / "chain"))
    first, jobs = submit_pipeline(cluster, chain, *opts)
    assert first.returncode == 0, first.stdout + first.stderr
    again, again_jobs = submit_pipeline(cluster, chain, *opts)  # while they are queued or running

    # the time limit: a stage that would train for ever, 1 minute, USR1 10 s before the end (Slurm
    # checks every 30 s and signals up to 30 s early: between 20 and 50 s, the kill at 60-90 s);
    # it asks for no GPU so that it runs beside the chain
    tl = _pipeline("tl", d / "tl", [{"name": "train", "kind": "pretrain", "gpus": 1,
                                      "recipe": "launch/recipes/demo_pretrain.yaml",
                                      "overrides": {**_data(synth_videos), "optim.total_steps": 100000,
                                                    "logging.log_every": 10}}])
    tl_proc, tl_jobs = submit_pipeline(cluster, _write(d / "tl.yaml", tl), "--cpus-per-task=1",
                                       f"--output={d}/%x-%j.out", "--time=1", "--signal=USR1@10",
                                       "--gpus-per-node=0")
    assert tl_proc.returncode == 0, tl_proc.stdout + tl_proc.stderr
    watch = TimeLimitWatch(cluster, tl_jobs["train"], d / "tl" / "train")

    metrics = d / "chain" / "ft" / "metrics.jsonl"

    def training() -> bool:
        watch.poll()
        return metrics.is_file() and len(metrics.read_text().splitlines()) >= 2

    wait_for(training, 300, "the fine-tune to train", poll=0.05)
    _scancel(cluster, "--signal=USR1", jobs["ft"])

    def finished(job_id: str):
        watch.poll()
        state = job(cluster, job_id)
        return state if state.get("JobState") in FINAL else None

    ended = {name: wait_for(lambda: finished(job_id), 300, f"chain:{name} to end", poll=0.5)
             for name, job_id in jobs.items()}
    done, done_jobs = submit_pipeline(cluster, chain, *opts)
    return {"cluster": cluster, "dir": d, "root": d / "chain", "jobs": jobs, "first": first, "again": again,
            "again_jobs": again_jobs, "ended": ended, "done": done, "done_jobs": done_jobs, "watch": watch}


def test_afterok_chain_completes_and_resubmission_skips_done_stages(runs):
    jobs, ended, out = runs["jobs"], runs["ended"], runs["first"].stdout
    assert sorted(jobs) == ["ev", "ft", "ft_ref", "pre"]
    assert f"chain:ft: pending -> job {jobs['ft']} (after {jobs['pre']})" in out
    assert f"chain:ev: pending -> job {jobs['ev']} (after {jobs['ft']})" in out
    for name in jobs:
        assert (ended[name]["JobState"], ended[name]["ExitCode"]) == ("COMPLETED", "0:0"), (name, ended[name])
    assert ended["ev"]["StartTime"] >= ended["ft"]["EndTime"]  # the evaluation waited for the requeued ft
    assert json.loads((runs["root"] / "ev" / "results.json").read_text())["top1"] is not None
    assert (runs["root"] / "pre" / "weights.safetensors").is_file()

    done = runs["done"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done, skipped") == 4 and not runs["done_jobs"]


def test_stage_already_queued_is_not_submitted_twice(runs):
    again = runs["again"]
    assert again.returncode == 0, again.stderr
    assert runs["again_jobs"] == runs["jobs"]
    assert again.stdout.count("already queued or running as job") == 4 and "-> job" not in again.stdout


def test_usr1_saves_requeues_and_resumes_with_the_uninterrupted_losses(runs):
    ft_id, root = runs["jobs"]["ft"], runs["root"]
    assert runs["ended"]["ft"]["Restarts"] == "1" and runs["ended"]["ft_ref"]["Restarts"] == "0"
    log = _log(runs["dir"], "chain:ft", ft_id)
    assert f"giant: preempted, requeueing job {ft_id}" in log
    saved = int(log.split("resumed from ")[1].split("step_")[1][:8])
    assert 1 <= saved < FT_STEPS
    got, want = _losses(root / "ft"), _losses(root / "ft_ref")
    assert len(got) == FT_STEPS and got == pytest.approx(want, rel=1e-6)
    assert not (root / "ft" / "PREEMPTED").exists()


def test_time_limit_signal_saves_before_the_kill(runs):
    watch = runs["watch"]
    wait_for(watch.poll, 180, "the time-limited job to requeue itself", poll=0.5)
    seen = watch.seen
    log = _log(runs["dir"], "tl:train", watch.job_id)
    assert seen["job"]["Restarts"] == "1", seen["job"]
    assert f"giant: preempted, requeueing job {watch.job_id}" in log and "DUE TO TIME LIMIT" not in log
    assert seen["summary"]["reason"] == "signal:SIGUSR1"
    assert seen["latest"] == f"step_{seen['summary']['steps']:08d}" and seen["summary"]["steps"] >= 1


def _kill_rank(run_dir: Path, killed: set) -> None:
    """SIGKILL rank 1 of the stage training in `run_dir` (a dead node, an OOM kill)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid in killed or f"stage.run_dir={run_dir}" not in (p.info["cmdline"] or []):
                continue
            if "python" in p.info["cmdline"][0] and p.environ().get("RANK") == "1":
                p.send_signal(signal.SIGKILL)
                killed.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_rank_killed_repeatedly_stops_requeueing(slurm_cluster, synth_videos, tmp_path):
    run_dir = tmp_path / "crash" / "train"
    crash = _pipeline("crash", tmp_path / "crash", [{"name": "train", "kind": "pretrain",
                                                      "recipe": "launch/recipes/demo_pretrain.yaml",
                                                      "overrides": {**_data(synth_videos), "optim.total_steps": 1000}}])
    proc, jobs = submit_pipeline(slurm_cluster, _write(tmp_path / "crash.yaml", crash), "--cpus-per-task=1",
                                 f"--output={tmp_path}/%x-%j.out", "--time=60",
                                 extra_env={"GIANT_MAX_CRASH_RESTARTS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    killed: set = set()

    def ended():
        _kill_rank(run_dir, killed)
        state = job(slurm_cluster, jobs["train"])
        return state if state.get("JobState") in FINAL else None

    state = wait_for(ended, 180, "the crashing job to give up", poll=0.1)
    log = _log(tmp_path, "crash:train", jobs["train"])
    assert len(killed) == 2 and state["Restarts"] == "1", (killed, state, log[-3000:])
    assert state["JobState"] == "FAILED"
    assert "requeue 1/1, resuming from none" in log
    assert "after 1 restarts without a new checkpoint (latest: none); not requeueing" in log
    assert (run_dir / "CRASH_RESTARTS").read_text().split() == ["1", "none"]


def test_configuration_error_writes_error_never_requeues_and_cancels_dependants(slurm_cluster, synth_videos,
                                                                                tmp_path):
    bad_ds = tmp_path / "bad_ds.json"  # a value the recipe owns, set differently: found when the job starts
    bad_ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 7, "zero_optimization": {"stage": 2}}))
    bad = _pipeline("bad", tmp_path / "bad", [
        {"name": "pre", "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml", "gpus": 1,
         "ds": str(bad_ds), "overrides": _data(synth_videos)},
        {"name": "ft", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "pre",
         "gpus": 1, "overrides": _data(synth_videos)}])
    proc, jobs = submit_pipeline(slurm_cluster, _write(tmp_path / "bad.yaml", bad), "--cpus-per-task=1",
                                 f"--output={tmp_path}/%x-%j.out", "--time=60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pre, ft = final(slurm_cluster, jobs["pre"], 120), final(slurm_cluster, jobs["ft"], 60)
    assert (pre["JobState"], pre["ExitCode"], pre["Restarts"]) == ("FAILED", "2:0", "0"), pre
    assert ft["JobState"] == "CANCELLED" and ft["Reason"] == "DependencyNeverSatisfied", ft
    error = (tmp_path / "bad" / "pre" / "ERROR").read_text()
    assert error.startswith("ConfigError: ") and "train_micro_batch_size_per_gpu=7" in error
    log = _log(tmp_path, "bad:pre", jobs["pre"])
    assert "giant: not requeueing: ConfigError" in log and "requeueing job" not in log
    assert not (tmp_path / "bad" / "ft" / "metrics.jsonl").exists()


def test_time_limit_shorter_than_the_signal_lead_is_refused_at_start(slurm_cluster, synth_videos, tmp_path):
    """`--time=1` on a script whose header says --signal=USR1@600: the signal would come at once and
    every requeue would train a step or none; the job refuses (exit 2, no requeue, no training).
    The time-limit job in `runs` (--signal=USR1@10 passed to submit_pipeline.sh) is the control."""
    short = _pipeline("short", tmp_path / "short", [{"name": "train", "kind": "pretrain", "gpus": 1,
                                                      "recipe": "launch/recipes/demo_pretrain.yaml",
                                                      "overrides": {**_data(synth_videos), "optim.total_steps": 4}}])
    proc, jobs = submit_pipeline(slurm_cluster, _write(tmp_path / "short.yaml", short), "--cpus-per-task=1",
                                 f"--output={tmp_path}/%x-%j.out", "--time=1", "--gpus-per-node=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = final(slurm_cluster, jobs["train"], 120)
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("FAILED", "2:0", "0"), state
    log = _log(tmp_path, "short:train", jobs["train"])
    assert "giant: time limit 1:00 (60 s) leaves no time before the checkpoint signal, sent 600 s" in log, log
    assert "Nothing was started." in log and "requeueing" not in log
    assert not (tmp_path / "short" / "train" / "metrics.jsonl").exists()
