"""`giant bench` runs real DeepSpeed steps and reports consistent throughput numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

from giant.engine.precision import choose_encoder_precision

REPO = Path(__file__).resolve().parents[1]


def test_bench_json_cpu(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "giant.cli", "bench", "--model", "tiny", "--frames", "4",
           "--img-size", "32", "--batch", "2", "--steps", "3", "--warmup", "1", "--zero", "1",
           "--act-ckpt", "all", "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["zero"] == 1 and result["act_ckpt"] == "all" and result["steps"] == 3
    assert result["precision"] == choose_encoder_precision("auto", "cpu")[0]  # default auto, resolved
    assert abs(result["clips_per_s"] - 2 * result["steps_per_s"]) < 1e-6 * result["clips_per_s"]
    expected_tflops = result["clips_per_s"] * result["train_flops_per_clip"] / 1e12
    assert abs(result["tflops"] - expected_tflops) < 1e-9
    assert result["mem_rss_gib"] > 0 and result["last_loss"] > 0 and result["cpu_s_per_step"] > 0
