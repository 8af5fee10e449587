"""K710: the class set and head-row maps against the official files; manifest merge rules."""
import json
import os
from pathlib import Path

import pytest

from giant.data import kinetics710 as k
from giant.commands.data import main
from giant.data.manifest import read_manifest
from giant.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GIANT_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
KINETICS = REFERENCE / "kinetics"
RENAMES = REPO / "datasets_manifest" / "k710_identical_label_merge.json"


@pytest.fixture(scope="module")
def ref():
    if not (KINETICS / "label_map_k710.txt").is_file():
        pytest.skip(f"Kinetics reference files not found in {KINETICS} (set GIANT_REFERENCE_DIR)")
    return {n: k.read_label_map(KINETICS / f"label_map_k{n}.txt") for n in (400, 600, 700, 710)}


def test_shipped_rename_table_matches_reference(ref):
    assert k.read_renames(RENAMES) == json.loads((KINETICS / "k710_identical_label_merge.json").read_text())


def test_class_set_equals_official(ref):
    renames = k.read_renames(KINETICS / "k710_identical_label_merge.json")
    classes = k.build_k710_classes([ref[400], ref[600], ref[700]], renames)
    assert len(classes) == 710 and set(classes) == set(ref[710])
    assert classes == sorted(classes)
    # "throwing ball" would otherwise be merged away: K600 and K700 list both names
    assert "throwing ball" in classes and "throwing ball (not baseball or American football)" in classes


@pytest.mark.parametrize("n", [400, 600, 700])
def test_head_row_maps_equal_reference(ref, n):
    rows = k.head_row_map(ref[710], ref[n], k.read_renames(RENAMES))
    assert rows == json.loads((KINETICS / f"label_710to{n}.json").read_text())


def test_head_row_map_applies_renames_and_reports_unknown(ref):
    renames = k.read_renames(RENAMES)
    rows = k.head_row_map(ref[710], ["dying hair", "throwing ball", "abseiling"], renames)
    assert [ref[710][r] for r in rows] == ["dyeing hair", "throwing ball", "abseiling"]
    with pytest.raises(DataError, match="class 'juggling cats' .* is not in the K710 label map"):
        k.head_row_map(ref[710], ["juggling cats"], renames)


def test_cli_labels_and_rowmap(ref, tmp_path):
    out = tmp_path / "k710.txt"
    assert main(["k710", "labels", *[f"--k{n}={KINETICS / f'label_map_k{n}.txt'}" for n in (400, 600, 700)],
                 "--out", str(out)]) == 0
    assert set(out.read_text().splitlines()) == set(ref[710])
    rowmap = tmp_path / "rows.json"
    assert main(["k710", "rowmap", "--k710", str(KINETICS / "label_map_k710.txt"),
                 "--target", str(KINETICS / "label_map_k400.txt"), "--out", str(rowmap)]) == 0
    assert json.loads(rowmap.read_text()) == json.loads((KINETICS / "label_710to400.json").read_text())


def write_csv(path, rows):
    path.write_text("label,youtube_id,time_start,time_end,split\n" +
                    "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_manifest_merge_rules(tmp_path):
    classes = ["abseiling", "dyeing hair", "zumba"]
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    k400 = write_csv(tmp_path / "k400.csv", [
        ("abseiling", "aaa", 0, 10, "train"), ("dying hair", "bbb", 5, 15, "train"),
        ("abseiling", "vvv", 1, 11, "val"), ("abseiling", "ttt", 0, 10, "test")])
    k600 = write_csv(tmp_path / "k600.csv", [
        ("abseiling", "aaa", 0, 10, "train"),      # duplicate id in train
        ("zumba", "ccc", 20, 30, "train"),
        ("zumba", "bbb", 5, 15, "validate"),       # val video that is in train
        ("zumba", "www", 3, 13, "validate"),
        ("unknown dance", "ddd", 0, 10, "train")])
    k700 = write_csv(tmp_path / "k700.csv", [("abseiling", "vvv", 1, 11, "val")])  # val dup
    out = tmp_path / "k710"
    assert main(["k710", "manifests", "--k400", str(k400), "--k600", str(k600), "--k700", str(k700),
                 "--labels", str(tmp_path / "classes.txt"), "--out-dir", str(out),
                 "--video-root", "/kinetics"]) == 0
    train = read_manifest(out / "train.csv")
    assert [(e.path, e.label, e.source) for e in train] == [
        ("/kinetics/train/abseiling/aaa_000000_000010.mp4", 0, "k400"),
        ("/kinetics/train/dying hair/bbb_000005_000015.mp4", 1, "k400"),  # renamed label
        ("/kinetics/train/zumba/ccc_000020_000030.mp4", 2, "k600")]
    val = read_manifest(out / "val.csv")
    assert [(Path(e.path).name, e.label) for e in val] == [
        ("vvv_000001_000011.mp4", 0), ("www_000003_000013.mp4", 2)]
    clips = [c for name, p in (("k400", k400), ("k600", k600), ("k700", k700))
             for c in k.read_annotations(p, name)]
    split = k.merge_k710(clips, classes, k.read_renames(RENAMES))
    assert (split.dropped_duplicates, split.dropped_val_in_train) == (2, 1)
    assert split.unknown_labels == {"unknown dance": 1}


def test_bad_inputs(tmp_path):
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start\nx,y,1\n")
    with pytest.raises(DataError, match=r"bad.csv:1: missing column\(s\) \['time_end', 'split'\]"):
        k.read_annotations(tmp_path / "bad.csv", "k400")
    write_csv(tmp_path / "rows.csv", [("a", "b", "zero", 10, "train")])
    with pytest.raises(DataError, match=r"rows.csv:2: malformed row"):
        k.read_annotations(tmp_path / "rows.csv", "k400")
    (tmp_path / "map.txt").write_text("a\n\nb\n")
    with pytest.raises(DataError, match=r"map.txt:2: empty class name"):
        k.read_label_map(tmp_path / "map.txt")


def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    (tmp_path / "map.txt").write_bytes("abseiling\nzumba\n".encode("utf-8-sig"))
    assert k.read_label_map(tmp_path / "map.txt") == ["abseiling", "zumba"]
    path = tmp_path / "k400.csv"
    path.write_bytes("label,youtube_id,time_start,time_end,split\nzumba,aaa,0,10,train\n"
                     .encode("utf-8-sig"))
    assert [(c.label, c.youtube_id) for c in k.read_annotations(path, "k400")] == [("zumba", "aaa")]
