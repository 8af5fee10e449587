"""precision.encoder=auto: one concrete choice per device kind, logged once; an explicit bf16 on
a CPU without native BF16 warns with its cost; the DeepSpeed JSON is checked against the
resolved value. The capability probes are monkeypatched to cover every device kind; one test
runs the real CPU probe with oneDNN capped at AVX2 (how an AVX2-only CPU answers)."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from giant.config import load_config
from giant.engine import precision
from giant.engine.ds_config import merge_ds_config
from giant.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def caps(monkeypatch):
    """Set what the 'hardware' supports; fresh log-once memory per test."""
    precision._log_once.cache_clear()

    def set_caps(cuda_bf16: bool = True, cpu_bf16: bool = True) -> None:
        monkeypatch.setattr(precision, "cuda_bf16", lambda device: cuda_bf16)
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda: cpu_bf16)
    yield set_caps
    precision._log_once.cache_clear()


@pytest.mark.parametrize("device, cuda_bf16, cpu_bf16, want", [
    ("cuda", True, False, "bf16"),   # A100/H100
    ("cuda", False, True, "fp16"),   # V100/T4: no BF16 → loss-scaled FP16
    ("cpu", False, True, "bf16"),    # avx512_bf16 / AMX / ARM bf16
    ("cpu", True, False, "fp32"),    # AVX2-only: BF16 would be emulated
])
def test_auto_resolves_per_device_kind(caps, caplog, device, cuda_bf16, cpu_bf16, want):
    caps(cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16)
    cfg = load_config(None, [])
    assert cfg.precision.encoder == "auto"  # the default
    with caplog.at_level(logging.INFO, logger="giant.engine.precision"):
        resolved = precision.resolve_precision(cfg, device)
        again = precision.resolve_precision(cfg, device)
    assert resolved.precision.encoder == again.precision.encoder == want
    assert cfg.precision.encoder == "auto"  # a copy: the caller's config is untouched
    assert resolved.optim == cfg.optim and resolved.model == cfg.model
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"precision.encoder=auto -> {want} (")


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_a_concrete_choice_is_kept_on_every_device(caps, requested):
    caps(cuda_bf16=False, cpu_bf16=False)
    for device in ("cpu", "cuda"):
        cfg = load_config(None, [f"precision.encoder={requested}"])
        assert precision.resolve_precision(cfg, device) is cfg


def test_explicit_bf16_on_cpu_without_native_bf16_warns_once_with_the_cost(caps, caplog):
    caps(cpu_bf16=False)
    cfg = load_config(None, ["precision.encoder=bf16"])
    with caplog.at_level(logging.INFO, logger="giant.engine.precision"):
        for _ in range(3):
            assert precision.resolve_precision(cfg, "cpu").precision.encoder == "bf16"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(caplog.records) == 1
    msg = warnings[0].getMessage()
    assert "without native BF16" in msg and "4-27x slower" in msg and "precision.encoder=auto" in msg


def test_explicit_bf16_warns_only_where_it_is_emulated(caps, caplog):
    caps(cuda_bf16=False, cpu_bf16=True)
    cfg = load_config(None, ["precision.encoder=bf16"])
    with caplog.at_level(logging.INFO, logger="giant.engine.precision"):
        precision.resolve_precision(cfg, "cpu")
        precision.resolve_precision(cfg, "cuda")
    assert caplog.records == []


def test_config_accepts_auto_and_names_it_in_errors():
    assert load_config(REPO / "launch/recipes/demo_pretrain.yaml").precision.encoder == "auto"
    with pytest.raises(ConfigError, match="precision.encoder='bf32': use auto, fp32, bf16 or fp16"):
        load_config(None, ["precision.encoder=bf32"])


def test_ds_json_precision_sections_compare_with_the_resolved_value(caps):
    ds = {"bf16": {"enabled": True}}
    auto = load_config(None, [])
    merge_ds_config(ds, auto, 1, "x.json")  # pre-flight: the device is not known yet
    caps(cpu_bf16=False)
    with pytest.raises(ConfigError, match="bf16.enabled=true but recipe precision.encoder=fp32"):
        merge_ds_config(ds, precision.resolve_precision(auto, "cpu"), 1, "x.json")
    caps(cpu_bf16=True)
    merged, _ = merge_ds_config(ds, precision.resolve_precision(auto, "cpu"), 1, "x.json")
    assert merged["giant"]["encoder_precision"] == "bf16" and merged["bf16"] == {"enabled": False}
    caps(cuda_bf16=False)  # a GPU without BF16 resolves to fp16: the fp16 checks apply
    with pytest.raises(ConfigError, match="compute_grad_norm=false but recipe precision.encoder=fp16"):
        merge_ds_config({"zero_optimization": {"stage": 2, "compute_grad_norm": False}},
                        precision.resolve_precision(auto, "cuda"), 1, "x.json")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN x86 ISA cap")
def test_real_probe_says_no_native_bf16_when_onednn_is_capped_at_avx2():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN answer as an AVX2-only CPU does (its BF16 check is
    `effective ISA >= avx512_core`), whatever this CPU is: auto must then pick fp32."""
    code = ("from giant.engine.precision import choose_encoder_precision, cpu_native_bf16;"
            "print(cpu_native_bf16(), choose_encoder_precision('auto', 'cpu')[0])")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "fp32"]
