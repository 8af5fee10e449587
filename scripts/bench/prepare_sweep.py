"""Choose `giant data prepare`'s defaults: size, quality, encode and decode cost per setting.

    python scripts/bench/prepare_sweep.py MANIFEST OUT_ROOT [--videos 4] [--windows 4] \
        [--configs 1:18:fastdecode:fast,1:18::fast,...]

Each config is keyframe_seconds:crf:tune:preset. For each, the first N videos are prepared in
this process (CPU seconds per file = encode cost), then random 16x4 windows are decoded from the
prepared files and the originals, the same windows for every config and reader, interleaved (CPU
ms per window; scripts/bench/decode_windows.py), and compared with the same frames of the source
(PSNR in dB, RGB; prepare_quality.window_psnr). One JSON line per config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_windows import measure_sets  # noqa: E402

DEFAULT_CONFIGS = ("1:18:fastdecode:fast", "1:18::fast", "1:20:fastdecode:fast",
                   "1:23:fastdecode:fast", "0.5:18:fastdecode:fast", "2:18:fastdecode:fast",
                   "1:18:fastdecode:veryfast")


def prepare_config(config: str, subset: Path, out_root: Path) -> tuple[dict, list[str]]:
    """Prepare the subset with one config (resumable: a re-run reuses finished files)."""
    from giant.data.manifest import load_entries
    from giant.data.prepare import PrepareSettings, prepare

    seconds, crf, tune, preset = config.split(":")
    settings = PrepareSettings(keyframe_seconds=float(seconds), crf=int(crf), tune=tune,
                               preset=preset)
    out = out_root / config.replace(":", "_").replace(".", "p")
    t_cpu = time.process_time()
    report = prepare(subset, out, settings, workers=0)
    row = {"config": config, "gop_s": float(seconds), "crf": int(crf), "tune": tune or "-",
           "preset": preset, "kb_before": round(report["bytes_before"] / 1e3 / report["files"], 1),
           "kb_after": round(report["bytes_after"] / 1e3 / report["files"], 1)}
    if report["prepared"] == report["files"]:  # timed only when every file was encoded now
        row["encode_cpu_s_per_video"] = round((time.process_time() - t_cpu) / report["files"], 2)
    return row, [e.path for e in load_entries(report["manifest"])]


def psnr_of(sources: list[str], prepared: list[str], per_video: int = 2) -> list[float]:
    from giant.data.decode import PyAVReader
    from giant.data.prepare_quality import window_psnr
    from giant.data.sampling import dense_indices

    rng = np.random.default_rng(1)
    values = []
    for src, dst in zip(sources, prepared):
        with PyAVReader(dst) as reader:
            count = reader.num_frames
        for _ in range(per_video):
            values.append(window_psnr(src, dst, dense_indices(0, count, 16, 4, rng)))
    return values


def main() -> None:
    from giant.data.manifest import load_entries, write_manifest

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("out_root", type=Path)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--windows", type=int, default=4, help="decode windows per video")
    p.add_argument("--rounds", type=int, default=1, help="decodes of each window per config")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    args = p.parse_args()
    args.out_root.mkdir(parents=True, exist_ok=True)
    entries = load_entries(args.manifest, weighted=False)[: args.videos]
    subset = args.out_root / "subset.csv"
    write_manifest(subset, entries)
    sources = [e.path for e in entries]
    rows, sets = {}, {"original": sources}
    for config in args.configs.split(","):
        rows[config], sets[config] = prepare_config(config, subset, args.out_root)
        psnr = psnr_of(sources, sets[config])
        rows[config].update(psnr_db_min=round(min(psnr), 2),
                            psnr_db_mean=round(float(np.mean(psnr)), 2))
    rows["original"] = {"config": "original"}
    decode = measure_sets(sets, ["decord", "pyav"], args.windows, rounds=args.rounds)
    for (label, reader), result in decode.items():
        rows[label][f"{reader}_cpu_ms"] = result["cpu_ms"]
        if result["frames_decoded"]:
            rows[label]["pyav_frames_decoded"] = result["frames_decoded"]
    load = round(os.getloadavg()[0], 2)
    for row in rows.values():
        print(json.dumps({**row, "windows": args.videos * args.windows, "loadavg_1m": load}))


if __name__ == "__main__":
    main()
