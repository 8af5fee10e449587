"""Reconstruction images: original / encoder input / reconstruction, one column per tubelet.

Predictions are per-token normalised (docs/reference.md §2), so they are mapped back to pixels with the
mean and std of the original token, as the official visualisation does. Tokens that are
neither visible nor reconstructed (dual masking) are drawn grey. MAE-ST (model.arch maest)
predicts the sub-sampled target frames, normalised over all channels together; its rows show
those frames.

Shapes: C channels, T frames, H/W pixels, N tokens, K visible, M reconstructed, P values/token.
"""
from __future__ import annotations

import numpy as np
import torch

from giant.config import ModelConfig
from giant.models.mae import patchify, unpatchify
from giant.models.vit import token_grid

GREY = 0.5


def _frames(pix_CTHW: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, int, tuple]:
    """(frames the prediction covers, frames per token, dims its normalisation spans)."""
    if getattr(cfg, "arch", "videomae") == "maest":
        from giant.models.maest import frames_per_token, resolve_maest_config, target_frame_indices

        cfg = resolve_maest_config(cfg)
        idx = target_frame_indices(cfg.num_frames, cfg.pred_t_dim)
        return pix_CTHW[:, idx], frames_per_token(cfg), (1, 2)  # all channels together
    return pix_CTHW, cfg.tubelet_size, (1,)  # per channel


def reconstruction_image(video_uint8_CTHW: torch.Tensor, enc_keep_K: torch.Tensor,
                         dec_keep_M: torch.Tensor, pred_MP: torch.Tensor,
                         model_cfg: ModelConfig, min_size: int = 0) -> np.ndarray:
    """uint8 (3·H, T'·W, 3) grid: rows original, masked input, reconstruction.

    Frames smaller than `min_size` are enlarged by an integer factor (nearest neighbour, so
    token boundaries stay sharp) to be readable in TensorBoard.
    """
    from giant.models import resolve as resolve_model
    cfg = resolve_model(model_cfg)
    grid = token_grid(cfg)
    pix_CTHW, t_size, dims = _frames(video_uint8_CTHW.detach().cpu().float() / 255.0, cfg)
    tok_NQC = patchify(pix_CTHW[None], cfg.patch_size, t_size)[0]
    n = tok_NQC.shape[0]
    vis = torch.zeros(n, dtype=torch.bool)
    vis[enc_keep_K.cpu()] = True
    masked_NQC = torch.where(vis[:, None, None], tok_NQC, torch.full_like(tok_NQC, GREY))

    mu, sd = tok_NQC.mean(dims, keepdim=True), tok_NQC.var(dims, unbiased=True, keepdim=True).sqrt()
    pred_MQC = pred_MP.detach().cpu().float().reshape(len(dec_keep_M), -1, cfg.in_chans)
    dec = dec_keep_M.cpu()
    recon_NQC = masked_NQC.clone()
    recon_NQC[dec] = (pred_MQC * (sd[dec] + 1e-6) + mu[dec]).clamp(0, 1)

    rows = []
    for toks in (tok_NQC, masked_NQC, recon_NQC):
        vid_CTHW = unpatchify(toks.flatten(1)[None], grid, cfg.patch_size, t_size, cfg.in_chans)[0]
        frames = vid_CTHW[:, ::t_size]  # one frame per token slice
        rows.append(torch.cat(list(frames.permute(1, 2, 3, 0)), dim=1))  # H, T'·W, C
    image = torch.cat(rows, dim=0)
    factor = max(1, -(-min_size // cfg.img_size))
    if factor > 1:
        image = image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
