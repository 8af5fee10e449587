"""Markdown tables from one or more loader_matrix.sh results.jsonl files (repeated runs):
best and range of each number over the repeats, with the load averages seen.

    python scripts/bench/loader_table.py /tmp/bp/matrix*/results.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

SPEC_CLIPS = {40: 273, 50: 341, 60: 409}  # docs/reference.md §6: clips/s per H100 (ViT-g) at 40/50/60% MFU


def fmt(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    best = max(values)
    return f"{best:.1f} ({min(values):.1f}–{best:.1f})" if len(values) > 1 else f"{best:.1f}"


def main(paths: list[str]) -> None:
    runs = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for line in open(path):
            row = json.loads(line)
            pipeline = row["pipeline"].replace("official VideoMAE V2", "official")
            profile = "ms_per_video" in row or (pipeline == "official" and row["workers"] == 0)
            key = (row["set"], pipeline, "profile" if profile else str(row["workers"]))
            for name in ("videos_per_s", "videos_per_cpu_s", "loadavg_1m"):
                runs[key][name].append(row.get(name))
    print("| files | pipeline | workers | videos/s (wall) | videos per CPU-second | load avg |")
    print("|---|---|---|---|---|---|")
    for (files, pipeline, workers), v in sorted(runs.items()):
        load = [x for x in v["loadavg_1m"] if x is not None]
        print(f"| {files} | {pipeline} | {workers} | {fmt(v['videos_per_s'])} | "
              f"{fmt(v['videos_per_cpu_s'])} | {min(load):.1f}–{max(load):.1f} |")
    print()
    print("| files | pipeline | basis | videos per CPU-s (best) "
          "| cores/H100 at 40% / 50% / 60% MFU |")
    print("|---|---|---|---|---|")
    for (files, pipeline, workers), v in sorted(runs.items()):
        rates = [x for x in v["videos_per_cpu_s"] if x is not None]
        if not rates or workers == "1":
            continue
        best = max(rates)
        cores = " / ".join(f"{clips / 4 / best:.1f}" for clips in SPEC_CLIPS.values())
        basis = "single item, in-process" if workers == "profile" else f"loader, {workers} workers"
        print(f"| {files} | {pipeline} | {basis} | {best:.1f} | {cores} |")


if __name__ == "__main__":
    main(sys.argv[1:])
