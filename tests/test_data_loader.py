"""Sharding + resume, collation, failure accounting across DataLoader worker processes."""
import pytest
import torch

from giant.data.datasets import LabeledClips, PretrainClips
from giant.data.loader import (FailureTracker, ResumableDistributedSampler, collate_labeled,
                               collate_pretrain, collate_test, make_loader, set_loader_epoch)
from giant.data.manifest import VideoEntry, read_manifest
from giant.data.seeding import derive_seed
from giant.errors import DataError


def ranks(n, ws, **kw):
    return [list(ResumableDistributedSampler(n, r, ws, **kw)) for r in range(ws)]


def test_sharding_exact():
    assert ranks(10, 3, shuffle=False) == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    assert ranks(10, 3, shuffle=False, drop_last=True) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert ranks(2, 4, shuffle=False) == [[0], [1], [0], [1]]
    s = ResumableDistributedSampler(10, 1, 3, shuffle=False)
    assert len(s) == 4 and s.samples_per_epoch == 4
    with pytest.raises(DataError, match="drop_last with 2 videos and 4 ranks"):
        ResumableDistributedSampler(2, 0, 4, drop_last=True)


@pytest.mark.parametrize("ws", [1, 2, 3, 5, 8])
def test_shuffled_shards_cover_everything(ws):
    parts = ranks(37, ws, seed=4)
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(37)) and len(flat) == -(-37 // ws) * ws
    assert len({len(p) for p in parts}) == 1
    again = ResumableDistributedSampler(37, 0, ws, seed=4)
    assert list(again) == parts[0]
    again.set_epoch(1)
    assert list(again) != parts[0] and sorted(list(again)) != []


def test_epoch_and_seed_are_mixed_not_added():
    # with seed + epoch, (seed 0, epoch 1) would replay (seed 1, epoch 0) exactly
    later = ResumableDistributedSampler(50, seed=0)
    later.set_epoch(1)
    assert list(later) != list(ResumableDistributedSampler(50, seed=1))
    assert list(later) != list(ResumableDistributedSampler(50, seed=0))


def test_resume_mid_epoch_same_world_size():
    full = {}
    for r in range(2):
        s = ResumableDistributedSampler(21, r, 2, seed=9)
        s.set_epoch(3)
        full[r] = list(s)
    s = ResumableDistributedSampler(21, 0, 2, seed=9)
    s.set_epoch(3)
    s.advance(4)
    s.advance(3)
    state = s.state_dict()
    assert state["epoch"] == 3 and state["consumed"] == 14
    for r in range(2):
        resumed = ResumableDistributedSampler(21, r, 2, seed=9)
        resumed.load_state_dict(state)
        resumed.set_epoch(3)  # the loop re-enters the saved epoch: position is kept
        assert list(resumed) == full[r][7:] and len(resumed) == 4
        resumed.set_epoch(4)  # the next epoch starts from its beginning
        assert len(list(resumed)) == 11


def test_resume_with_another_world_size():
    s = ResumableDistributedSampler(20, 0, 4, seed=1, shuffle=True)
    order = list(torch.randperm(20, generator=torch.Generator().manual_seed(derive_seed(1, 0))).numpy())
    s.advance(2)  # 8 samples consumed globally
    parts = []
    for r in range(5):  # 12 left over 5 ranks: padded with the epoch's first 3 indices
        t = ResumableDistributedSampler(20, r, 5, seed=1)
        t.load_state_dict(s.state_dict())
        parts.append(list(t))
    rest = [int(i) for i in order[8:]] + [int(i) for i in order[:3]]
    assert parts == [rest[r::5] for r in range(5)]
    with pytest.raises(DataError, match="sampler state is for 20 videos / seed 1, this run has 21 / 1"):
        ResumableDistributedSampler(21, 0, 1, seed=1).load_state_dict(s.state_dict())


def sample(video, failed=(), label=0, index=0, valid=True):
    return {"video": video, "label": label, "index": index, "valid": valid, "failed": len(failed),
            "failed_paths": [p for p, _ in failed], "failed_reasons": [r for _, r in failed]}


def test_collate_pretrain():
    a = sample(torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), [("x.mp4", "cannot open")], index=3)
    b = sample(torch.ones(4, 3, 2, 8, 8, dtype=torch.uint8), index=5)
    a["enc_keep"], b["enc_keep"] = torch.zeros(4, 5, dtype=torch.long), torch.ones(4, 5, dtype=torch.long)
    a["dec_keep"], b["dec_keep"] = torch.zeros(4, 9, dtype=torch.long), torch.ones(4, 9, dtype=torch.long)
    batch = collate_pretrain([a, b])
    assert batch["video"].shape == (8, 3, 2, 8, 8) and batch["video"].dtype == torch.uint8
    assert batch["enc_keep"].shape == (8, 5) and batch["dec_keep"].shape == (8, 9)
    assert batch["video"][4:].eq(1).all() and batch["enc_keep"][:4].eq(0).all()
    assert (batch["num_videos"], batch["num_failed"], batch["failed_paths"]) == (2, 1, ["x.mp4"])
    assert batch["index"].tolist() == [3, 5]


def test_collate_labeled_and_test():
    one = sample(torch.zeros(3, 2, 8, 8, dtype=torch.uint8), label=4)
    two = sample(torch.zeros(2, 3, 2, 8, 8, dtype=torch.uint8), label=7, valid=False)
    batch = collate_labeled([one, two])
    assert batch["video"].shape == (3, 3, 2, 8, 8)
    assert batch["label"].tolist() == [4, 7, 7] and batch["valid"].tolist() == [True, False, False]
    assert batch["num_videos"] == 1
    views = collate_test([sample(torch.zeros(6, 3, 2, 8, 8, dtype=torch.uint8), label=1)] * 2)
    assert views["video"].shape == (2, 6, 3, 2, 8, 8) and views["label"].tolist() == [1, 1]


