"""Manifests: which videos a run sees, with labels, sources, frame ranges and per-source stride.

Three inputs, all ending as a list of `VideoEntry` (format in datasets_manifest/README.md):
  * giant CSV: header `path[,label][,source][,start_frame][,end_frame]`;
  * official VideoMAE lists: `path 0 -1`, `path label`, `frame_dir total_frames label`;
  * a sources YAML mixing several manifests with a stride τ and a sampling weight each.
A malformed line stops the run with the file and line number: a silently skipped line on a
1.35M-clip list is a bug nobody finds.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from giant.errors import DataError

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "label", "source", "start_frame", "end_frame")
SOURCE_KEYS = ("name", "manifest", "root", "sampling_rate", "weight", "list_format")
LIST_FORMATS = ("auto", "pretrain", "labeled")
# utf-8-sig drops the byte-order mark Excel writes; read as plain text it would turn the
# header cell "path" into "\ufeffpath" and the CSV into an official list
MANIFEST_ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class VideoEntry:
    """One video (file or frame folder). Frame range is [start, end); end None = to the end."""

    path: str
    label: Optional[int] = None
    source: str = ""
    start: int = 0
    end: Optional[int] = None
    sampling_rate: Optional[int] = None  # τ from a sources YAML; None = the dataset's default
    where: str = ""  # "manifest:line", for error messages
    # start/end are numbers in the frame files' names, not listing positions: official
    # pre-training lists read frame i as `img_{:05}.jpg`.format(i + start_idx)
    numbered: bool = False


def _resolve(path: str, base: Path) -> str:
    """str(base / path) as pathlib spells it; plain paths (most of a 660k-row list) skip pathlib,
    which was most of the parse time."""
    if not path or path.startswith("~") or "//" in path or path.endswith("/") or "/." in f"/{path}":
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else base / p)
    if path.startswith("/"):
        return path
    b = str(base)
    return path if b == "." else f"/{path}" if b == "/" else f"{b}/{path}"


def _int_field(value: str, name: str, where: str, minimum: int) -> Optional[int]:
    value = value.strip()
    if value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise DataError(f"{where}: {name} {value!r} is not an integer; "
                        f"write a whole number or leave the field empty") from None
    if number < minimum:
        raise DataError(f"{where}: {name} {number} must be >= {minimum}")
    return number


def _is_giant_csv(path: Path) -> bool:
    """A giant CSV starts (after comments/blank lines) with a header whose first cell is path."""
    with open(path, newline="", encoding=MANIFEST_ENCODING) as f:
        for line in f:
            text = line.strip()
            if text and not text.startswith("#"):
                return text.split(",")[0].strip().lower() == "path"
    return False


def _data_lines(path: Path):
    """(line number, text) of non-blank, non-comment lines."""
    with open(path, newline="", encoding=MANIFEST_ENCODING) as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield number, line.rstrip("\r\n")


def _read_giant_csv(path: Path, base: Path) -> list[VideoEntry]:
    lines = list(_data_lines(path))
    header_line, header_text = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown or len(set(header)) != len(header):
        raise DataError(f"{path}:{header_line}: bad header {header}; allowed columns are "
                        f"{list(CSV_COLUMNS)} (path required, each at most once)")
    entries = []
    for number, text in lines[1:]:
        where = f"{path}:{number}"
        cells = next(csv.reader([text]))
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} fields but the header has {len(header)} "
                            f"({','.join(header)}); quote paths that contain commas")
        row = dict(zip(header, cells))
        if not row["path"].strip():
            raise DataError(f"{where}: empty path")
        start = _int_field(row.get("start_frame", ""), "start_frame", where, 0) or 0
        end = _int_field(row.get("end_frame", ""), "end_frame", where, -1)
        end = None if end == -1 else end
        if end is not None and end <= start:
            raise DataError(f"{where}: end_frame {end} must be > start_frame {start} "
                            f"(end is exclusive; -1 or empty = to the end)")
        entries.append(VideoEntry(
            path=_resolve(row["path"].strip(), base),
            label=_int_field(row.get("label", ""), "label", where, 0),
            source=row.get("source", "").strip(), start=start, end=end, where=where))
    return entries


def _trailing_ints(tokens: list[str]) -> list[int]:
    ints: list[int] = []
    for token in reversed(tokens[1:]):
        try:
            ints.insert(0, int(token))
        except ValueError:
            break
    return ints


def _parse_official(text: str, where: str, base: Path, list_format: str) -> VideoEntry:
    tokens = text.split()
    ints = _trailing_ints(tokens)
    if len(ints) > 2:
        raise DataError(f"{where}: {text.strip()!r} has {len(ints)} numbers after the path; "
                        "official lists are `path 0 -1`, `path label` or "
                        "`frame_dir total_frames label`")
    path = _resolve(text.strip().rsplit(None, len(ints))[0] if ints else text.strip(), base)
    if len(ints) == 0:
        return VideoEntry(path=path, where=where)
    if len(ints) == 1:
        if ints[0] < 0:
            raise DataError(f"{where}: label {ints[0]} must be >= 0")
        return VideoEntry(path=path, label=ints[0], where=where)
    first, second = ints
    if second == -1:  # pre-training video file: `path start_idx -1`
        return VideoEntry(path=path, start=max(first, 0), where=where)
    if list_format == "labeled":  # `frame_dir total_frames label`
        if first < 1 or second < 0:
            raise DataError(f"{where}: expected `frame_dir total_frames label` with "
                            f"total_frames >= 1 and label >= 0, got {first} {second}")
        return VideoEntry(path=path, label=second, end=first, where=where)
    if list_format == "pretrain":  # `frame_dir start_idx total_frames`
        if first < 0 or second < 1:
            raise DataError(f"{where}: expected `frame_dir start_idx total_frames` with "
                            f"start_idx >= 0 and total_frames >= 1, got {first} {second}")
        return VideoEntry(path=path, start=first, end=first + second, numbered=True, where=where)
    raise DataError(f"{where}: {text.strip()!r} is ambiguous: pre-training lists mean "
                    "`frame_dir start_idx total_frames`, fine-tuning lists "
                    "`frame_dir total_frames label`; pass list_format='pretrain' or 'labeled' "
                    "(or convert the list to a giant CSV)")


def read_manifest(path: str | Path, root: str = "", list_format: str = "auto") -> list[VideoEntry]:
    """Read a giant CSV or an official list. Relative paths resolve against `root`, else the
    manifest's folder. `list_format` disambiguates 3-column official frame-folder lines."""
    path = Path(path)
    if list_format not in LIST_FORMATS:
        raise DataError(f"list_format={list_format!r}: use one of {list(LIST_FORMATS)}")
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; create it (datasets_manifest/README.md) "
                        "or fix data.manifest")
    base = Path(root).expanduser() if root else path.parent
    key = (str(path), str(path.resolve()), str(base), list_format, _digest(path))
    if key in _PARSED:  # the start-up check parsed it moments ago (giant/stages/inputs.py)
        return list(_PARSED[key])
    try:
        if _is_giant_csv(path):
            entries = _read_giant_csv(path, base)
        else:
            entries = [_parse_official(text, f"{path}:{n}", base, list_format)
                       for n, text in _data_lines(path)]
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc) from None
    if not entries:
        raise DataError(f"manifest {path} lists no videos")
    while len(_PARSED) >= 4:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[key] = entries
    return list(entries)


