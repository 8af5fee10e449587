"""Manifest formats: giant CSV, official VideoMAE lists, sources YAML; errors name file:line."""
from pathlib import Path

import pytest
import yaml

from giant.data.manifest import (VideoEntry, load_entries, read_manifest, read_sources,
                                 summarize, write_manifest)
from giant.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_giant_csv_all_columns(tmp_path):
    m = write(tmp_path / "m.csv", "# comment\npath,label,source,start_frame,end_frame\n"
              "a.mp4,3,k710,,\n/abs/b.mp4,,ava,300,600\n\n\"c,d.mp4\",0,ssv2,0,-1\n")
    entries = read_manifest(m)
    assert entries == [
        VideoEntry(str(tmp_path / "a.mp4"), 3, "k710", 0, None, None, f"{m}:3"),
        VideoEntry("/abs/b.mp4", None, "ava", 300, 600, None, f"{m}:4"),
        VideoEntry(str(tmp_path / "c,d.mp4"), 0, "ssv2", 0, None, None, f"{m}:6"),
    ]


def test_root_overrides_manifest_dir(tmp_path):
    m = write(tmp_path / "m.csv", "path\nx/a.mp4\n")
    assert read_manifest(m, root="/data")[0].path == "/data/x/a.mp4"
    assert read_manifest(m)[0].path == str(tmp_path / "x" / "a.mp4")


@pytest.mark.parametrize("body, message", [
    ("path,label\na.mp4,cat\n", "m.csv:2: label 'cat' is not an integer"),
    ("path,label\na.mp4,1,2\n", "m.csv:2: 3 fields but the header has 2"),
    ("path,label\na.mp4,-1\n", "m.csv:2: label -1 must be >= 0"),
    ("path,start_frame,end_frame\na.mp4,10,5\n", "m.csv:2: end_frame 5 must be > start_frame 10"),
    ("path,lable\na.mp4,1\n", "m.csv:1: bad header ['path', 'lable']"),
    ("path,label\n,1\n", "m.csv:2: empty path"),
])
def test_malformed_csv_names_file_and_line(tmp_path, body, message):
    m = write(tmp_path / "m.csv", body)
    with pytest.raises(DataError) as err:
        read_manifest(m)
    assert message in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_official_lists(tmp_path):
    pre = write(tmp_path / "pre.txt", "v/a.mp4 0 -1\nframes/b 0 300\nframes/c 300 300\n")
    entries = read_manifest(pre, list_format="pretrain")
    assert [(Path(e.path).name, e.start, e.end, e.label) for e in entries] == [
        ("a.mp4", 0, None, None), ("b", 0, 300, None), ("c", 300, 600, None)]
    fine = write(tmp_path / "train.csv", "k/abseiling/x y.mp4 0\nk/z.mp4 399\n")
    entries = read_manifest(fine)
    assert [(Path(e.path).name, e.label) for e in entries] == [("x y.mp4", 0), ("z.mp4", 399)]
    frames = write(tmp_path / "ssv2.txt", "ssv2/123 45 17\n")
    (e,) = read_manifest(frames, list_format="labeled")
    assert (Path(e.path).name, e.start, e.end, e.label) == ("123", 0, 45, 17)
    # the pre-training video form is unambiguous even in auto mode
    assert read_manifest(write(tmp_path / "p2.txt", "a.mp4 0 -1\n"))[0].end is None


