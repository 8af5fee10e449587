"""Collect scripts/bench/gpu_check.sh's sections into OUT/gpu_check.json, OUT/gpu_check.md (the
tables for docs/PERFORMANCE.md) and OUT/gpu_check.log (each section's log tail).

    python scripts/bench/gpu_report.py WORK_DIR OUT_DIR [--budget S --elapsed S]

Every section is read on its own: a missing or unreadable result is reported, never fatal.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ORDER = ["setup", "env", "sdpa", "decoder", "pretrain_new", "pretrain_shipped", "finetune", "distill",
         "reshard", "official", "loader", "saved"]


def _json(path: Path):
    """The last JSON object line of a file (helpers print one), else None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def collect(work: Path) -> dict:
    sections = {}
    for name in ORDER:
        status = _json(work / f"{name}.status")
        if status is None:
            continue
        log = work / f"{name}.log"
        sections[name] = {**status, "result": _json(work / f"{name}.json"),
                          "log_tail": log.read_text(errors="replace")[-3000:] if log.is_file() else ""}
    return sections


def _f(x, spec: str = ".1f") -> str:
    return "-" if x is None or isinstance(x, str) else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _ms(backends: dict, name: str) -> str:
    got = backends.get(name, {})
    return _f(got["ms_fwd_bwd"], ".2f") if "ms_fwd_bwd" in got else "refused"


def _sdpa(res: dict) -> list[str]:
    rows = []
    for c in res.get("cases", []):
        b = c.get("backends", {})
        rows.append([f"{c['shape']} ({c['batch']}×{c['heads']}×{c['tokens']}×{c['head_dim']})", c["dtype"],
                     *[_ms(b, n) for n in ("cudnn", "flash", "efficient", "math")], c.get("torch_default", "-"),
                     f"{c.get('giant_auto', '-')} ({_f(c.get('giant_auto_ms'), '.2f')})"])
    return _table(["shape (B×h×N×d)", "dtype", "cuDNN ms", "flash ms", "efficient ms", "math ms",
                   "torch picks", "giant auto picks (ms)"], rows)


def _decoder(res: dict) -> list[str]:
    rows = [[mode, _f(r.get("ms_fwd_bwd")), _f(r.get("tflops")), _f(r.get("speedup_vs_fp32"), ".2f"),
             _f(r.get("peak_gib")), r.get("error", "")] for mode, r in res.get("modes", {}).items()]
    return _table(["decoder matmuls", "ms fwd+bwd", "TFLOP/s", "speed-up vs FP32", "peak GiB", "error"], rows)


def _steps(sections: dict) -> list[str]:
    rows = []
    for name, label in (("pretrain_new", "ViT-g pre-training, today's defaults"),
                        ("pretrain_shipped", "ViT-g pre-training, as shipped before issue 19"),
                        ("official", "official VideoMAE V2 step"), ("finetune", "ViT-g fine-tuning"),
                        ("distill", "ViT-B ← ViT-g distillation")):
        r = (sections.get(name) or {}).get("result") or {}
        if not r:
            continue
        clips = r.get("batch_per_device") or r.get("clips_per_step")
        mfu = r.get("mfu")
        rows.append([label, str(r.get("act_ckpt", "all" if name == "official" else "-")), str(clips or "-"),
                     _f(r.get("clips_per_s")), _f(r.get("tflops")), "-" if mfu is None else f"{100 * mfu:.1f}%",
                     _f(r.get("mem_alloc_gib")), _f(r.get("mem_reserved_gib")), _f(r.get("planned_allocated_gib")),
                     _f(r.get("planned_peak_gib")), r.get("error", "")[:80]])
    return _table(["step", "act. ckpt", "clips/step", "clips/s", "TFLOP/s", "MFU", "peak alloc GiB",
                   "peak reserved GiB", "planner alloc GiB", "planner peak GiB", "error"], rows)


def _loader(res: dict, sections: dict) -> list[str]:
    prof, run = res.get("profile", {}), res.get("loader", {})
    per_core = prof.get("videos_per_cpu_s") or prof.get("videos_per_s_per_core")
    gpu = ((sections.get("pretrain_new") or {}).get("result") or {}).get("clips_per_s")
    need = gpu / (prof.get("num_sample") or 4) if gpu else None
    lines = [f"- per core: {_f(per_core)} videos per CPU-second ({prof.get('backend', '?')}, "
             f"clip {prof.get('clip', '?')})",
             f"- loader, {run.get('workers', '?')} workers on {res.get('cores', '?')} cores: "
             f"{_f(run.get('videos_per_s'))} videos/s = {_f(run.get('clips_per_s'))} clips/s"]
    if need and per_core:
        lines.append(f"- this GPU's pre-training rate needs {need:.1f} videos/s: {need / per_core:.1f} cores")
    return lines


def markdown(sections: dict, budget: int, elapsed: int) -> str:
    env = (sections.get("env") or {}).get("result") or {}
    md = [f"## GPU check ({env.get('gpu', 'no GPU')}, {datetime.date.today().isoformat()})", "",
          f"`scripts/bench/gpu_check.sh`: {elapsed} s of a {budget} s budget. torch {env.get('torch', '?')}, "
          f"CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, DeepSpeed {env.get('deepspeed', '?')}, "
          f"{_f(env.get('memory_gib'))} GiB, peak {env.get('peak_tflops_bf16', '?')} TFLOP/s (BF16 dense).", ""]
    md += _table(["section", "status", "seconds"],
                 [[n, s["status"], str(s["seconds"])] for n, s in sections.items()]) + [""]
    parts = [("sdpa", "### SDPA kernels at giant's shapes (forward + backward)", _sdpa),
             ("decoder", "### ViT-g decoder (4 blocks × 1232 tokens × 128 clips), forward + backward", _decoder)]
    for name, title, fn in parts:
        res = (sections.get(name) or {}).get("result")
        if res:
            md += [title, "", *fn(res), ""]
    md += ["### Training steps (one GPU, ZeRO-2 on one rank)", "", *_steps(sections), ""]
    loader = (sections.get("loader") or {}).get("result")
    if loader:
        md += ["### Loader", "", *_loader(loader, sections), ""]
    for name, title in (("reshard", "### Re-shard resume (2 CPU ranks ZeRO-2 → this GPU ZeRO-1, fused AdamW)"),
                        ("saved", "### Memory planner vs saved tensors on CUDA")):
        res = (sections.get(name) or {}).get("result")
        if res:
            md += [title, "", "```json", json.dumps(res, indent=1)[:2000], "```", ""]
    return "\n".join(md)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work")
    p.add_argument("out")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--elapsed", type=int, default=0)
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = collect(work)
    (out / "gpu_check.json").write_text(json.dumps({"budget_s": args.budget, "elapsed_s": args.elapsed,
                                                    "sections": sections}, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(sections, args.budget, args.elapsed) + "\n")
    logs = (f"===== {n}: {s['status']}\n{s['log_tail']}" for n, s in sections.items())
    (out / "gpu_check.log").write_text("\n".join(logs))
    failed = [n for n, s in sections.items() if s["status"] != "ok"]
    print(f"gpu_check: {len(sections) - len(failed)}/{len(sections)} sections ok"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f"; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
