"""Encode-time latent refinement: the encoder searches for latents that code to a better rate–distortion cost
than the analysis transform's, by stochastic Gumbel annealing (SGA); the decoder, the entry and the format stay.

Yang, Bamler & Mandt 2020 ("Improving Inference for Neural Image Compression"): y and z of one image are
optimized with Adam on R + λD, where rounding is replaced by a sample between floor and ceil whose
probabilities sharpen as a temperature anneals to zero. The models expose what this needs
(`CompressionModel.analyze`, `relaxed_forward`, `compress_latents`); whether the refined latents are kept is
decided by their real coded bytes and decoded pixels (`zoo.codec.Codec.compress`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.compressed import EntryId
from zoo.errors import InputError
from zoo.models.base import CompressionModel, Quantizer
from zoo.precision import fast_bf16


@dataclass(frozen=True)
class EffortLevel:
    """One encoder effort: Adam steps of SGA on the latents, the learning rate, and the temperature range."""

    steps: int
    lr: float = 0.0
    tau_start: float = 0.5
    tau_end: float = 0.05


# Effort 0 is the analysis transform alone (byte-identical to an encoder without refinement). Seconds per
# megapixel on a 2-core CPU are in docs/effort.md (benchmarks/effort.py measures them).
EFFORTS: dict[int, EffortLevel] = {
    0: EffortLevel(0),
    1: EffortLevel(20, lr=2e-2),
    2: EffortLevel(100, lr=1e-2),
    3: EffortLevel(400, lr=5e-3),
}
MAX_EFFORT = max(EFFORTS)


def check_effort(effort: object) -> int:
    """An effort level as an int in 0..MAX_EFFORT, or InputError naming the levels."""
    if isinstance(effort, bool) or not isinstance(effort, int) or effort not in EFFORTS:
        raise InputError(f"effort must be one of {', '.join(map(str, EFFORTS))}, not {effort!r}")
    return effort


@dataclass(frozen=True)
class Objective:
    """The entry's rate–distortion cost in bits per pixel: bpp + λ·255²·MSE, or bpp + λ·(1 − MS-SSIM),
    the loss the entry was trained with (`zoo.train.losses`)."""

    lmbda: float
    metric: str = "mse"

    def distortion(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """λ-weighted distortion of each image of a batch, (B,), on float images in [0, 1]."""
        if self.metric == "mse":
            return self.lmbda * 255**2 * ((x_hat - x) ** 2).mean(dim=(1, 2, 3))
        from pytorch_msssim import ms_ssim

        h, w = x.shape[-2:]
        sim = ms_ssim(x_hat, x, data_range=1.0, size_average=False, win_size=ms_ssim_window(h, w))
        return self.lmbda * (1 - sim)

    def differentiable_on(self, height: int, width: int) -> bool:
        """Whether the distortion is defined on an image of this size (MS-SSIM's five scales need > 32 px)."""
        return self.metric == "mse" or ms_ssim_window(height, width) > 0


def ms_ssim_window(height: int, width: int) -> int:
    """The window `zoo.train.losses` uses for MS-SSIM at this size (11, or 3 on small crops), 0 if none fits."""
    side = min(height, width)
    return 11 if side > 160 else 3 if side > 32 else 0


def entry_objective(entry: EntryId) -> Objective:
    """The objective of a codec's entry: the λ of its quality, or of its level for a variable-rate entry (the
    log-linear ladder, fractional levels included), in its metric."""
    from zoo.registry import get_arch

    spec = get_arch(entry.arch)
    point = entry.level if entry.level is not None else entry.quality
    return Objective(spec.lmbda(point, entry.metric), entry.metric)


def sga(tau: float, generator: torch.Generator) -> Quantizer:
    """Stochastic Gumbel annealing at temperature `tau`: each value becomes a soft mix of its floor and ceil,
    the nearer one more likely (logits -atanh(distance) / tau), sampled by Gumbel-softmax at `tau`."""

    def quantize(v: Tensor) -> Tensor:
        floor = torch.floor(v)
        frac = v - floor
        eps = 1e-5
        logits = (
            torch.stack((-torch.atanh(frac.clamp(eps, 1 - eps)), -torch.atanh((1 - frac).clamp(eps, 1 - eps))), dim=-1)
            / tau
        )
        uniform = torch.rand(logits.shape, generator=generator, device=generator.device, dtype=logits.dtype)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        weights = torch.softmax((logits + gumbel) / tau, dim=-1)
        return floor + weights[..., 1]

    return quantize


def refine_latents(
    model: CompressionModel,
    x: Tensor,
    size: tuple[int, int],
    objective: Objective,
    level: EffortLevel,
    *,
    seed: int = 0,
    bf16: bool | None = None,
) -> dict[str, Tensor]:
    """Latents of the padded batch `x` refined for `objective` on each image's top-left `size` (the real
    pixels; padding costs rate only). Deterministic given `seed` on one device and thread count. The model's
    weights are not touched and get no gradients.

    The search runs under bfloat16 autocast where the hardware has it (`bf16=None`: `zoo.precision.fast_bf16`),
    with the model's float32 islands (entropy models, GDN's elementwise part, the pixel convolutions) kept,
    and the latents channels-last: 1.56x faster a step on an AVX-512 BF16 CPU for the same loss to 4 digits
    (docs/effort.md). Only the search direction is approximate: the coded streams are computed in float32 and
    judged by their real bytes and pixels."""
    h, w = size
    with torch.no_grad():
        start = model.analyze(x)
    if level.steps == 0 or not objective.differentiable_on(h, w):
        return start
    if bf16 is None:
        bf16 = fast_bf16(x.device)
    latents = {name: channels_last(t.detach().clone().float()).requires_grad_(True) for name, t in start.items()}
    params = list(latents.values())
    optimizer = torch.optim.Adam(params, lr=level.lr)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(int(seed))
    target = x[..., :h, :w]
    pixels = h * w
    for step in range(level.steps):
        t = step / max(1, level.steps - 1)
        tau = level.tau_start * math.exp(t * math.log(level.tau_end / level.tau_start))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.relaxed_forward(latents, sga(tau, generator))
        bits = sum(-torch.log2(lik.float()).flatten(1).sum(1) for lik in out.likelihoods.values())
        assert out.x_hat is not None  # relaxed_forward always synthesizes
        x_hat = out.x_hat[..., :h, :w].float().clamp(0, 1)
        loss = (bits / pixels + objective.distortion(x_hat, target)).sum()
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
    return {name: t.detach().contiguous() for name, t in latents.items()}


def channels_last(t: Tensor) -> Tensor:
    """A 4-D latent in channels-last memory order (the convolutions it feeds then run channels-last without
    touching the model's weights); other tensors as they are."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