def test_official_ambiguous_and_malformed(tmp_path):
    m = write(tmp_path / "l.txt", "a.mp4 0 -1\nssv2/123 45 17\n")
    with pytest.raises(DataError, match=r"l.txt:2: 'ssv2/123 45 17' is ambiguous"):
        read_manifest(m)
    m = write(tmp_path / "l2.txt", "a.mp4 1\nb.mp4 1 2 3\n")
    with pytest.raises(DataError, match=r"l2.txt:2: .* has 3 numbers after the path"):
        read_manifest(m)
    m = write(tmp_path / "l3.txt", "a 0 5\n")
    with pytest.raises(DataError, match=r"l3.txt:1: expected `frame_dir total_frames label`"):
        read_manifest(m, list_format="labeled")


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(DataError, match="nope.csv does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="lists no videos"):
        read_manifest(write(tmp_path / "e.csv", "path,label\n"))
    with pytest.raises(DataError, match="set data.manifest"):
        load_entries("")


def test_sources_yaml_stride_and_weight(tmp_path):
    write(tmp_path / "a.csv", "path\n" + "".join(f"a{i}.mp4\n" for i in range(10)))
    write(tmp_path / "b.txt", "".join(f"b{i}.mp4 0 -1\n" for i in range(4)))
    y = write(tmp_path / "mix.yaml", yaml.safe_dump({"sources": [
        {"name": "A", "manifest": "a.csv", "sampling_rate": 2, "weight": 0.5},
        {"name": "B", "manifest": "b.txt", "weight": 2.5, "root": "/vids"}]}))
    entries = read_sources(y, seed=3)
    assert summarize(entries) == {"A": 5, "B": 10}
    a = [e for e in entries if e.source == "A"]
    assert all(e.sampling_rate == 2 for e in a) and len({e.path for e in a}) == 5
    b = [Path(e.path).name for e in entries if e.source == "B"]
    assert b[:8] == [f"b{i}.mp4" for i in range(4)] * 2  # two whole copies, then a subset
    assert len(set(b[8:])) == 2 and all(e.sampling_rate is None for e in entries if e.source == "B")
    assert all(e.path.startswith("/vids/") for e in entries if e.source == "B")
    assert read_sources(y, seed=3) == entries  # the subset is fixed by the seed
    assert load_entries(y, seed=3) == entries
    listed = read_sources(y, weighted=False)  # validation: every listed video once, no weights
    assert summarize(listed) == {"A": 10, "B": 4} and load_entries(y, weighted=False) == listed


@pytest.mark.parametrize("doc, message", [
    ({"sources": [{"manifest": "a.csv", "stride": 2}]}, "sources[0]: unknown key(s) ['stride']"),
    ({"sources": [{"name": "x"}]}, "sources[0]: missing 'manifest'"),
    ({"sources": [{"manifest": "a.csv", "weight": 0}]}, "weight 0 must be a number > 0"),
    ({"sources": [{"manifest": "a.csv", "sampling_rate": 0}]}, "sampling_rate 0 must be"),
    ({"source": []}, "expected a top-level 'sources:' list"),
])
def test_sources_yaml_errors(tmp_path, doc, message):
    write(tmp_path / "a.csv", "path\na.mp4\n")
    y = write(tmp_path / "mix.yaml", yaml.safe_dump(doc))
    with pytest.raises(DataError) as err:
        read_sources(y)
    assert message in str(err.value) and "mix.yaml" in str(err.value)


def test_unlabeled_hybrid_yaml_matches_spec():
    doc = yaml.safe_load((REPO / "datasets_manifest" / "unlabeled_hybrid.yaml").read_text())
    by_name = {s["name"]: s for s in doc["sources"]}
    assert set(by_name) == {"k710", "ssv2", "ava", "webvid", "instagram"}
    assert {n: s["sampling_rate"] for n, s in by_name.items()} == {
        "k710": 4, "ssv2": 2, "ava": 4, "webvid": 4, "instagram": 4}


def test_write_manifest_round_trip(tmp_path):
    entries = [VideoEntry(str(tmp_path / "v" / "a.mp4"), 1, "s", 0, None),
               VideoEntry(str(tmp_path / "v" / "b.mp4"), 2, "s", 5, 50)]
    write_manifest(tmp_path / "out.csv", entries, base=tmp_path)
    text = (tmp_path / "out.csv").read_text().splitlines()
    assert text == ["path,label,source,start_frame,end_frame", "v/a.mp4,1,s,0,-1", "v/b.mp4,2,s,5,50"]
    back = read_manifest(tmp_path / "out.csv")
    assert [(e.path, e.label, e.start, e.end) for e in back] == [
        (e.path, e.label, e.start, e.end) for e in entries]


def test_write_manifest_keeps_label_zero_and_end_without_start(tmp_path):
    # label 0 is a class: an all-zero label column must still be written
    zeros = [VideoEntry(str(tmp_path / "a.mp4"), 0), VideoEntry(str(tmp_path / "b.mp4"), 0)]
    write_manifest(tmp_path / "z.csv", zeros, base=tmp_path)
    assert (tmp_path / "z.csv").read_text().splitlines() == ["path,label", "a.mp4,0", "b.mp4,0"]
    assert [e.label for e in read_manifest(tmp_path / "z.csv")] == [0, 0]
    # end without start: end column only; no label anywhere: no label column
    cut = [VideoEntry(str(tmp_path / "a.mp4"), end=300), VideoEntry(str(tmp_path / "b.mp4"))]
    write_manifest(tmp_path / "c.csv", cut, base=tmp_path)
    assert (tmp_path / "c.csv").read_text().splitlines() == ["path,end_frame", "a.mp4,300", "b.mp4,-1"]
    assert [(e.label, e.start, e.end) for e in read_manifest(tmp_path / "c.csv")] == [
        (None, 0, 300), (None, 0, None)]


def test_csv_with_byte_order_mark(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM; it must still read as a giant CSV, not an official list
    m = tmp_path / "excel.csv"
    m.write_bytes("path,label\r\na.mp4,0\r\nb.mp4,3\r\n".encode("utf-8-sig"))
    assert [(Path(e.path).name, e.label) for e in read_manifest(m)] == [("a.mp4", 0), ("b.mp4", 3)]
    listed = tmp_path / "official.txt"
    listed.write_bytes("a.mp4 2\n".encode("utf-8-sig"))
    assert read_manifest(listed)[0].path == str(tmp_path / "a.mp4")
