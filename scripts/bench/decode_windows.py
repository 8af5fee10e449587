"""CPU cost of decoding one pre-training window (open + 16 frames at stride 4) per reader.

    python scripts/bench/decode_windows.py MANIFEST [--windows 8] [--readers decord,pyav,pyav-start]

Readers: decord (DecordReader.get_batch), pyav (PyAVReader, seeks to the keyframe before the
window), pyav-start (PyAVReader decoding from frame 0, the pre-issue-13 path for early windows).
Windows are drawn like PretrainClips draws them (dense_indices, seeded), the same windows for
every reader, readers interleaved per window so a load spike hits all of them alike. Reports CPU
time of this process (time.process_time: what a loader core pays, robust to a shared machine)
and wall time, plus frames PyAV decoded per window. One JSON line per reader on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def open_reader(name: str, path: str):
    from giant.data.decode import DecordReader, PyAVReader

    if name == "decord":
        return DecordReader(path)
    if name == "pyav":
        return PyAVReader(path)
    if name == "pyav-start":
        return PyAVReader(path, seek_after=10 ** 9)
    raise SystemExit(f"unknown reader {name!r}")


def measure_sets(sets: dict, readers: list[str], windows: int = 8, num_frames: int = 16,
                 stride: int = 4, seed: int = 0, rounds: int = 1) -> dict:
    """{(set, reader): {cpu_ms, wall_ms, frames_decoded}} over the same windows. `sets` maps a
    label to a list of paths, the i-th path of every set being the same video (original vs
    prepared copies), so every set/reader decodes exactly the same frames, interleaved."""
    from giant.data.sampling import dense_indices

    rng = np.random.default_rng(seed)
    labels = list(sets)
    keys = [(label, r) for label in labels for r in readers]
    totals = {k: {"cpu": 0.0, "wall": 0.0, "decoded": 0, "n": 0} for k in keys}
    for i in range(len(sets[labels[0]])):
        with open_reader(readers[0], sets[labels[0]][i]) as probe:
            count = probe.num_frames
        for _ in range(windows):
            idx = dense_indices(0, count, num_frames, stride, rng)
            for _ in range(rounds):
                for label, name in keys:
                    t_cpu, t_wall = time.process_time(), time.perf_counter()
                    with open_reader(name, sets[label][i]) as reader:
                        reader.get_frames(idx)
                        decoded = getattr(reader, "frames_decoded", 0)
                    tot = totals[(label, name)]
                    tot["cpu"] += time.process_time() - t_cpu
                    tot["wall"] += time.perf_counter() - t_wall
                    tot["decoded"] += decoded
                    tot["n"] += 1
    return {k: {"cpu_ms": round(1e3 * t["cpu"] / t["n"], 1),
                "wall_ms": round(1e3 * t["wall"] / t["n"], 1),
                "frames_decoded": round(t["decoded"] / t["n"], 1) if t["decoded"] else None,
                "windows": t["n"]} for k, t in totals.items()}


def measure(paths: list[str], readers: list[str], windows: int = 8, num_frames: int = 16,
            stride: int = 4, seed: int = 0) -> dict:
    """{reader: {cpu_ms, wall_ms, frames_decoded}} for one set of files."""
    result = measure_sets({"": paths}, readers, windows, num_frames, stride, seed)
    return {name: row for (_, name), row in result.items()}


def main() -> None:
    from giant.data.manifest import load_entries

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest")
    p.add_argument("--readers", default="decord,pyav,pyav-start")
    p.add_argument("--windows", type=int, default=8, help="windows per video")
    p.add_argument("--videos", type=int, default=0, help="first N videos (0 = all)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    args = p.parse_args()
    paths = [e.path for e in load_entries(args.manifest, weighted=False)]
    paths = paths[: args.videos] if args.videos else paths
    result = measure(paths, args.readers.split(","), args.windows, args.num_frames, args.stride)
    load = os.getloadavg()[0]
    for name, row in result.items():
        print(json.dumps({"manifest": args.manifest, "reader": name, **row,
                          "loadavg_1m": round(load, 2)}))


if __name__ == "__main__":
    main()
