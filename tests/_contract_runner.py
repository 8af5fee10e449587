"""Run many `giant ...` invocations as forked children of one process that imported giant (and
torch) once. Each child is a real process with its own working directory, environment,
stdout/stderr files and exit code; only the ~3 s of imports per case are shared. Used by
test_error_contract.py:

    python tests/_contract_runner.py CASES.json RESULTS.json JOBS

CASES.json: [{"name", "argv" (after `giant`), "cwd", "env", "logs" (folder for out/err)}].
RESULTS.json: {name: exit code}. Whatever the imports print goes to this process's stderr,
which the test requires to be empty: a real `giant` would print it before every error line.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback

TIMEOUT_S = 120
# what the commands import when they run (torch, DeepSpeed, the models): ~3 s a case otherwise
WARM = ("giant.cli", "giant.stages.driver", "giant.stages.pretrain", "giant.stages.finetune",
        "giant.stages.distill", "giant.stages.evaluate", "giant.stages.pipeline_run",
        "giant.engine.deepspeed", "giant.engine.checkpoint", "giant.engine.export", "giant.engine.reshard",
        "giant.interop", "giant.interop.convert", "giant.data")


def _child(case: dict) -> None:
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    for fd, name in ((1, "out"), (2, "err")):
        f = os.open(os.path.join(case["logs"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["giant", *case["argv"]]
    try:
        from giant.cli import main

        rc = main(case["argv"])
    except SystemExit as exc:  # argparse, --help
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - shown to the test as a traceback on stderr
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(rc or 0))


def _start(case: dict) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _child(case)
        finally:
            os._exit(1)
    return pid


def main() -> None:
    cases, results_path, jobs = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    # command modules are light; the library they run imports torch: load it once, before any fork
    for name in WARM:
        importlib.import_module(name)
    pending, running, results = list(cases), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            running[_start(case)] = (case["name"], time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for pid, (name, t0) in list(running.items()):
                if time.monotonic() - t0 > TIMEOUT_S:
                    os.kill(pid, signal.SIGKILL)  # reaped below; its code says -9
            time.sleep(0.02)
            continue
        name, _ = running.pop(pid)
        results[name] = os.waitstatus_to_exitcode(status)
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
