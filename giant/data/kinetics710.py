"""Kinetics-710: class set, head-row maps and manifests built from the Kinetics releases.

K710 = K400 ∪ K600 ∪ K700 with old class names renamed to their newer spelling (the rename
table in datasets_manifest/k710_identical_label_merge.json). A rename is applied only when no
single release lists both names as separate classes: K600 and K700 keep "throwing ball" next
to "throwing ball (not baseball or American football)", so those stay two classes (710 total).

Manifests: train = the three train splits, val = the three validate splits; a YouTube id is
kept once (first seen in K400 → K600 → K700 order) and a val video whose id is in train is
dropped, so validation never overlaps training.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from giant.data.manifest import MANIFEST_ENCODING, VideoEntry, write_manifest
from giant.errors import DataError

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
DEFAULT_TEMPLATE = "{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
DEFAULT_RENAMES = Path(__file__).resolve().parents[2] / "datasets_manifest" / "k710_identical_label_merge.json"


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding=MANIFEST_ENCODING)  # a BOM is not a class name
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {exc.start}); check the path") from None


def read_label_map(path: str | Path) -> list[str]:
    """One class name per line; line i = head row i. Blank lines inside are an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label map {path} does not exist")
    lines = _text(path, "label map").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty class name (one class per line, no blanks)")
    names = [line.strip() for line in lines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: class name(s) listed twice: {dup[:5]}")
    return names


def read_renames(path: str | Path = DEFAULT_RENAMES) -> dict[str, str]:
    """old name → new name (JSON object)."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not text at all
        raise DataError(f"rename table {path}: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(f"rename table {path}: expected a JSON object of old name → new name")
    return table


def effective_renames(label_lists: list[list[str]], renames: dict[str, str]) -> dict[str, str]:
    """Drop renames that would merge two classes one release keeps apart."""
    keep = {}
    for old, new in renames.items():
        if any(old in names and new in names for names in label_lists):
            log.info("not merging %r into %r: a release lists both as classes", old, new)
            continue
        keep[old] = new
    return keep


def build_k710_classes(label_lists: list[list[str]], renames: dict[str, str]) -> list[str]:
    """The K710 class set (sorted; official head order comes from an official label map)."""
    table = effective_renames(label_lists, renames)
    return sorted({table.get(name, name) for names in label_lists for name in names})


def canonical_name(name: str, k710: list[str] | set[str], renames: dict[str, str]) -> str:
    """A release's class name as spelled in K710: the name itself if K710 has it (so
    "throwing ball" stays itself), else its renamed form."""
    return name if name in k710 else renames.get(name, name)


def head_row_map(k710: list[str], target: list[str], renames: dict[str, str]) -> list[int]:
    """Entry i = row of the K710 head holding target class i (to slice a 710 head to K400 …)."""
    row = {name: i for i, name in enumerate(k710)}
    out = []
    for name in target:
        canonical = canonical_name(name, row, renames)
        if canonical not in row:
            raise DataError(f"class {name!r} (as {canonical!r}) is not in the K710 label map; "
                            "is the map or the rename table from another release?")
        out.append(row[canonical])
    return out


@dataclass
class Clip:
    youtube_id: str
    label: str
    time_start: int
    time_end: int
    split: str
    source: str


def read_annotations(path: str | Path, source: str) -> list[Clip]:
    """An official Kinetics CSV (label,youtube_id,time_start,time_end,split[,...])."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    _text(path, "annotation file")  # decoded whole first: a tens-of-MB CSV takes milliseconds
    clips = []
    with open(path, newline="", encoding=MANIFEST_ENCODING) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ANNOTATION_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {missing}; expected the official "
                            f"header {','.join(ANNOTATION_COLUMNS)}")
        col = {c: header.index(c) for c in ANNOTATION_COLUMNS}
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                clips.append(Clip(row[col["youtube_id"]], row[col["label"]].strip(),
                                  int(float(row[col["time_start"]])), int(float(row[col["time_end"]])),
                                  row[col["split"]].strip(), source))
            except (IndexError, ValueError):
                raise DataError(f"{path}:{number}: malformed row {row!r}; expected "
                                f"{','.join(ANNOTATION_COLUMNS)}") from None
    return clips


@dataclass
class K710Split:
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    dropped_duplicates: int = 0
    dropped_val_in_train: int = 0
    unknown_labels: dict = field(default_factory=dict)


def merge_k710(clips: list[Clip], classes: list[str], renames: dict[str, str]) -> K710Split:
    """Train/val clip lists of K710 (see module docstring for the rules)."""
    row = {name: i for i, name in enumerate(classes)}
    out = K710Split()
    seen: dict[str, set] = {"train": set(), "val": set()}
    for split_name in ("train", "val"):
        for clip in clips:
            split = "val" if clip.split in ("val", "validate", "validation") else clip.split
            if split != split_name:
                continue
            if clip.youtube_id in seen[split]:
                out.dropped_duplicates += 1
                continue
            if split == "val" and clip.youtube_id in seen["train"]:
                out.dropped_val_in_train += 1
                continue
            name = canonical_name(clip.label, row, renames)
            if name not in row:
                out.unknown_labels[clip.label] = out.unknown_labels.get(clip.label, 0) + 1
                continue
            seen[split].add(clip.youtube_id)
            getattr(out, split).append((clip, row[name]))
    return out


def clip_path(clip: Clip, template: str = DEFAULT_TEMPLATE) -> str:
    """Relative video path of a clip; the template sees youtube_id, label, time_start, time_end,
    split (as named in the annotation file) and source (k400 / k600 / k700)."""
    return template.format(youtube_id=clip.youtube_id, label=clip.label, split=clip.split,
                           time_start=clip.time_start, time_end=clip.time_end, source=clip.source)


def write_k710_manifests(out_dir: str | Path, split: K710Split, template: str = DEFAULT_TEMPLATE,
                         video_root: str | Path | None = None,
                         require_exists: bool = False) -> dict:
    """Write train.csv / val.csv (path,label,source). With require_exists, clips whose file is
    missing under video_root are left out and counted."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name in ("train", "val"):
        entries, missing = [], 0
        for clip, label in getattr(split, name):
            rel = clip_path(clip, template)
            if require_exists and not (Path(video_root or out_dir) / rel).exists():
                missing += 1
                continue
            path = str(Path(video_root) / rel) if video_root else rel
            entries.append(VideoEntry(path, label, clip.source))
        write_manifest(out_dir / f"{name}.csv", entries)
        stats[name] = len(entries)
        stats[f"{name}_missing_files"] = missing
    stats.update(dropped_duplicates=split.dropped_duplicates,
                 dropped_val_in_train=split.dropped_val_in_train,
                 unknown_labels=sum(split.unknown_labels.values()))
    return stats
