"""The pipeline console: each stage's full output goes to RUN_DIR/stage.log (appended across
attempts, one header line each), the console shows a start line, a live line built from
RUN_DIR/metrics.jsonl and a final line; a failing stage shows its log's tail and path;
`--verbose` streams everything. Stages are real subprocesses (`--launcher python`): a stub
launch/pretrain.py in a workspace (it prints launcher-like and per-step lines and writes
metrics.jsonl rows) for the console rules, and one real tiny pre-training for the real log."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from _launch import REPO

RECIPE = str(REPO / "launch/recipes/demo_pretrain.yaml")
STUB = """import json, sys, time
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run = Path(args["stage.run_dir"])
run.mkdir(parents=True, exist_ok=True)
total = int(args["optim.total_steps"])
print("[INFO] Setting accelerator to CPU", flush=True)
print("cmd = stub launcher", file=sys.stderr, flush=True)
if Path("FAIL").exists():
    for i in range(40):
        print(f"traceback line {i}", file=sys.stderr, flush=True)
    (run / "ERROR").write_text("DataError: the stub failed on purpose")
    sys.exit(7)
with open(run / "metrics.jsonl", "a") as f:
    for step in range(1, total + 1):
        time.sleep(float(Path("PAUSE").read_text()) if Path("PAUSE").exists() else 0)
        row = {"step": step, "time": time.time(), "loss": 1.0 / step, "clips_per_s": 10.0}
        row.update({"val/top1": 75.0} if step == total else {})
        f.write(json.dumps(row) + "\\n")
        f.flush()
        print(f"rank0 step {step}/{total} | loss {1.0 / step:.4g}", flush=True)
summary = {"reason": "completed", "steps": total, "first_loss": 1.0, "last_loss": 1.0 / total, "best_val_top1": 75.0,
           "exported": "best", "best": {"step": total}}
