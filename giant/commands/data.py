"""`giant data synth | validate | k710 | prepare | bench`: datasets and manifests.

CLI output goes to stdout/stderr directly; library modules only log.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from giant.commands._args import ArgumentParser, nonnegative_int, positive_int
from giant.console import fail, out
from giant.errors import GiantError


def _synth(args) -> int:
    from giant.data.synthetic import write_synthetic_set

    s = write_synthetic_set(args.out_dir, num_videos=args.num_videos, num_frames=args.frames,
                            height=args.height, width=args.width, num_classes=args.classes,
                            seed=args.seed, val_fraction=args.val_fraction, fps=args.fps,
                            gop=args.gop, codec=args.codec, style=args.style, crf=args.crf,
                            preset=args.preset, label_noise=args.label_noise)
    out(f"wrote {len(s.videos)} videos ({args.style}, {s.codec}, {args.width}x{args.height}, "
        f"{args.frames} "
          f"frames, {len(s.class_names)} classes) to {s.root}")
    out(f"train manifest: {s.train_manifest}\nval manifest:   {s.val_manifest}")
    if s.mislabelled:
        out(f"{len(s.mislabelled)} train labels are wrong on purpose (--label-noise); "
            f"true labels: {s.clean_train_manifest}")
    return 0


def _validate(args) -> int:
    from giant.data.manifest import load_entries
    from giant.data.validate import validate_entries

    # every listed video, without a sources YAML's weights (a weighted epoch would check a
    # seeded subset, or the same file several times)
    entries = load_entries(args.manifest, args.root, args.list_format, weighted=False)
    clips, bad = validate_entries(entries, args.backend, args.num_frames, args.sampling_rate,
                                  args.min_frames, args.workers)
    for entry, reason in bad:
        out(f"{entry.path}: {reason}  [{entry.where}]")
    checked = f"{clips} distinct clips checked"
    if bad:
        out(f"validate: {len(bad)} of {len(entries)} entries are bad ({checked})", err=True)
        return 1
    out(f"validate: all {len(entries)} entries OK ({checked}; {args.manifest})", err=True)
    return 0


def _k710(args) -> int:
    from giant.data import kinetics710 as k

    # defaults the parser leaves None: kinetics710 imports torch (through giant.data)
    args.renames = str(k.DEFAULT_RENAMES) if args.renames is None else args.renames
    args.template = k.DEFAULT_TEMPLATE if getattr(args, "template", None) is None else args.template

    if args.action != "manifests" and Path(args.out).is_dir():
        raise GiantError(f"--out {args.out} is a folder; give the file to write")
    renames = k.read_renames(args.renames)
    if args.action == "labels":
        lists = [k.read_label_map(p) for p in (args.k400, args.k600, args.k700)]
        classes = k.build_k710_classes(lists, renames)
        Path(args.out).write_text("\n".join(classes) + "\n")
        out(f"wrote {len(classes)} K710 classes to {args.out}")
    elif args.action == "rowmap":
        rows = k.head_row_map(k.read_label_map(args.k710), k.read_label_map(args.target), renames)
        Path(args.out).write_text(json.dumps(rows) + "\n")
        out(f"wrote {len(rows)}-entry row map to {args.out}")
    else:
        classes = k.read_label_map(args.labels)
        clips = [c for src in ("k400", "k600", "k700") for path in getattr(args, src) or []
                 for c in k.read_annotations(path, src)]
        split = k.merge_k710(clips, classes, renames)
        stats = k.write_k710_manifests(args.out_dir, split, args.template, args.video_root,
                                       args.require_exists)
        out(json.dumps(stats, indent=1))
        for label, count in sorted(split.unknown_labels.items())[:20]:
            out(f"unknown label {label!r} ({count} clips) not in {args.labels}", err=True)
    return 0


def _prepare(args) -> int:
    from giant.data.prepare import PrepareSettings, prepare

    settings = PrepareSettings(short_side=args.short_side, keyframe_seconds=args.keyframe_seconds,
                               crf=args.crf, preset=args.preset, tune=args.tune,
                               codec=args.codec)
    report = prepare(args.manifest, args.out_dir, settings, workers=args.workers,
                     root=args.root, list_format=args.list_format)
    for failure in report["failures"]:
        out(f"{failure['src']}: {failure['reason']}  [{failure['where']}]")
    ratio = report["bytes_after"] / report["bytes_before"] if report["bytes_before"] else 0
    out(f"prepare: {report['prepared']} prepared, {report['skipped']} already done, "
        f"{report['failed']} failed of {report['files']} files ({report['encoder']}); "
        f"{report['bytes_before'] / 1e6:.1f} MB → {report['bytes_after'] / 1e6:.1f} MB "
        f"(×{ratio:.2f}); manifest {report['manifest']}", err=True)
    if report["failed"]:
        out(f"prepare: {report['failed']} files failed ({report['entries_left_out']} manifest "
            "entries left out); fix or remove them and re-run to retry", err=True)
        return 1
    return 0


def _bench(args) -> int:
    from giant.data.bench import profile_stages, run_bench

    if args.profile:
        result = profile_stages(args.manifest, root=args.root, backend=args.backend,
                                num_sample=args.num_sample, num_frames=args.num_frames,
                                sampling_rate=args.sampling_rate, size=args.size,
                                num_videos=args.videos, masks=not args.no_masks,
                                patch=args.patch, tubelet=args.tubelet)
        out(json.dumps(result, indent=1))
        rate = result["videos_per_cpu_s"] or result["videos_per_s_per_core"]
        out(f"{result['backend']}: {rate:.1f} videos/s per core (single process, CPU time) → "
            f"{_cores(rate, args.num_sample)}")
        return 0
    result = run_bench(args.manifest, root=args.root, backend=args.backend, workers=args.workers,
                       batch_size=args.batch_size, num_sample=args.num_sample,
                       num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                       size=args.size, num_videos=args.videos, masks=not args.no_masks,
                       patch=args.patch, tubelet=args.tubelet)
    out(json.dumps(result, indent=1))
    rate = result["videos_per_cpu_s"]
    out(f"{result['backend']}, {args.workers} worker(s): {result['videos_per_s']:.1f} videos/s, "
        f"{result['clips_per_s']:.1f} clips/s; {rate:.1f} videos per CPU-second (workers + "
        f"main) → {_cores(rate, args.num_sample)}" if rate else "no videos read")
    return 0


# docs/reference.md §6: clips/s one H100 trains ViT-g at 40/50/60% MFU
H100_CLIPS_PER_S = {40: 273, 50: 341, 60: 409}


def _cores(videos_per_core_s: float, num_sample: int) -> str:
    """Loader cores one H100 needs at 40/50/60% MFU (one video gives `num_sample` clips)."""
    need = [f"{clips / num_sample / videos_per_core_s:.1f}" for clips in H100_CLIPS_PER_S.values()]
    return f"{'/'.join(need)} cores per H100 at 40/50/60% MFU"


def _add_prepare(sub) -> None:
    r = sub.add_parser("prepare", help="re-encode every video once (short side, keyframe every "
                       "second, H.264, no audio) for fast window decoding; writes a new manifest",
                       description="Re-encode every video of MANIFEST (CSV, official list or "
                       "sources YAML) into OUT_DIR/videos, resumably: finished files are skipped, "
                       "failed ones retried. Writes OUT_DIR/<manifest name> with the same labels, "
                       "sources, frame ranges and weights, OUT_DIR/prepare_report.json and "
                       "OUT_DIR/prepare_files.csv. Exit 1 if any file failed (listed).")
    r.add_argument("manifest")
    r.add_argument("out_dir")
    r.add_argument("--workers", type=nonnegative_int, default=os.cpu_count() or 1,
                   help="encoder processes (0 = in this process)")
    r.add_argument("--short-side", type=int, default=320, help="target short side; never upscaled")
    r.add_argument("--keyframe-seconds", type=float, default=1.0,
                   help="keyframe interval (1 s: a random 16x4 window decodes <= 1 extra GOP)")
    r.add_argument("--crf", type=int, default=18, help="x264 quality (lower = larger, closer)")
    r.add_argument("--preset", default="fast", help="x264 preset (encode speed vs size)")
    r.add_argument("--tune", default="fastdecode",
                   help="x264 tune ('' for none; fastdecode: no CABAC/deblock, decodes faster)")
    r.add_argument("--codec", default="libx264",
                   help="encoder; falls back (with a warning) if this PyAV build lacks it")
    r.add_argument("--root", default="", help="prefix for relative paths (default: manifest dir)")
    r.add_argument("--list-format", default="auto", choices=["auto", "pretrain", "labeled"])
    r.set_defaults(func=_prepare)


def _add_k710(sub) -> None:
    k = sub.add_parser("k710", help="Kinetics-710 label map, head row maps, manifests")
    ksub = k.add_subparsers(dest="action", required=True)
    kl = ksub.add_parser("labels", help="build the 710-class set from the K400/600/700 lists")
    for name in ("k400", "k600", "k700"):
        kl.add_argument(f"--{name}", required=True, help=f"{name.upper()} label list")
    kl.add_argument("--out", required=True)
    kr = ksub.add_parser("rowmap", help="row of a K710 head for each class of another label map")
    kr.add_argument("--k710", required=True, help="the K710 label map the head was trained with")
    kr.add_argument("--target", required=True, help="e.g. the K400 label map")
    kr.add_argument("--out", required=True)
    km = ksub.add_parser("manifests", help="train.csv / val.csv from official annotation CSVs")
    for name in ("k400", "k600", "k700"):
        km.add_argument(f"--{name}", nargs="+", help=f"{name.upper()} annotation CSV(s)")
    km.add_argument("--labels", required=True, help="K710 label map (row = label index)")
    km.add_argument("--out-dir", required=True)
    km.add_argument("--template", default=None)  # kinetics710.DEFAULT_TEMPLATE, filled in by _k710
    km.add_argument("--video-root", default=None)
    km.add_argument("--require-exists", action="store_true", help="leave out missing files")
    for kp in (kl, kr, km):
        kp.add_argument("--renames", default=None)  # kinetics710.DEFAULT_RENAMES, filled in by _k710
    k.set_defaults(func=_k710)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="giant data", description="Video data tools.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write small synthetic .mp4 videos + train/val manifests")
    s.add_argument("out_dir")
    s.add_argument("--num-videos", type=int, default=24)
    s.add_argument("--frames", type=int, default=32)
    s.add_argument("--height", type=int, default=64)
    s.add_argument("--width", type=int, default=64)
    s.add_argument("--classes", type=int, default=4, help="motion directions (1-8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.add_argument("--fps", type=int, default=25)
    s.add_argument("--gop", type=int, default=None, help="keyframe interval (encoder default)")
    s.add_argument("--codec", default=None, help="libx264 | mpeg4 (default: libx264 if built)")
    s.add_argument("--style", default="shapes", choices=["shapes", "camera"],
                   help="shapes: flat, cheap (tests, demo); camera: textured, panning, noisy "
                        "footage that decodes like real clips (loader benchmarks)")
    s.add_argument("--crf", type=int, default=18, help="libx264 quality (23 = ffmpeg default)")
    s.add_argument("--preset", default="veryfast", help="libx264 preset (medium = ffmpeg default)")
    s.add_argument("--label-noise", type=float, default=0.0, metavar="FRACTION",
                   help="give this fraction of the train videos a wrong label, as annotated "
                        "datasets have (val stays true; train_clean.csv keeps the truth)")
    s.set_defaults(func=_synth)

    v = sub.add_parser("validate", help="check every manifest entry (a sources YAML: every "
                       "listed video once, weights ignored); list bad lines, exit 1")
    v.add_argument("manifest")
    v.add_argument("--root", default="", help="prefix for relative paths (default: manifest dir)")
    v.add_argument("--backend", default="decord", choices=["decord", "pyav", "frames"])
    v.add_argument("--list-format", default="auto", choices=["auto", "pretrain", "labeled"])
    v.add_argument("--num-frames", type=positive_int, default=16)
    v.add_argument("--sampling-rate", type=positive_int, default=4)
    v.add_argument("--min-frames", type=positive_int, default=1,
                   help="reject shorter videos (default 1: a video shorter than a clip is padded "
                   "with its last frame, as the official loaders do)")
    v.add_argument("--workers", type=nonnegative_int, default=os.cpu_count() or 1,
                   help="decoding processes (0 or 1: in this process)")
    v.set_defaults(func=_validate)

    _add_k710(sub)

    _add_prepare(sub)

    b = sub.add_parser("bench", help="pre-training loader throughput (videos/s, clips/s)")
    b.add_argument("manifest")
    b.add_argument("--root", default="")
    b.add_argument("--backend", default="decord", choices=["decord", "pyav", "frames"])
    b.add_argument("--workers", type=nonnegative_int, default=2, help="loader workers (0: in this process)")
    b.add_argument("--batch-size", type=positive_int, default=4, help="videos per batch")
    b.add_argument("--num-sample", type=positive_int, default=4, help="clips per video")
    b.add_argument("--num-frames", type=positive_int, default=16)
    b.add_argument("--sampling-rate", type=positive_int, default=4)
    b.add_argument("--size", type=positive_int, default=224)
    b.add_argument("--videos", type=positive_int, default=200, help="videos to time (after warm-up)")
    b.add_argument("--patch", type=positive_int, default=16,
                   help="model patch size for the mask token grid (ViT-g: 14)")
    b.add_argument("--tubelet", type=positive_int, default=2, help="model tubelet size (frames per token)")
    b.add_argument("--no-masks", action="store_true", help="skip mask generation")
    b.add_argument("--profile", action="store_true",
                   help="per-stage single-core cost in this process instead of the loader")
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except GiantError as exc:
        return fail(f"giant data {args.command}", exc)
