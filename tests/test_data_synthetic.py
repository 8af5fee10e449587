"""Synthetic videos: real decodable files, deterministic, label = motion direction."""
import csv

import numpy as np
import pytest

from giant.data.decode import open_video
from giant.data.synthetic import DIRECTIONS, render_video, write_synthetic_set
from giant.errors import ConfigError


def estimate_motion(frames: np.ndarray, lag: int = 3) -> tuple[int, int]:
    """(dx, dy) sign of the shapes' motion: cross-correlate frame differences (the static
    background cancels) `lag` frames apart and take the peak shift."""
    gray = frames.astype(float).mean(-1)
    diff = np.diff(gray, axis=0)
    score = np.zeros(gray.shape[1:])
    for t in range(len(diff) - lag):
        a, b = np.fft.fft2(diff[t]), np.fft.fft2(diff[t + lag])
        score += np.real(np.fft.ifft2(np.conj(a) * b))
    dy, dx = np.unravel_index(np.argmax(score), score.shape)
    h, w = score.shape
    dy, dx = (dy + h // 2) % h - h // 2, (dx + w // 2) % w - w // 2
    return int(np.sign(dx)), int(np.sign(dy))


def test_set_layout(synth_videos):
    assert synth_videos.class_names == ["right", "left", "down", "up"]
    assert len(synth_videos.videos) == 12 and sorted(synth_videos.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    rows = {}
    for name in ("train.csv", "val.csv"):
        with open(synth_videos.root / name) as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["train.csv"]) == 8 and len(rows["val.csv"]) == 4
    assert sorted(int(r["label"]) for r in rows["val.csv"]) == [0, 1, 2, 3]
    listed = {r["path"]: int(r["label"]) for rs in rows.values() for r in rs}
    assert listed == {f"videos/{p.name}": y for p, y in zip(synth_videos.videos, synth_videos.labels)}
    assert (synth_videos.root / "classes.txt").read_text() == "right\nleft\ndown\nup\n"


def test_label_is_the_motion_direction(synth_videos):
    for path, label in zip(synth_videos.videos, synth_videos.labels):
        with open_video(str(path), "decord") as reader:
            assert reader.num_frames == 32
            frames = reader.get_frames(range(32))
        assert frames.shape == (32, 64, 64, 3) and frames.dtype == np.uint8
        assert estimate_motion(frames) == DIRECTIONS[synth_videos.class_names[label]], path


def test_render_all_directions():
    for name, direction in DIRECTIONS.items():
        frames = render_video(np.random.default_rng(3), 12, 48, 64, direction)
        assert frames.shape == (12, 48, 64, 3)
        assert estimate_motion(frames) == direction, name


def _dirty_heap(rng: np.random.Generator) -> None:
    """Free many blocks full of noise, so the next allocations start out holding garbage."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for size in rng.integers(256, 8192, 2000):
        p = libc.malloc(int(size))
        ctypes.memset(p, int(rng.integers(0, 256)), int(size))
        blocks.append(p)
    for p in blocks:
        libc.free(p)


def test_same_bytes_whatever_the_heap_held(tmp_path):
    """Regression: libx264's mbtree read uninitialised memory on small frames, so the same seed
    gave different files in a busy process (a CI flake); with it off the bytes are fixed."""
    rng = np.random.default_rng(0)
    digests = set()
    for i in range(8):
        _dirty_heap(rng)
        s = write_synthetic_set(tmp_path / str(i), num_videos=1, num_frames=8, height=32, width=48, seed=7)
        digests.add(s.videos[0].read_bytes())
    assert len(digests) == 1


def test_deterministic_given_seed(tmp_path, synth_videos):
    a = write_synthetic_set(tmp_path / "a", num_videos=3, num_frames=8, height=32, width=48, seed=7)
    b = write_synthetic_set(tmp_path / "b", num_videos=3, num_frames=8, height=32, width=48, seed=7)
    c = write_synthetic_set(tmp_path / "c", num_videos=3, num_frames=8, height=32, width=48, seed=8)
    assert a.labels == b.labels
    for pa, pb, pc in zip(a.videos, b.videos, c.videos):
        assert pa.read_bytes() == pb.read_bytes()  # single-threaded encoder: same bytes
        # PyAV explicitly: decord may fall back to PyAV on narrow frames, and the two
        # convert YUV→RGB with different rounding
        with open_video(str(pa), "pyav") as ra, open_video(str(pb), "pyav") as rb, \
                open_video(str(pc), "pyav") as rc:
            assert ra.get_frames(range(8)).shape == (8, 32, 48, 3)
            assert np.array_equal(ra.get_frames(range(8)), rb.get_frames(range(8)))
            assert not np.array_equal(ra.get_frames(range(8)), rc.get_frames(range(8)))
    assert a.codec in ("libx264", "mpeg4")


def test_mpeg4_fallback_codec(tmp_path):
    s = write_synthetic_set(tmp_path, num_videos=2, num_frames=6, height=32, width=32, codec="mpeg4")
    with open_video(str(s.videos[0]), "pyav") as reader:
        assert reader.num_frames == 6 and reader.get_frames([5]).shape == (1, 32, 32, 3)


def _rows(path):
    with open(path) as f:
        return [(r["path"], int(r["label"])) for r in csv.DictReader(f)]


def test_label_noise_moves_an_exact_share_of_labels_to_other_classes():
    from giant.data.synthetic import mislabel

    true = [i % 4 for i in range(600)]
    given = list(true)
    wrong = mislabel(given, 0.25, 4, seed=0)
    assert len(wrong) == 150 and wrong == sorted(set(wrong))
    assert [i for i in range(600) if given[i] != true[i]] == wrong  # every chosen one changed
    moved = np.bincount([(given[i] - true[i]) % 4 for i in wrong], minlength=4)
    assert moved[0] == 0 and min(moved[1:]) > 30  # to each other class, not a fixed shift
    again = list(true)
    assert mislabel(again, 0.25, 4, seed=0) == wrong and again == given
    assert mislabel(list(true), 0.25, 4, seed=1) != wrong
    assert mislabel(list(true), 0.0, 4, seed=0) == []


def test_label_noise_leaves_videos_and_held_out_labels_true(tmp_path):
    """Same pixels and same val.csv with or without noise; only train.csv lies, and
    train_clean.csv holds what it should have said."""
    import pytest

    from giant.commands.data import main

    clean = write_synthetic_set(tmp_path / "clean", num_videos=16, num_frames=4, height=32, width=32, seed=5)
    assert main(["synth", str(tmp_path / "noisy"), "--num-videos", "16", "--frames", "4",
                 "--height", "32", "--width", "32", "--seed", "5", "--label-noise", "0.25"]) == 0
    noisy = tmp_path / "noisy"
    assert (noisy / "val.csv").read_text() == (clean.root / "val.csv").read_text()
    assert (noisy / "train_clean.csv").read_text() == (clean.root / "train.csv").read_text()
    given, true = _rows(noisy / "train.csv"), _rows(clean.root / "train.csv")
    assert [p for p, _ in given] == [p for p, _ in true]
    assert sum(a != b for a, b in zip(given, true)) == round(0.25 * len(true)) == 3
    for p in clean.videos:
        assert (noisy / "videos" / p.name).read_bytes() == p.read_bytes()
    assert not (clean.root / "train_clean.csv").exists() and clean.mislabelled == []
    api = write_synthetic_set(tmp_path / "api", num_videos=16, num_frames=4, height=32, width=32,
                              seed=5, label_noise=0.25)
    listed = dict(_rows(api.train_manifest))
    assert api.clean_train_manifest == api.root / "train_clean.csv"
    assert sorted(api.mislabelled) == sorted(
        i for i, (v, y) in enumerate(zip(api.videos, api.labels)) if listed.get(f"videos/{v.name}", y) != y)
    assert len(api.mislabelled) == 3
    with pytest.raises(ConfigError, match="label_noise"):
        write_synthetic_set(tmp_path / "bad", num_videos=4, num_frames=4, height=32, width=32,
                            label_noise=1.0)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_synth_cli_refuses_bad_options_in_one_line(tmp_path, capsys):
    from giant.commands.data import main

    for option, value, named in (("--label-noise", "1.5", "--label-noise"), ("--classes", "9", "--classes"),
                                 ("--height", "33", "--height"), ("--num-videos", "-1", "--num-videos"),
                                 ("--num-videos", "0", "--num-videos"), ("--frames", "0", "--frames"),
                                 ("--fps", "0", "--fps"), ("--gop", "0", "--gop"), ("--width", "0", "--width"),
                                 ("--val-fraction", "1.5", "--val-fraction"), ("--crf", "99", "--crf")):
        assert main(["synth", str(tmp_path / "out"), option, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("giant data synth: error: ") and named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_synth_refuses_a_folder_holding_other_files(tmp_path, capsys):
    from giant.commands.data import main

    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "train.csv").write_text("path,label\nmy.mp4,0\n")  # a name synth would write over
    assert main(["synth", str(out), "--num-videos", "2", "--frames", "4", "--height", "16", "--width", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} already holds files giant data synth did not write" in err
    assert "notes.txt" in err and "train.csv" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train.csv"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "train.csv").read_text() == "path,label\nmy.mp4,0\n"
    linked = tmp_path / "linked"  # videos/ a link to someone's folder: writing would land there
    (linked).mkdir()
    (tmp_path / "theirs").mkdir()
    (linked / "videos").symlink_to(tmp_path / "theirs")
    assert main(["synth", str(linked), "--num-videos", "2", "--frames", "4", "--height", "16", "--width", "16"]) == 2
    assert "(videos)" in capsys.readouterr().err and not list((tmp_path / "theirs").iterdir())
    (tmp_path / "file").write_text("x")
    assert main(["synth", str(tmp_path / "file"), "--num-videos", "2"]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


def test_synth_writes_again_over_its_own_output(tmp_path):
    """A re-run (another size, with or without label noise) replaces what synth wrote; what the
    earlier run wrote and this one does not stays synth's, so a third run is accepted too."""
    out = tmp_path / "data"
    first = write_synthetic_set(out, num_videos=4, num_frames=4, height=16, width=16, label_noise=0.5)
    assert first.clean_train_manifest.is_file() and (out / "synth.json").is_file()
    again = write_synthetic_set(out, num_videos=2, num_frames=4, height=16, width=16, seed=1)
    assert not (out / "train_clean.csv").exists() and len(again.videos) == 2
    write_synthetic_set(out, num_videos=3, num_frames=4, height=16, width=16)  # 00003.mp4 from run 1
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{i:05d}.mp4" for i in range(4)]
    (out / "stamp").touch()  # anything else makes it someone else's folder again
    with pytest.raises(ConfigError, match=r"did not write \(stamp\)"):
        write_synthetic_set(out, num_videos=2, num_frames=4, height=16, width=16)


@pytest.mark.parametrize("height, width", [(30, 34), (34, 30), (32, 48)])
def test_any_even_size_encodes_to_the_colours_drawn(tmp_path, height, width):
    """Heights that are not a multiple of 4 once failed to split the chroma planes; a plane put in
    the wrong place would show as wrong colours, so decode and compare with what was drawn."""
    from giant.data.synthetic import write_video

    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), 255 - xx * 255 // (width - 1)], -1)
    frames = np.repeat(frame[None].astype(np.uint8), 4, axis=0)
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=25)
    with open_video(str(path), "pyav") as reader:
        decoded = reader.get_frames(range(4)).astype(float)
    assert decoded.shape == (4, height, width, 3)
    assert np.abs(decoded - frames).mean() < 6, np.abs(decoded - frames).mean()