(run / "summary.json").write_text(json.dumps(summary))
(run / "model.json").write_text("{}")
(run / "weights.safetensors").write_text("x")
"""
CHILD_LINES = ("Setting accelerator to CPU", "cmd = stub launcher", "rank0 step")


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """A workspace whose launch/pretrain.py is the stub; one stage `a` of 3 steps."""
    w = tmp_path / "w"
    (w / "launch").mkdir(parents=True)
    (w / "launch" / "pretrain.py").write_text(STUB)
    (w / "data" / "synth").mkdir(parents=True)  # the recipe's manifest (checked, never read by the stub)
    (w / "data" / "synth" / "train.csv").write_text("path,label\nvideos/00000.mp4,0\n")
    path = w / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "stages": [
        {"name": "a", "kind": "pretrain", "recipe": RECIPE, "overrides": {"optim.total_steps": 3, "optim.warmup_steps": 1}}]}))
    monkeypatch.chdir(w)
    return {"dir": w, "path": path, "run": w / "runs" / "t" / "a"}


def pipeline(capfd, path: Path, *extra: str) -> tuple[int, str, str]:
    """`giant pipeline run PATH --launcher python` in this process; → (rc, stdout, stderr), at
    the file-descriptor level (a child writing to our stdout would show up here)."""
    from giant.commands.pipeline import main

    capfd.readouterr()
    rc = main(["run", str(path), "--launcher", "python", *extra])
    captured = capfd.readouterr()
    return rc, captured.out, captured.err


def headers(log: Path) -> list[str]:
    from giant.stages.pipeline_console import HEADER

    return [line for line in log.read_text().splitlines() if line.startswith(HEADER)]


def test_output_goes_to_stage_log_and_the_console_shows_live_and_final_lines(stub, capfd, monkeypatch):
    from giant.stages.pipeline_console import StageConsole

    monkeypatch.setattr(StageConsole, "interval", 0.0)  # a progress line at every new step
    monkeypatch.setattr(StageConsole, "poll", 0.02)
    (stub["dir"] / "PAUSE").write_text("0.5")
    rc, out, err = pipeline(capfd, stub["path"])
    assert rc == 0, out + err
    log = stub["run"] / "stage.log"
    text = log.read_text()
    assert len(headers(log)) == 1 and "$ " in headers(log)[0] and "launch/pretrain.py" in headers(log)[0]
    for line in CHILD_LINES:
        assert line in text and line not in out + err
    assert "rank0 step 3/3 | loss 0.3333" in text
    lines = out.splitlines()
    assert lines[0] == "each stage's full output goes to its run dir's stage.log (runs/t/a/stage.log, ...); " \
                       "--verbose shows it here too"
    assert lines[1] == "[a] pending: starting pretrain"
    live = [line for line in lines if re.match(r"\[a\] step \d/3 · ", line)]
    assert live and all(re.fullmatch(r"\[a\] step [123]/3 · loss [0-9.]+ · (val top-1 75\.0% · )?10\.0 clips/s"
                                     r"( · ETA \d:\d\d)?", line) for line in live), live
    final = next(line for line in lines if line.startswith("[a] done in "))
    assert re.fullmatch(r"\[a\] done in \d+s · step 3/3 · loss 0\.3333 · val top-1 75\.0%", final), final
    assert "$ " not in out  # the command is in the log's header
    table = out[out.index("final metrics"):].splitlines()
    assert table[1].split()[-1] == "exported" and table[3].split()[-2:] == ["best", "@3"], table


def test_a_failing_stage_shows_the_tail_of_its_log_and_a_second_attempt_appends(stub, capfd):
    (stub["dir"] / "FAIL").write_text("")
    rc, out, err = pipeline(capfd, stub["path"])
    log, shown = stub["run"] / "stage.log", "runs/t/a/stage.log"  # as the pipeline names it
    assert rc == 7, out + err
    assert f"[a] the last 25 lines of {shown}:" in err
    tail = err.split(f"of {shown}:\n", 1)[1].splitlines()[:25]
    assert tail == [f"    traceback line {i}" for i in range(15, 40)]
    assert "traceback line 14" not in err and "Setting accelerator" not in out + err
    assert re.search(rf"\[a\] failed with exit code 7 after \d+s; run dir runs/t/a; full output: {shown}\n"
                     r"\[a\] ERROR: DataError: the stub failed on purpose\n", err), err
    from giant import safety  # the log makes the run dir neither foreign nor an earlier run

    assert safety.not_ours(stub["run"], "t", "a") is None
    safety.prepare_run_dir(stub["run"], "never")

    (stub["dir"] / "FAIL").unlink()
    rc, out, err = pipeline(capfd, stub["path"])
    assert rc == 0, out + err
    assert "[a] pending: starting pretrain" in out and "[a] done in " in out
    lines = log.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line in headers(log)]
    assert len(starts) == 2 and starts[0] == 0
    first, second = "\n".join(lines[:starts[1]]), "\n".join(lines[starts[1]:])
    assert "traceback line 39" in first and "traceback line" not in second
    assert "rank0 step 3/3" in second and "rank0 step" not in first


def test_verbose_streams_everything_and_still_writes_the_log(stub, capfd):
    rc, out, err = pipeline(capfd, stub["path"], "--verbose")
    assert rc == 0, out + err
    for line in CHILD_LINES:
        assert line in out + err
    assert "rank0 step 3/3 | loss 0.3333" in out
    assert "[a] $ " in out and "launch/pretrain.py" in out
    log = (stub["run"] / "stage.log").read_text()
    assert "rank0 step 3/3 | loss 0.3333" in log and "cmd = stub launcher" in log
    assert re.search(r"\[a\] done in \d+s · step 3/3 · loss 0\.3333 · val top-1 75\.0%", out), out


def test_a_real_stage_logs_to_stage_log_only(synth_videos, tmp_path, capfd, monkeypatch):
    from test_pipeline import _pipeline

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipe = _pipeline(synth_videos, tmp_path / "runs")
    pipe["stages"] = pipe["stages"][:1]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipe))
    rc, out, err = pipeline(capfd, path)
    assert rc == 0, out + err
    run = tmp_path / "runs" / "pretrain"
    log = (run / "stage.log").read_text()
    assert "step 4/4 | loss" in log and "step 1/4 | loss" in log  # the driver's per-step lines
    assert " | loss" not in out + err
    summary = json.loads((run / "summary.json").read_text())
    assert re.search(rf"\[pretrain\] done in \S+ · step 4/4 · loss {summary['last_loss']:.4g}\n", out), out


# ----------------------------------------------------------------------------- the lines
def rows_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_live_line_from_rows_eta_val_and_data_wait(tmp_path):
    from giant.stages.pipeline_console import Progress, live_text

    t0 = 1000.0
    rows = [{"step": 5, "time": t0 - 500, "loss": 2.0},  # an earlier attempt: not in the step rate
            {"step": 10, "time": t0, "loss": 1.0, "clips_per_s": 12.34, "data_wait_share": 0.5},
            {"step": 20, "time": t0 + 10, "loss": 0.9, "val/top1": 93.5, "clips_per_s": 12.34},
            {"step": 40, "time": t0 + 30, "loss": 0.8123, "clips_per_s": 12.34, "data_wait_share": 0.04}]
    p = Progress(rows_file(tmp_path, rows), 60, since=t0 - 1)
    assert p.poll() and not p.poll()
    assert live_text("finetune", p, 42) == \
        "[finetune] step 40/60 · loss 0.8123 · val top-1 93.5% · 12.3 clips/s · data wait 4% · ETA 0:20"
    with open(p.path, "a") as f:  # the row's own eta_s wins; a row being written waits
        f.write(json.dumps({"step": 41, "time": t0 + 31, "loss": 0.8, "eta_s": 125.0}) + "\n{\"step\": 4")
    assert p.poll()
    assert live_text("finetune", p, 42) == "[finetune] step 41/60 · loss 0.8 · val top-1 93.5% · ETA 2:05"
    assert p.last["step"] == 41
    p.path.write_text(json.dumps({"step": 2, "time": t0, "loss": 3.0}) + "\n")  # rewritten (a resume trims)
    p.poll()
    assert p.last["step"] == 2
    assert live_text("e", None, 75) == "[e] evaluating · 1m15s"
    assert live_text("s", Progress(tmp_path / "absent.jsonl", 9, 0), 3) == "[s] starting · 3s"


def test_eta_needs_two_rows_of_this_attempt(tmp_path):
    from giant.stages.pipeline_console import Progress, clock, took

    p = Progress(rows_file(tmp_path, [{"step": 1, "time": 5.0}, {"step": 2, "time": 100.0}]), 10, since=50)
    p.poll()
    assert p.eta() is None
    p.add({"step": 4, "time": 110.0})
    assert p.eta() == pytest.approx(30.0)  # 6 steps left at 2 steps / 10 s
    assert [clock(42), clock(725), clock(11229)] == ["0:42", "12:05", "3:07:09"]
    assert [took(8), took(72), took(7380)] == ["8s", "1m12s", "2h03m"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_without_a_terminal_at_most_every_interval(tmp_path):
    from giant.stages.pipeline_console import StageConsole

    path = rows_file(tmp_path, [{"step": 1, "time": 0.0, "loss": 1.0}])
    stream = io.StringIO()
    c = StageConsole("a", tmp_path, 10, trains=True, stream=stream, start=0.0)
    c.tick(now=30)
    assert stream.getvalue() == ""
    c.tick(now=61)
    assert stream.getvalue() == "[a] step 1/10 · loss 1\n"
    with open(path, "a") as f:
        f.write(json.dumps({"step": 2, "time": 1.0, "loss": 0.5}) + "\n")
    c.tick(now=90)  # a new step, but not yet an interval after the last line
    assert stream.getvalue().count("\n") == 1
    c.tick(now=125)
    assert stream.getvalue().splitlines()[-1] == "[a] step 2/10 · loss 0.5 · ETA 0:08"
    c.tick(now=300)  # no new step: nothing
    assert stream.getvalue().count("\n") == 2
    e = StageConsole("e", tmp_path, None, trains=False, stream=stream, start=0.0)
    e.tick(now=65)
    assert stream.getvalue().splitlines()[-1] == "[e] evaluating · 1m05s"


def test_on_a_terminal_the_live_line_is_rewritten_in_place(tmp_path):
    from giant.stages.pipeline_console import CLEAR, StageConsole

    rows_file(tmp_path, [{"step": 3, "time": 0.0, "loss": 0.25}])
    term = Terminal()
    c = StageConsole("a", tmp_path, 6, trains=True, stream=term, start=0.0)
    c.tick(now=1)
    c.tick(now=2)
    assert term.getvalue() == (CLEAR + "[a] step 3/6 · loss 0.25") * 2 and "\n" not in term.getvalue()
    c.clear()
    assert term.getvalue().endswith(CLEAR)


def test_final_lines(tmp_path):
    from giant.stages.pipeline_console import Progress, final_text

    p = Progress(rows_file(tmp_path, [{"step": 60, "time": 0.0, "loss": 0.6, "val/top1": 96.5}]), 60, 0)
    p.poll()
    row = {"steps": 60, "last_loss": 0.53, "best_val_top1": 97.0}
    assert final_text("finetune", 72, p, row) == \
        "[finetune] done in 1m12s · step 60/60 · loss 0.53 · val top-1 96.5% (best 97.0%)"
    evaluation = {"test_top1": 87.5, "test_top5": 100.0, "test_videos": 200, "views": 2,
                  "agreement_top1": 92.0, "kl_from_reference": 0.0312, "reference": "eval_teacher"}
    assert final_text("eval_student", 35, None, evaluation) == (
        "[eval_student] done in 35s · test top-1 87.5% · top-5 100.0% · 200 videos × 2 views · "
        "agrees with eval_teacher on 92.0% (KL 0.031)")


def test_log_tail_is_the_newest_attempts(tmp_path):
    from giant.stages.pipeline_console import HEADER, log_tail, open_log

    with open_log(tmp_path, ["python", "x.py"]) as log:
        log.write(b"old 1\nold 2\n")
    with open_log(tmp_path, ["python", "x.py", "a b"]) as log:
        log.write(b"new 1\nbar 10%\rbar 100%\nnew 2\n")
    assert log_tail(tmp_path / "stage.log") == ["new 1", "bar 100%", "new 2"]
    assert log_tail(tmp_path / "stage.log", 1) == ["new 2"]
    lines = (tmp_path / "stage.log").read_text().splitlines()
    assert lines[3].startswith(HEADER) and lines[3].endswith("attempt: $ python x.py 'a b'")
    assert log_tail(tmp_path / "absent.log") == []


def test_a_missing_outside_manifest_stops_the_pipeline_before_any_stage(stub, capfd):
    """Outside inputs of the stages still to run are checked before the first launch: a wrong
    manifest is one line naming the stage and the key, and nothing is launched or written."""
    (stub["dir"] / "data" / "synth" / "train.csv").unlink()
    from giant.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        pipeline(capfd, stub["path"])
    assert "stage a: data.manifest=data/synth/train.csv does not exist" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert "starting" not in capfd.readouterr().out and not stub["run"].exists()
