"""`giant data prepare`: re-encode a dataset once so that random 16-frame windows decode fast.

Downloaded videos carry a keyframe every ~250 frames (x264's default), so a random window of a
10 s clip decodes ~120 frames it never uses, and 1080p sources decode 25× the pixels a 224 crop
needs. Preparing writes every video once as H.264 with the short side at `short_side` (never
upscaled), a keyframe every `keyframe_seconds`, no audio, every frame kept (same count, order and
rate, so frame ranges and labels stay valid; a variable-rate source comes out evenly timed),
plus a manifest pointing at the new files.

Resumable: each file is written to a temporary name and renamed when complete, so a finished
file is never half-written; a re-run skips finished files and retries failed ones. A file that
cannot be read is listed with its reason in the report and on the console, never dropped silently.
"""
from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import yaml

from giant.data.manifest import MANIFEST_ENCODING, load_entries, read_manifest, write_manifest
from giant.errors import DataError

log = logging.getLogger(__name__)

SETTINGS_FILE = "prepare.json"
REPORT_FILE = "prepare_report.json"
FILES_TABLE = "prepare_files.csv"
KEEP_PIX_FMTS = ("yuv420p", "yuvj420p")  # anything else is converted to yuv420p


@dataclass(frozen=True)
class PrepareSettings:
    """How every video is re-encoded (stored in OUT_DIR/prepare.json: a re-run must match)."""

    short_side: int = 320
    keyframe_seconds: float = 1.0
    crf: int = 18
    preset: str = "fast"
    tune: str = "fastdecode"
    codec: str = "libx264"


