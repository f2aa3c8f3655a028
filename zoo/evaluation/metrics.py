"""Image quality metrics on 8-bit RGB images, as users who save PNGs see them."""

from __future__ import annotations

import math

import numpy as np
import torch


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of two uint8 (H, W, 3) images, peak 255."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch_msssim, 5 scales, 11-pixel window) of two uint8 RGB images; NaN when the image is
    too small for 5 scales (shorter side <= 160)."""
    from pytorch_msssim import ms_ssim

    if min(a.shape[:2]) <= 160:
        return math.nan
    ta = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(np.array(b, copy=True)).permute(2, 0, 1)[None].float()
    return float(ms_ssim(ta, tb, data_range=255.0))


def bpp(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)