def test_failure_tracker_threshold():
    t = FailureTracker(max_fail_fraction=0.1, min_fail_count=3)
    t.add(10, 2, ["a.mp4", "b.mp4"], ["cannot open", "file not found"])
    t.check()  # 2 failures: below the floor even at 17%
    t.add(40, 0)
    t.add(0, 1, ["c.mp4"], ["decode failed"])
    t.check()  # 3 of 53 = 5.7% ≤ 10%
    with pytest.raises(DataError) as err:
        t.update({"num_videos": 0, "num_failed": 3, "failed_paths": ["d.mp4"] * 3,
                  "failed_reasons": ["x"] * 3})
    msg = str(err.value)
    assert "6 of 56 video reads failed (10.71% > data.max_fail_fraction=0.1)" in msg
    assert "a.mp4: cannot open\n  b.mp4: file not found\n  c.mp4: decode failed" in msg
    assert "giant data validate" in msg
    restored = FailureTracker(0.1, 3)
    restored.load_state_dict(t.state_dict())
    assert (restored.attempts, restored.failed, restored.first) == (56, 6, t.first)


def test_loader_workers_report_failures_to_main_process(synth_videos, corrupt_videos):
    good = read_manifest(synth_videos.train_manifest)
    bad = [VideoEntry(str(corrupt_videos[k])) for k in ("garbage", "truncated", "missing")]
    entries = good[:5] + bad
    ds = PretrainClips(entries, num_frames=4, size=32, sampling_rate=2, num_sample=2, backend="pyav")
    # listed order: the running failure share must not depend on where the shuffle puts the
    # bad files (bad ones first would cross 50% before the good ones are counted)
    sampler = ResumableDistributedSampler(len(ds), 0, 1, seed=0, shuffle=False)
    loader = make_loader(ds, sampler, batch_size=3, num_workers=2, collate_fn=collate_pretrain)
    set_loader_epoch(loader, 0)
    tracker = FailureTracker(max_fail_fraction=0.5, min_fail_count=1)
    videos, seen = 0, []
    for batch in loader:
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape[1:] == (3, 4, 32, 32)
        videos += batch["num_videos"]
        seen += batch["failed_paths"]
        tracker.update(batch)  # 3 bad of 8 listed: under 50%
    assert videos == 8 and tracker.failed >= 3
    assert {e.path for e in bad} <= set(seen)
    strict = FailureTracker(max_fail_fraction=0.1, min_fail_count=2)
    with pytest.raises(DataError, match="video reads failed"):
        for batch in loader:
            strict.update(batch)


def test_loader_epoch_reaches_workers(synth_videos):
    ds = LabeledClips(read_manifest(synth_videos.train_manifest), num_frames=4, size=32,
                      rand_augment="", backend="pyav")
    loader = make_loader(ds, ResumableDistributedSampler(len(ds), shuffle=False), 4, 1,
                         collate_labeled)
    set_loader_epoch(loader, 0)
    first = next(iter(loader))["video"]
    set_loader_epoch(loader, 1)
    second = next(iter(loader))["video"]
    set_loader_epoch(loader, 0)
    assert torch.equal(next(iter(loader))["video"], first) and not torch.equal(first, second)


class _SlowItems(torch.utils.data.Dataset):
    """Item 1 takes `delay` seconds in the worker: a hung decode, in miniature. Item 0 sets
    `first_done`, so the test needs no clock to know the worker is up."""

    def __init__(self, delay: float):
        import torch.multiprocessing as mp

        self.delay, self.first_done = delay, mp.Event()

    def __len__(self):
        return 2

    def __getitem__(self, i):
        if i == 0:
            self.first_done.set()
        else:
            import time

            time.sleep(self.delay)
        return i


def test_loader_timeout_names_the_setting():
    from giant.config import DataConfig

    assert DataConfig().loader_timeout_s == 600.0
    hung = _SlowItems(60.0)  # the rank's SIGTERM ends the worker at the timeout, not after 60 s
    it = iter(make_loader(hung, None, 1, 1, lambda xs: xs, timeout=1))
    # the timeout counts from next(): wait for item 0 first, however long the worker takes to
    # start on a loaded machine
    assert hung.first_done.wait(120)
    assert next(it) == [0]
    with pytest.raises(DataError, match=r"within 1 s \(data.loader_timeout_s=1\)"):
        next(it)
    assert [b for b in make_loader(_SlowItems(0.0), None, 1, 1, lambda xs: xs, timeout=60)] == [[0], [1]]
    with pytest.raises(DataError, match="data.loader_timeout_s=-1: use seconds > 0"):
        make_loader(_SlowItems(0.0), None, 1, 1, lambda xs: xs, timeout=-1)


def test_iterate_with_timeout_errors_converts_only_the_timeout():
    from giant.data import iterate_with_timeout_errors

    def batches(error):
        yield 1
        raise error

    got = iterate_with_timeout_errors(batches(RuntimeError("DataLoader timed out after 7 seconds")), 7)
    assert next(got) == 1
    with pytest.raises(DataError, match=r"within 7 s \(data.loader_timeout_s=7\)"):
        next(got)
    other = iterate_with_timeout_errors(batches(RuntimeError("DataLoader worker exited unexpectedly")))
    assert next(other) == 1
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        next(other)