# (path, resolved, base, list_format, content digest) → entries: a stage checks its manifests before
# it starts and its dataset reads them again; a K710 list parses in seconds, once is enough
_PARSED: dict = {}


def _digest(path: Path) -> str:
    """Of the content, not the mtime: a file rewritten within one timestamp tick is read anew."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _not_text(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"manifest {path} is not UTF-8 text (byte {exc.start}): a manifest is a CSV or an "
                     "official list (datasets_manifest/README.md); check the path")


def check_manifest(path: str | Path, key: str = "data.manifest") -> None:
    """Cheap pre-flight before a run starts: the file exists, is text and lists a video. Rows
    are checked when the dataset reads them all (K710: 660k rows, seconds)."""
    path = Path(path)
    if path.is_dir() or not path.is_file():
        raise DataError(f"{key}={path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                        "point it at a manifest file (datasets_manifest/README.md)")
    if path.suffix.lower() in (".yaml", ".yml"):
        return  # a sources list: read_sources checks it and its manifests
    try:
        lines = [text for _, text in zip(range(2), _data_lines(path))]
        header = _is_giant_csv(path)
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc) from None
    if len(lines) < (2 if header else 1):
        raise DataError(f"manifest {path} lists no videos; fill it (e.g. `giant data synth DIR`) or fix {key}")


def _check_source(spec: dict, where: str) -> dict:
    if not isinstance(spec, dict):
        raise DataError(f"{where}: each source must be a mapping with keys {list(SOURCE_KEYS)}")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; valid keys are {list(SOURCE_KEYS)}")
    if "manifest" not in spec:
        raise DataError(f"{where}: missing 'manifest' (path of this source's list)")
    rate = spec.get("sampling_rate")
    if rate is not None and (not isinstance(rate, int) or rate < 1):
        raise DataError(f"{where}: sampling_rate {rate!r} must be an integer >= 1")
    weight = spec.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        raise DataError(f"{where}: weight {weight!r} must be a number > 0 "
                        "(1 = each video once per epoch)")
    return spec


def _apply_weight(entries: list[VideoEntry], weight: float, rng: np.random.Generator) -> list:
    """weight w → round(w·n) entries: whole copies, then a seeded subset without repeats."""
    target = max(1, int(round(weight * len(entries))))
    copies, extra = divmod(target, len(entries))
    picked = np.sort(rng.choice(len(entries), size=extra, replace=False)) if extra else []
    return entries * copies + [entries[i] for i in picked]


def read_sources(path: str | Path, root: str = "", seed: int = 0,
                 weighted: bool = True) -> list[VideoEntry]:
    """Mix the manifests of a sources YAML; each entry carries its source name and stride.
    weighted=False: every listed video exactly once, weights ignored (for validation)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sources file {path} does not exist; fix data.manifest")
    try:
        doc = yaml.safe_load(path.read_text(encoding=MANIFEST_ENCODING)) or {}
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc) from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list) or not doc["sources"]:
        raise DataError(f"{path}: expected a top-level 'sources:' list (see "
                        "datasets_manifest/unlabeled_hybrid.yaml)")
    extra = sorted(set(doc) - {"sources", "root"})
    if extra:
        raise DataError(f"{path}: unknown top-level key(s) {extra}; valid: ['root', 'sources']")
    mixed: list[VideoEntry] = []
    for i, spec in enumerate(doc["sources"]):
        spec = _check_source(spec, f"{path}: sources[{i}]")
        name = str(spec.get("name", Path(spec["manifest"]).stem))
        manifest = Path(spec["manifest"]).expanduser()
        manifest = manifest if manifest.is_absolute() else path.parent / manifest
        src_root = spec.get("root") or doc.get("root") or root
        entries = read_manifest(manifest, src_root, spec.get("list_format", "pretrain"))
        entries = [replace(e, source=name, sampling_rate=spec.get("sampling_rate"))
                   for e in entries]
        rng = np.random.default_rng([seed, i])
        weight = float(spec.get("weight", 1.0))
        chosen = _apply_weight(entries, weight, rng) if weighted else entries
        log.info("source %s: %d videos listed, %d per epoch (weight %s, stride %s)", name,
                 len(entries), len(chosen), spec.get("weight", 1.0), spec.get("sampling_rate"))
        mixed.extend(chosen)
    return mixed


