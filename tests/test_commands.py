"""Every `--help` answers from argparse alone: no torch, no DeepSpeed imported (the library code
a command runs is imported only once the command runs)."""
import subprocess
import sys
from pathlib import Path

import pytest

from giant.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PROBE = """import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_{how}({target!r}, run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(sorted(m for m in ("torch", "deepspeed", "timm", "torchvision") if m in sys.modules))
"""
HELPS = ([("module", "giant.cli", ["giant", "--help"])]
         + [("module", "giant.cli", ["giant", name, "--help"]) for name in COMMANDS]
         + [("module", "giant.cli", ["giant", "data", sub, "--help"]) for sub in ("synth", "validate", "bench")]
         + [("module", "giant.cli", ["giant", "pipeline", sub, "--help"]) for sub in ("run", "plan", "status")]
         + [("path", str(REPO / "launch" / f"{kind}.py"), [f"launch/{kind}.py", "--help"])
            for kind in ("pretrain", "finetune", "distill", "evaluate")])


@pytest.mark.parametrize("how,target,argv", HELPS, ids=[" ".join(h[2]) for h in HELPS])
def test_help_imports_no_torch(how, target, argv):
    code = PROBE.format(argv=argv, how=how, target=target)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"{' '.join(argv)} imported {proc.stdout.strip()}"
