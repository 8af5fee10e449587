"""Observability: real TensorBoard event files, JSONL, PNG reconstructions, throughput maths."""
import json

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from giant.config import MaskConfig, ModelConfig
from giant.engine.metrics import MetricsLogger, Throughput, memory_stats
from giant.stages.visualize import reconstruction_image
from giant.masking import MaskGenerator, token_grid
from giant.models.mae import MaskedVideoAutoencoder
from giant.models import resolve as resolve_model


def test_logger_writes_tensorboard_jsonl_and_png(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, log_every=2, progress=False, total_steps=3)
    for step in (1, 2, 3):
        logger.log_step(step, {"loss": 1.0 / step, "lr": 1e-4, "grad_norm": float("inf")})
    png = logger.log_image(3, "recon/train", np.zeros((8, 12, 3), dtype=np.uint8))
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss"] == 0.5 and rows[0]["grad_norm"] == float("inf")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == [1.0, 0.5, np.float32(1 / 3)]
    assert "train/grad_norm" not in acc.Tags()["scalars"]  # non-finite values are not plotted
    assert acc.Tags()["images"] == ["recon/train"]
    assert png.exists() and png.suffix == ".png"


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "x", enabled=False)
    logger.log_step(1, {"loss": 1.0})
    assert logger.log_image(1, "a", np.zeros((2, 2, 3), np.uint8)) is None
    assert not (tmp_path / "x").exists()


def test_throughput_and_memory():
    tp = Throughput(flops_per_clip=2e12, device="cpu", world_size=2)
    out = tp.update(num_clips=10, seconds=2.0)
    assert out["clips_per_s"] == 5.0 and out["tflops"] == 5.0  # 5 clips/s · 2 TF / 2 devices
    assert "mfu" not in out  # CPU peak unknown
    assert memory_stats("cpu")["mem_rss_gib"] > 0


def test_reconstruction_image_with_perfect_prediction():
    cfg = resolve_model(ModelConfig(name="tiny", num_frames=4, img_size=32))
    model = MaskedVideoAutoencoder(cfg)
    video = torch.randint(0, 256, (3, 4, 32, 32), dtype=torch.uint8)
    enc, dec = MaskGenerator(MaskConfig(ratio=0.5, decoder="none"), token_grid(cfg))(torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    normed = ((video.float() / 255 - mean) / std)[None]
    pred = model.target(normed)[0, dec]  # a perfect reconstruction
    img = reconstruction_image(video, enc, dec, pred, cfg)
    assert img.shape == (3 * 32, 2 * 32, 3) and img.dtype == np.uint8
    top, middle, bottom = (img[r:r + 32].astype(int) for r in (0, 32, 64))
    assert np.abs(top - bottom).max() <= 1  # V1 decoder: the masked half reconstructed exactly
    # token n = (t, h, w) of the 2 × 2 × 2 grid is the 16 px square at row h, column t·2 + w
    visible = set(enc.tolist())
    assert len(visible) == 4
    for n in range(8):
        t, h, w = n // 4, n // 2 % 2, n % 2
        rows, cols = slice(16 * h, 16 * h + 16), slice(32 * t + 16 * w, 32 * t + 16 * w + 16)
        want = top[rows, cols] if n in visible else 128  # encoder input: masked tokens grey
        assert np.array_equal(middle[rows, cols], np.broadcast_to(want, (16, 16, 3))), n
    big = reconstruction_image(video, enc, dec, pred, cfg, min_size=100)
    assert big.shape == (4 * 3 * 32, 4 * 2 * 32, 3) and np.array_equal(big[::4, ::4], img)


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    first = MetricsLogger(tmp_path, progress=False)
    for step in (1, 2, 3, 4):  # crashed after step 4; the last checkpoint was step 2
        first.log_step(step, {"loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line cut by the crash
    again = MetricsLogger(tmp_path, progress=False, resume_step=2)
    again.log_step(3, {"loss": 30.0})
    again.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    # a relaunch with no checkpoint at all (the first attempt crashed before saving) starts at 0:
    # none of the crashed attempt's rows may stay in front of the new run's
    fresh = MetricsLogger(tmp_path, progress=False, resume_step=0)
    fresh.log_step(1, {"loss": 100.0})
    fresh.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 100.0)]