def load_entries(path: str | Path, root: str = "", list_format: str = "auto",
                 seed: int = 0, weighted: bool = True) -> list[VideoEntry]:
    """Any manifest kind: .yaml/.yml = sources list, anything else = CSV / official list.
    weighted=False reads a sources list without its weights (each listed video once)."""
    if not str(path):
        raise DataError("no manifest given; set data.manifest (or data.val_manifest)")
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return read_sources(path, root, seed, weighted)
    return read_manifest(path, root, list_format)


def write_manifest(path: str | Path, entries: list[VideoEntry], base: str | Path | None = None) -> None:
    """Write entries as a giant CSV (paths relative to `base` when they lie under it)."""
    base = Path(base) if base is not None else None
    numbered = [e for e in entries if e.numbered]
    if numbered:  # CSV start_frame/end_frame are listing positions: writing would shift them
        raise DataError(f"{numbered[0].where or numbered[0].path}: a frame-number range "
                        "(official `frame_dir start_idx total_frames`) has no giant CSV form; "
                        "keep the official list as the manifest")
    # a column is written when any entry sets it (label 0 is a class, not "no label")
    has = {"label": any(e.label is not None for e in entries),
           "source": any(e.source for e in entries),
           "start_frame": any(e.start != 0 for e in entries),
           "end_frame": any(e.end is not None for e in entries)}
    columns = ["path"] + [c for c in CSV_COLUMNS[1:] if has[c]]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for e in entries:
            p = e.path
            if base is not None and Path(p).is_relative_to(base):
                p = str(Path(p).relative_to(base))
            values = {"path": p, "label": "" if e.label is None else e.label,
                      "source": e.source, "start_frame": e.start,
                      "end_frame": -1 if e.end is None else e.end}
            writer.writerow([values[c] for c in columns])


def summarize(entries: list[VideoEntry]) -> dict:
    """Videos per source, for logs and `giant data validate`."""
    counts: dict = {}
    for e in entries:
        counts[e.source or "-"] = counts.get(e.source or "-", 0) + 1
    return counts


def check_labels(entries: list[VideoEntry], key: str, classes: int, fix: str = "") -> None:
    """Every line labelled, every label < `classes` (the model's head): a label past the head
    would otherwise stop the run at its first batch, after the whole start-up."""
    missing = [e for e in entries if e.label is None]
    if missing:
        raise DataError(f"{missing[0].where}: {key} needs a label on every line ({len(missing)} lines have "
                        "none); add a label column or use a labelled list")
    top = max(entries, key=lambda e: e.label)
    if classes > 0 and top.label >= classes:
        raise DataError(f"{top.where}: label {top.label} but the model has {classes} classes (labels "
                        f"0..{classes - 1}); {fix or 'fix model.num_classes or ' + key}")


def num_classes(entries: list[VideoEntry]) -> int:
    """1 + the largest label (0 when unlabeled)."""
    labels = [e.label for e in entries if e.label is not None]
    return 0 if not labels else 1 + max(labels)


__all__ = ["VideoEntry", "read_manifest", "read_sources", "load_entries", "write_manifest",
           "summarize", "num_classes", "CSV_COLUMNS"]