@dataclass
class Job:
    src: str
    dst: str
    where: str


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side at `short_side` (never upscaled), both even (4:2:0 needs it)."""
    short = min(width, height)
    scale = min(1.0, short_side / short)
    w, h = width * scale, height * scale
    return max(2, int(round(w / 2)) * 2 if scale < 1 else width - width % 2), \
        max(2, int(round(h / 2)) * 2 if scale < 1 else height - height % 2)


def pick_encoder(wanted: str) -> str:
    """`wanted` if this PyAV build can encode it, else the first H.264 encoder it has, else
    mpeg4 (always built in); the caller warns when it differs."""
    import av

    for name in (wanted, "libx264", "libopenh264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not built into this FFmpeg
            continue
    raise DataError("this PyAV/FFmpeg build has no video encoder (not even mpeg4); "
                    "install PyAV from PyPI (pip install av), whose wheels include libx264")


def _encoder_options(settings: PrepareSettings, codec: str, gop: int) -> dict:
    if codec == "libx264":
        options = {"crf": str(settings.crf), "preset": settings.preset,
                   # closed GOPs (IDR keyframes): a seek lands on a frame that decodes alone
                   "x264-params": f"keyint={gop}:open-gop=0"}
        if settings.tune:
            options["tune"] = settings.tune
        return options
    # mpeg4 (the last resort) has no CRF: bound its quantiser instead (~34 dB on tiny clips)
    return {"qmin": "2", "qmax": "3"} if codec == "mpeg4" else {}


def _copy_color(src_ctx, dst_ctx) -> None:
    """Keep the colour description, so decoders turn the pixels into the same RGB."""
    for name in ("colorspace", "color_range", "color_primaries", "color_trc"):
        try:
            setattr(dst_ctx, name, getattr(src_ctx, name))
        except (AttributeError, TypeError, ValueError):
            pass


def _encode(src: str, tmp: str, settings: PrepareSettings, codec: str) -> dict:
    """Decode `src` frame by frame, resize, encode to `tmp` (mp4). Returns frame counts/sizes."""
    import av

    with av.open(src) as inp:
        if not inp.streams.video:
            raise DataError("no video stream")
        vin = inp.streams.video[0]
        vin.codec_context.thread_count = 1  # parallelism comes from the process pool
        if not vin.codec_context.width or not vin.codec_context.height:
            raise DataError("no frame size in the header (unsupported codec?)")
        promised = int(vin.frames or 0)
        rate = vin.average_rate or vin.guessed_rate or Fraction(30)
        width, height = output_size(vin.codec_context.width, vin.codec_context.height,
                                    settings.short_side)
        pix_fmt = vin.codec_context.pix_fmt if vin.codec_context.pix_fmt in KEEP_PIX_FMTS \
            else "yuv420p"
        gop = max(1, int(round(float(rate) * settings.keyframe_seconds)))
        written = 0
        with av.open(tmp, "w", format="mp4", options={"movflags": "faststart"}) as out:
            vout = out.add_stream(codec, rate=rate)
            vout.width, vout.height, vout.pix_fmt = width, height, pix_fmt
            vout.codec_context.gop_size = gop
            vout.codec_context.thread_count = 1
            _copy_color(vin.codec_context, vout.codec_context)
            vout.options = _encoder_options(settings, codec, gop)
            try:
                for frame in inp.decode(vin):
                    if (frame.width, frame.height, frame.format.name) != (width, height, pix_fmt):
                        frame = frame.reformat(width, height, pix_fmt, interpolation="AREA")
                    frame.pts, frame.time_base = written, 1 / Fraction(rate)
                    written += 1
                    out.mux(vout.encode(frame))
            except av.error.FFmpegError as exc:
                raise DataError(f"decode failed after {written} frames ({exc})") from None
            out.mux(vout.encode(None))
    if written == 0:
        raise DataError("no decodable frames")
    if promised and written < 0.95 * promised:
        raise DataError(f"truncated: {written} of the {promised} frames in its header decode")
    return {"frames": written, "promised": promised, "width": width, "height": height,
            "gop": gop, "fps": float(rate)}


def prepare_video(job: Job, settings: PrepareSettings, codec: str) -> dict:
    """Prepare one file (runs in a pool worker). Never raises: failures come back as a reason."""
    dst = Path(job.dst)
    row = {"src": job.src, "dst": job.dst, "where": job.where}
    start = time.perf_counter()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        if not os.path.isfile(job.src):
            raise DataError("file not found")
        if os.path.getsize(job.src) == 0:
            raise DataError("empty file (0 bytes)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        for stale in dst.parent.glob(f".{glob.escape(dst.name)}.*.part"):  # from a killed run
            stale.unlink(missing_ok=True)
        row.update(_encode(job.src, str(tmp), settings, codec))
        os.replace(tmp, dst)  # atomic: a file under its final name is always complete
        row.update(status="prepared", bytes_before=os.path.getsize(job.src),
                   bytes_after=os.path.getsize(dst))
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        import av

        tmp.unlink(missing_ok=True)
        reason = (str(exc).strip().splitlines() or [""])[-1][:200]
        if isinstance(exc, av.error.FFmpegError):
            reason = f"cannot read ({reason})"
        elif not isinstance(exc, DataError):  # not the file's fault: say what broke
            reason = f"{type(exc).__name__}: {reason}"
        row.update(status="failed", reason=reason)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _run_job(args) -> dict:
    return prepare_video(*args)


@dataclass
class _Source:
    """One manifest to rewrite: the whole input, or one entry of a sources YAML."""

    entries: list
    base: Path  # what relative paths resolved against: the output keeps that layout
    spec: dict | None = None  # the sources-YAML entry (None for a plain manifest)
    name: str = ""
    manifest: Path | None = None  # the list it was read from (never written over)


def _read_input(src: Path, root: str, list_format: str) -> list[_Source]:
    if src.suffix.lower() not in (".yaml", ".yml"):
        entries = read_manifest(src, root, list_format)
        return [_Source(entries, Path(root).expanduser() if root else src.parent, manifest=src)]
    load_entries(src, root, weighted=False)  # validates the whole file, with its messages
    doc = yaml.safe_load(src.read_text(encoding=MANIFEST_ENCODING))
    sources, names = [], set()
    for spec in doc["sources"]:
        name = str(spec.get("name", Path(spec["manifest"]).stem))
        manifest = Path(spec["manifest"]).expanduser()
        manifest = manifest if manifest.is_absolute() else src.parent / manifest
        src_root = spec.get("root") or doc.get("root") or root
        entries = read_manifest(manifest, src_root, spec.get("list_format", "pretrain"))
        base = Path(src_root).expanduser() if src_root else manifest.parent
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "source"
        while safe in names:  # two sources with one name still get two folders
            safe += "_"
        names.add(safe)
        # the name is written out even where the input left it implicit (the manifest's stem):
        # the new manifest is <folder name>.csv, whose stem may differ
        sources.append(_Source(entries, base, {"name": name, **spec}, safe, manifest))
    return sources


def _destination(path: Path, base: Path, folder: Path) -> Path:
    """Same layout as the input under `folder`; absolute paths outside `base` under _abs/.
    Normalised, not resolved: a '..' that climbs out shows (and is refused by _refusal)."""
    rel = path.relative_to(base) if path.is_relative_to(base) else Path("_abs", *path.parts[1:])
    return Path(os.path.normpath(folder / rel.with_suffix(".mp4")))


def _refusal(src: str, dst: Path, videos: Path) -> str | None:
    """Why writing `dst` is refused (symlinks followed): it falls outside OUT_DIR/videos, or it is
    the source itself (a re-encode would replace the original in place). None if it is fine."""
    real, inside = Path(os.path.realpath(dst)), Path(os.path.realpath(videos))
    if real == Path(os.path.realpath(src)):
        return (f"its output {dst} is the source file itself; nothing written (choose an OUT_DIR "
                "that does not hold the source videos)")
    if not real.is_relative_to(inside) or real == inside:
        return (f"its output {dst} would fall outside {videos} (the path climbs out with '..' or "
                "through a symlink); nothing written (list the video by its absolute path, or pass "
                "--root a folder above it)")
    return None


def _plan(sources: list[_Source], out_dir: Path) -> tuple[dict, list[Job], list[dict]]:
    """src path → output path for every distinct video file; frame folders are kept as they
    are (they already decode without a GOP). Same layout as the input, under OUT_DIR/videos.
    A file whose output would leave OUT_DIR/videos or be the source is a failure row instead."""
    mapping: dict = {}
    taken: set = set()
    jobs, refused, seen = [], [], set()
    videos = out_dir / "videos"
    for source in sources:
        folder = videos / source.name
        for entry in source.entries:
            if entry.path in seen or Path(entry.path).is_dir():
                continue
            seen.add(entry.path)
            path = Path(entry.path)
            dst = _destination(path, source.base, folder)
            if str(dst) in taken:  # a.mkv next to a.mp4
                dst = dst.with_name(f"{path.name}.mp4")
            if str(dst) in taken:
                dst = dst.with_name(f"{path.name}.{len(jobs)}.mp4")
            reason = _refusal(entry.path, dst, videos)
            if reason:
                refused.append({"src": entry.path, "dst": str(dst), "where": entry.where,
                                "status": "failed", "reason": reason})
                continue
            taken.add(str(dst))
            mapping[entry.path] = str(dst)
            jobs.append(Job(entry.path, str(dst), entry.where))
    return mapping, jobs, refused


def _check_inputs_kept(out_dir: Path, src: Path, sources: list[_Source]) -> None:
    """The manifests prepare writes must not replace the lists it reads."""
    written = [out_dir / (f"{src.stem}.csv" if sources[0].spec is None else src.name),
               *(out_dir / f"{s.name}.csv" for s in sources if s.spec is not None)]
    read = {os.path.realpath(p) for p in [src, *(s.manifest for s in sources if s.manifest)]}
    for path in written:
        if os.path.realpath(path) in read:
            raise DataError(f"{path} would be written over the input manifest {path.name}; choose "
                            "an OUT_DIR that does not hold the input lists")


def _check_settings(out_dir: Path, settings: PrepareSettings) -> None:
    """Finished files are only reusable when they were made with the same settings."""
    path = out_dir / SETTINGS_FILE
    wanted = asdict(settings)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != wanted:
            diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            raise DataError(f"{out_dir} was prepared with other settings ({diff}: was, now); "
                            "re-run with the same options or choose a new OUT_DIR")
    else:
        path.write_text(json.dumps(wanted, indent=1) + "\n")


def _run_pool(jobs: list[Job], settings: PrepareSettings, codec: str, workers: int):
    """Yield one result row per job as they finish; at most 4 jobs per worker in flight (a
    1M-video list is not turned into 1M futures). A crashed worker fails its in-flight files
    (retried by the next run) and the pool is rebuilt."""
    if workers <= 0:
        for job in jobs:
            yield prepare_video(job, settings, codec)
        return
    todo = iter(jobs)
    pending: dict = {}
    pool = ProcessPoolExecutor(workers)
    try:
        while True:
            while len(pending) < 4 * workers and (job := next(todo, None)) is not None:
                pending[pool.submit(_run_job, (job, settings, codec))] = job
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            try:
                rows = [future.result() for future in done]
            except BrokenProcessPool:
                rows = [{"src": j.src, "dst": j.dst, "where": j.where, "status": "failed",
                         "reason": "a worker process died while this file was being prepared "
                                   "(decoder crash or out of memory); re-run to retry"}
                        for j in pending.values()]
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(workers)
            for future in done:
                pending.pop(future, None)
            yield from rows
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


FILE_COLUMNS = ("status", "src", "dst", "frames", "width", "height", "gop", "bytes_before",
                "bytes_after", "seconds", "reason", "where")


def _rows(jobs: list[Job], settings: PrepareSettings, codec: str, workers: int):
    """Finished files first (skipped, never re-encoded), then the prepared/failed ones."""
    todo = []
    for job in jobs:
        if os.path.isfile(job.dst):
            before = os.path.getsize(job.src) if os.path.isfile(job.src) else None
            yield {"src": job.src, "dst": job.dst, "where": job.where, "status": "skipped",
                   "bytes_before": before, "bytes_after": os.path.getsize(job.dst)}
        else:
            todo.append(job)
    log.info("prepare: %d of %d files already done, %d to encode", len(jobs) - len(todo),
             len(jobs), len(todo))
    yield from _run_pool(todo, settings, codec, workers)


def _write_outputs(src: Path, out_dir: Path, sources: list[_Source], mapping: dict,
                   failed: set) -> Path:
    """The new manifest(s): same labels, sources, frame ranges (and YAML strides/weights),
    paths to the prepared files; entries whose file failed are left out (and reported)."""
    def rewritten(source: _Source) -> list:
        return [replace(e, path=mapping.get(e.path, e.path)) for e in source.entries
                if e.path not in failed]

    if sources[0].spec is None:
        manifest = out_dir / f"{src.stem}.csv"
        write_manifest(manifest, rewritten(sources[0]), base=out_dir)
        return manifest
    specs = []
    for source in sources:
        write_manifest(out_dir / f"{source.name}.csv", rewritten(source), base=out_dir)
        spec = {k: v for k, v in source.spec.items() if k not in ("root", "list_format")}
        specs.append({**spec, "manifest": f"{source.name}.csv"})
    manifest = out_dir / src.name
    manifest.write_text(yaml.safe_dump({"sources": specs}, sort_keys=False))
    return manifest


def prepare(src_manifest: str | Path, out_dir: str | Path,
            settings: PrepareSettings = PrepareSettings(), workers: int = 1, root: str = "",
            list_format: str = "auto") -> dict:
    """Prepare every video of a manifest or sources YAML into `out_dir`; returns the summary
    also written to OUT_DIR/prepare_report.json (per file: OUT_DIR/prepare_files.csv)."""
    import csv

    src, out_dir = Path(src_manifest), Path(out_dir)
    if settings.short_side < 2 or settings.keyframe_seconds <= 0 or not 0 <= settings.crf <= 51:
        raise DataError(f"--short-side {settings.short_side} must be >= 2, --keyframe-seconds "
                        f"{settings.keyframe_seconds} > 0 and --crf {settings.crf} in 0..51")
    sources = _read_input(src, root, list_format)
    _check_inputs_kept(out_dir, src, sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    codec = pick_encoder(settings.codec)
    if codec != settings.codec:
        log.warning("encoder %s is not in this PyAV build; using %s (files get larger and decode "
                    "slower; pip install av for a build with libx264)", settings.codec, codec)
    mapping, jobs, refused = _plan(sources, out_dir)
    counts = dict.fromkeys(("prepared", "skipped", "failed"), 0)
    size = {"bytes_before": 0, "bytes_after": 0}
    failures, failed = [], set()
    start, last_log = time.perf_counter(), time.perf_counter()
    table = out_dir / f".{FILES_TABLE}.part"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, FILE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for n, row in enumerate(itertools.chain(refused, _rows(jobs, settings, codec, workers)), 1):
            writer.writerow(row)
            counts[row["status"]] += 1
            if row["status"] == "failed":
                failed.add(row["src"])
                failures.append({k: row[k] for k in ("src", "reason", "where")})
            else:
                for key in size:
                    size[key] += row.get(key) or 0
            if time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log.info("prepare: %d/%d files (%d failed)", n, len(jobs) + len(refused),
                         counts["failed"])
    os.replace(table, out_dir / FILES_TABLE)
    manifest = _write_outputs(src, out_dir, sources, mapping, failed)
    entries = sum(len(s.entries) for s in sources)
    report = {"source": str(src), "manifest": str(manifest), "settings": asdict(settings),
              "encoder": codec, "entries": entries, "files": len(jobs) + len(refused),
              "frame_folders_kept": sum(1 for s in sources for e in s.entries
                                        if e.path not in mapping and e.path not in failed),
              **counts, **size,
              "entries_left_out": sum(1 for s in sources for e in s.entries if e.path in failed),
              "seconds": round(time.perf_counter() - start, 2), "failures": failures}
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report
