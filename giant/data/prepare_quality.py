"""What preparing costs in picture quality: PSNR of prepared frames against their source (the
tests and scripts/bench/prepare_sweep.py read it; `giant data prepare` itself never decodes twice)."""
from __future__ import annotations

import numpy as np

from giant.data.prepare import KEEP_PIX_FMTS


def window_psnr(src: str, dst: str, indices) -> float:
    """PSNR (dB, RGB, all frames pooled) of `indices` decoded from the prepared file against the
    same frames of the source, scaled to the prepared size the way prepare scales them: the
    loss the encoder adds, which is what a training clip sees."""
    import av

    from giant.data.decode import PyAVReader

    indices = np.asarray(indices)
    with PyAVReader(dst) as reader:
        ours = reader.get_frames(indices).astype(np.float64)
    height, width = ours.shape[1:3]
    wanted = set(int(i) for i in indices)
    ref = {}
    with av.open(src) as container:
        for n, frame in enumerate(container.decode(container.streams.video[0])):
            if n in wanted:
                pix = frame.format.name if frame.format.name in KEEP_PIX_FMTS else "yuv420p"
                small = frame.reformat(width, height, pix, interpolation="AREA")
                ref[n] = small.to_ndarray(format="rgb24")
            if n >= max(wanted):
                break
    theirs = np.stack([ref[int(i)] for i in indices]).astype(np.float64)
    mse = float(np.mean((ours - theirs) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
