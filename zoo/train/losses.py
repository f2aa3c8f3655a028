"""Rate–distortion losses: λ·255²·MSE + bpp, or λ·(1 − MS-SSIM) + bpp (MS-SSIM from pytorch_msssim)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.models.base import ForwardOutput
from zoo.points import check_metric


@dataclass
class LossTerms:
    loss: Tensor
    bpp: Tensor
    mse: Tensor
    per_image: Tensor  # loss of each batch item, for hard-sample statistics

    @property
    def psnr(self) -> float:
        m = self.mse.item()
        return math.inf if m == 0 else 10 * math.log10(1 / m)


class RateDistortionLoss:
    def __init__(self, lmbda: float, metric: str = "mse"):
        check_metric(metric)
        self.lmbda, self.metric = float(lmbda), metric

    def __call__(self, out: ForwardOutput, x: Tensor, lmbda: Tensor | None = None) -> LossTerms:
        """`lmbda`: one λ per example (variable-rate training); by default the loss's own λ for all."""
        n, _, h, w = x.shape
        bits = torch.stack(
            [torch.log(lik).sum(dim=tuple(range(1, lik.dim()))) for lik in out.likelihoods.values()]
        ).sum(0)
        bpp_each = bits / (-math.log(2) * h * w)
        if out.x_hat is None:  # a rate-only step (`rate_only`): the distortion is constant in what trains
            nan = torch.full_like(bpp_each, math.nan)
            return LossTerms(bpp_each.mean(), bpp_each.mean(), nan.mean(), bpp_each.detach())
        x_hat = out.x_hat.float()
        mse_each = ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
        lam = self.lmbda if lmbda is None else lmbda.to(x_hat.dtype)
        if self.metric == "mse":
            dist_each = lam * 255**2 * mse_each
        else:
            from pytorch_msssim import ms_ssim

            win = 11 if min(h, w) > 160 else 3  # small crops: smaller window keeps 5 scales defined
            sim = ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0, size_average=False, win_size=win)
            dist_each = lam * (1 - sim)
        per_image = dist_each + bpp_each
        return LossTerms(per_image.mean(), bpp_each.mean(), mse_each.mean(), per_image.detach())
