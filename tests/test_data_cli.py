"""`giant data synth | validate | bench` through giant.commands.data.main."""
import shutil

import pytest

from giant.commands.data import main
from giant.data.manifest import read_manifest


@pytest.mark.parametrize("argv", [[], ["synth"], ["validate"], ["k710"], ["k710", "labels"],
                                  ["k710", "rowmap"], ["k710", "manifests"], ["bench"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    assert "usage: giant data" in capsys.readouterr().out


def test_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--num-videos", "4", "--frames", "8", "--height", "32",
                 "--width", "32", "--classes", "2", "--seed", "3", "--val-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 videos" in out and "2 classes" in out
    train, val = read_manifest(tmp_path / "train.csv"), read_manifest(tmp_path / "val.csv")
    assert len(train) == 2 and len(val) == 2
    assert sorted(e.label for e in train) == [0, 1] and sorted(e.label for e in val) == [0, 1]


def test_validate_ok(synth_videos, capsys):
    assert main(["validate", str(synth_videos.train_manifest), "--workers", "1",
                 "--num-frames", "16", "--sampling-rate", "2"]) == 0
    assert "all 8 entries OK" in capsys.readouterr().err


def test_validate_lists_every_bad_line(synth_videos, corrupt_videos, tmp_path, capsys):
    shutil.copy(synth_videos.videos[0], tmp_path / "good.mp4")
    for name in ("truncated", "truncated_faststart", "garbage", "empty"):
        shutil.copy(corrupt_videos[name], tmp_path / f"{name}.mp4")
    lines = ["path,label", "good.mp4,0", "truncated.mp4,1", "truncated_faststart.mp4,1",
             "garbage.mp4,2", "empty.mp4,0", "missing.mp4,3"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    rc = main(["validate", str(tmp_path / "m.csv"), "--workers", "2", "--num-frames", "8"])
    captured = capsys.readouterr()
    assert rc == 1
    out = captured.out.splitlines()
    assert len(out) == 5 and "5 of 6 entries are bad" in captured.err
    by_name = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in out}
    assert set(by_name) == {"truncated.mp4", "truncated_faststart.mp4", "garbage.mp4", "empty.mp4",
                            "missing.mp4"}
    assert by_name["missing.mp4"] == f"{tmp_path / 'missing.mp4'}: file not found  [{tmp_path / 'm.csv'}:7]"
    assert "empty file (0 bytes)" in by_name["empty.mp4"]
    assert "cannot open" in by_name["garbage.mp4"] and "cannot open" in by_name["truncated.mp4"]
    assert any(s in by_name["truncated_faststart.mp4"]
               for s in ("truncated:", "decode failed", "not decodable"))


def test_validate_min_frames(synth_videos, capsys):
    assert main(["validate", str(synth_videos.val_manifest), "--workers", "1", "--min-frames", "33"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.split("  [")[0].endswith(": only 32 frames, need at least 33")
                                 for line in out)


def test_validate_bad_manifest_is_one_clean_error(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,label\na.mp4,x\n")
    assert main(["validate", str(tmp_path / "m.csv"), "--workers", "1"]) == 2
    assert capsys.readouterr().err.startswith(
        f"giant data validate: error: {tmp_path / 'm.csv'}:2: label 'x' is not an integer")


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bench(synth_videos, capsys, backend):
    assert main(["bench", str(synth_videos.train_manifest), "--backend", backend, "--workers", "0",
                 "--batch-size", "2", "--num-sample", "2", "--num-frames", "8", "--sampling-rate",
                 "2", "--size", "32", "--videos", "6"]) == 0
    out = capsys.readouterr().out
    assert f"{backend}, 0 worker(s):" in out and "videos/s" in out
    assert '"videos": 6' in out and '"clips": 12' in out and '"failed": 0' in out


def test_bench_profile(synth_videos, capsys):
    assert main(["bench", str(synth_videos.train_manifest), "--profile", "--num-frames", "8",
                 "--size", "32", "--videos", "4", "--no-masks"]) == 0
    out = capsys.readouterr().out
    assert '"ms_per_video"' in out and '"frame_size": "64x64"' in out and "videos/s per core" in out


def test_validate_sources_yaml_checks_every_listed_clip_once(synth_videos, tmp_path, monkeypatch,
                                                             capsys):
    import yaml

    import giant.data.validate as cli

    checked = []
    real = cli.check_entry
    monkeypatch.setattr(cli, "check_entry", lambda e, *a: checked.append(e.path) or real(e, *a))
    good = [str(p) for p in synth_videos.videos[:2]]
    (tmp_path / "a.csv").write_text("path\n" + "".join(f"{p}\n" for p in good))
    (tmp_path / "b.csv").write_text("path\n" + "".join(f"gone{i}.mp4\n" for i in range(4)))
    (tmp_path / "c.csv").write_text(f"path\n{good[0]}\n")  # listed again by another source
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"sources": [
        {"name": "A", "manifest": "a.csv", "weight": 3.0},    # an epoch would check 6
        {"name": "B", "manifest": "b.csv", "weight": 0.25},   # ...and only 1 of these 4
        {"name": "C", "manifest": "c.csv"}]}))
    assert main(["validate", str(tmp_path / "mix.yaml"), "--workers", "1", "--num-frames", "8"]) == 1
    captured = capsys.readouterr()
    assert sorted(checked) == sorted(good + [str(tmp_path / f"gone{i}.mp4") for i in range(4)])
    assert sorted(line.split(":")[0] for line in captured.out.splitlines()) == [
        str(tmp_path / f"gone{i}.mp4") for i in range(4)]
    assert "4 of 7 entries are bad (6 distinct clips checked)" in captured.err


def test_validate_reports_unexpected_errors_per_entry(synth_videos, tmp_path, monkeypatch, capsys):
    import giant.data.validate as cli

    odd = str(synth_videos.videos[1])
    real = cli.check_entry

    def flaky(entry, *args):
        if entry.path == odd:
            raise ValueError("codec table exploded")
        return real(entry, *args)

    monkeypatch.setattr(cli, "check_entry", flaky)
    (tmp_path / "m.csv").write_text(f"path\n{synth_videos.videos[0]}\n{odd}\n{synth_videos.videos[2]}\n")
    assert main(["validate", str(tmp_path / "m.csv"), "--workers", "1", "--num-frames", "8"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{odd}: ValueError: codec table exploded  [{tmp_path / 'm.csv'}:3]"]
    assert "1 of 3 entries are bad" in captured.err


def test_bench_mask_grid_follows_patch(synth_videos, capsys):
    import json

    common = ["bench", str(synth_videos.train_manifest), "--workers", "0", "--batch-size", "1",
              "--num-sample", "1", "--num-frames", "8", "--size", "32", "--videos", "2"]
    grids = {}
    for patch in ("16", "8"):
        assert main(common + ["--patch", patch]) == 0
        result = json.loads(capsys.readouterr().out.rsplit("\n", 2)[0])  # JSON, then a summary
        assert result["masks"]
        grids[patch] = result["token_grid"]
    assert grids == {"16": [4, 2, 2], "8": [4, 4, 4]}
    assert main(common + ["--patch", "14"]) == 2  # 32 is not a multiple of 14
    assert "does not split into 2x14x14 cubes" in capsys.readouterr().err
