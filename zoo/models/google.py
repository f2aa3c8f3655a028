"""Ballé et al. 2017/2018 and Minnen et al. 2018 architectures, CompressAI-compatible.

    x ── g_a ──> y ── h_a ──> z ──[EB]──> z_hat ── h_s ──> (scales[, means]) ─┐
                 └──────────────────────────[GC]─────────────────────────> y_hat ── g_s ──> x_hat

bmshj2018-factorized stops at y with a factorized prior (EB); mbt2018 adds a causal context model on y_hat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.entropy import EntropyBottleneck, GaussianConditional, crc_indexes
from zoo.layers import GDN, MaskedConv2d, conv, deconv
from zoo.models.base import CompressionModel, ForwardOutput, LatentStreams


def analysis(n: int, m: int, act: type[nn.Module] | None = None) -> nn.Sequential:
    a = (lambda: act()) if act else None
    return nn.Sequential(
        conv(3, n),
        a() if a else GDN(n),
        conv(n, n),
        a() if a else GDN(n),
        conv(n, n),
        a() if a else GDN(n),
        conv(n, m),
    )


def synthesis(n: int, m: int, act: type[nn.Module] | None = None) -> nn.Sequential:
    a = (lambda: act()) if act else None
    return nn.Sequential(
        deconv(m, n),
        a() if a else GDN(n, inverse=True),
        deconv(n, n),
        a() if a else GDN(n, inverse=True),
        deconv(n, n),
        a() if a else GDN(n, inverse=True),
        deconv(n, 3),
    )


class FactorizedPrior(CompressionModel):
    """bmshj2018-factorized: y coded with a per-channel factorized density."""

    downsample = 16
    latent_names = ("y",)

    def __init__(self, N: int = 128, M: int = 192, relu: bool = False):
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.g_a = analysis(N, M, nn.ReLU if relu else None)
        self.g_s = synthesis(N, M, nn.ReLU if relu else None)
        self.entropy_bottleneck = EntropyBottleneck(M)

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        y_hat, y_lik = self.entropy_bottleneck(y)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik})

    def _compress(self, x: Tensor) -> list[LatentStreams]:
        y = self.g_a(x)
        strings, crc = self.entropy_bottleneck.compress(y)
        hw = (int(y.shape[-2]), int(y.shape[-1]))
        return [LatentStreams((("y", s),), hw, crc) for s in strings]

    def _decompress(self, streams: Sequence[LatentStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        y_hat = self.entropy_bottleneck.decompress([s.stream("y") for s in streams], latent_hw)
        crc = self.entropy_bottleneck.index_crc(latent_hw)
        return self.g_s(y_hat).clamp_(0, 1), [crc] * len(streams)


class FactorizedPriorReLU(FactorizedPrior):
    """bmshj2018-factorized-relu: ReLU instead of GDN in the transforms."""

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M, relu=True)


class ScaleHyperprior(CompressionModel):
    """bmshj2018-hyperprior: a hyperprior z predicts the scale of each element of y."""

    downsample = 64
    latent_names = ("z", "y")

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.g_a = analysis(N, M)
        self.g_s = synthesis(N, M)
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.ReLU(inplace=True), conv(N, N), nn.ReLU(inplace=True), conv(N, N))
        self.h_s = nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N),
            nn.ReLU(inplace=True),
            conv(N, M, 3, 1),
            nn.ReLU(inplace=True),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    def hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(torch.abs(y))

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        z = self.hyper_analysis(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        scales = self.h_s(z_hat)
        y_hat, y_lik = self.gaussian_conditional(y, scales)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _code_z(self, y: Tensor) -> tuple[list[bytes], int, Tensor]:
        z = self.hyper_analysis(y)
        z_strings, z_crc = self.entropy_bottleneck.compress(z)
        # The decoder only sees z_hat from the stream: condition y on exactly that.
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        return z_strings, z_crc, z_hat

    def _compress(self, x: Tensor) -> list[LatentStreams]:
        y = self.g_a(x)
        z_strings, z_crc, z_hat = self._code_z(y)
        scales = self.entropy_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(y, indexes)
        hw = (int(z_hat.shape[-2]), int(z_hat.shape[-1]))
        return [
            LatentStreams((("z", z_strings[i]), ("y", y_strings[i])), hw, crc_indexes(indexes[i], z_crc))
            for i in range(x.shape[0])
        ]

    def _decompress(self, streams: Sequence[LatentStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        z_hat = self.entropy_bottleneck.decompress([s.stream("z") for s in streams], latent_hw)
        scales = self.entropy_params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress([s.stream("y") for s in streams], indexes)
        return self.g_s(y_hat.to(z_hat.dtype)).clamp_(0, 1), self._checksums(indexes, latent_hw)

    def _checksums(self, indexes: Tensor, latent_hw: tuple[int, int]) -> list[int]:
        z_crc = self.entropy_bottleneck.index_crc(latent_hw)
        return [crc_indexes(indexes[i], z_crc) for i in range(indexes.shape[0])]


class MeanScaleHyperprior(ScaleHyperprior):
    """mbt2018-mean: the hyperprior predicts a mean and a scale for each element of y."""

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N)
        )
        self.h_s = nn.Sequential(
            deconv(N, M),
            nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2),
            nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, 3, 1),
        )

    def hyper_analysis(self, y: Tensor) -> Tensor:
        return self.h_a(y)

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        z = self.hyper_analysis(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        scales, means = self.h_s(z_hat).chunk(2, 1)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means=means)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _compress(self, x: Tensor) -> list[LatentStreams]:
        y = self.g_a(x)
        z_strings, z_crc, z_hat = self._code_z(y)
        scales, means = self.entropy_params(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means)
        hw = (int(z_hat.shape[-2]), int(z_hat.shape[-1]))
        return [
            LatentStreams((("z", z_strings[i]), ("y", y_strings[i])), hw, crc_indexes(indexes[i], z_crc))
            for i in range(x.shape[0])
        ]

    def _decompress(self, streams: Sequence[LatentStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        z_hat = self.entropy_bottleneck.decompress([s.stream("z") for s in streams], latent_hw)
        scales, means = self.entropy_params(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress([s.stream("y") for s in streams], indexes, means=means)
        return self.g_s(y_hat.to(z_hat.dtype)).clamp_(0, 1), self._checksums(indexes, latent_hw)


class JointAutoregressiveHierarchicalPriors(MeanScaleHyperprior):
    """mbt2018: hyperprior plus a causal 5x5 context model on y_hat, combined by 1x1 convolutions.

    Coding order is raster order over spatial positions, all channels of a position at once (as in
    CompressAI, so its streams and ours decode the same way). Each position costs one small network
    evaluation; the rANS decoder object keeps its state across positions.
    """

    context_size = 5

    def __init__(self, N: int = 192, M: int = 192):
        super().__init__(N, M)  # transforms and hyperprior as mbt2018-mean
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 12 // 3, M * 10 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, M * 6 // 3, 1),
        )
        self.context_prediction = MaskedConv2d(M, 2 * M, kernel_size=5, padding=2, stride=1)

    @property
    def latent_stride(self) -> int:
        """y is this many times larger than z."""
        return 4

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        z = self.hyper_analysis(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        params = self.h_s(z_hat)
        y_hat = self.gaussian_conditional.quantize(y, "noise" if self.training else "dequantize")
        ctx = self.context_prediction(y_hat)
        scales, means = self.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        _, y_lik = self.gaussian_conditional(y, scales, means=means)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def context_step(self, y_crop: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Scales and means at one position from its causal neighbourhood (a 5x5 crop of the padded
        y_hat) and the hyperprior's params there, in float64 like `entropy_params`."""
        cp = self.f64("context_prediction")
        assert isinstance(cp, MaskedConv2d)
        ctx = F.conv2d(y_crop.double(), cp.masked_weight(), cp.bias)
        gp = self.f64("entropy_parameters")(torch.cat((params.double(), ctx), dim=1))
        scales, means = gp.flatten(1).chunk(2, 1)
        return scales, means

    def _raster(self, y_hat: Tensor, params: Tensor) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Quantize one image's latent in raster order, as the coder does: `y_hat` is y padded by
        context_size // 2 and is overwritten position by position with round(y - mean) + mean, so each
        context sees exactly what the decoder will. Yields (symbols, table indexes) per position."""
        k, p = self.context_size, self.context_size // 2
        height, width = y_hat.shape[-2] - 2 * p, y_hat.shape[-1] - 2 * p
        for h in range(height):
            for w in range(width):
                crop = y_hat[:, :, h : h + k, w : w + k]
                scales, means = self.context_step(crop, params[:, :, h : h + 1, w : w + 1])
                indexes = self.gaussian_conditional.build_indexes(scales)
                symbols = self.gaussian_conditional.quantize(crop[:, :, p, p], "symbols", means)
                y_hat[:, :, h + p, w + p] = symbols + means
                yield symbols.reshape(-1).numpy(), indexes.reshape(-1).numpy()

    def _compress(self, x: Tensor) -> list[LatentStreams]:
        from zoo.coder import Encoder

        y = self.g_a(x)
        z_strings, z_crc, z_hat = self._code_z(y)
        params = self.entropy_params(z_hat)
        p = self.context_size // 2
        tables = self.gaussian_conditional.tables()
        out = []
        for i in range(x.shape[0]):
            encoder, crc = Encoder(), z_crc
            for symbols, idx in self._raster(F.pad(y[i : i + 1].double(), (p, p, p, p)), params[i : i + 1]):
                encoder.push(symbols, idx, tables)
                crc = crc_indexes(idx, crc)
            hw = (int(z_hat.shape[-2]), int(z_hat.shape[-1]))
            out.append(LatentStreams((("z", z_strings[i]), ("y", encoder.flush())), hw, crc))
        return out

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> float:
        """The forward pass estimates y's rate from round(y) contexts, a parallel stand-in for the coder's
        sequential round(y - mean) + mean; here the likelihoods are those of the latent the coder
        actually produces (sequential quantization, then one parallel pass of the context model)."""
        y = self.g_a(x)
        z_hat, z_lik = self.entropy_bottleneck(self.hyper_analysis(y))
        params = self.entropy_params(z_hat)
        p = self.context_size // 2
        y_hat = F.pad(y.double(), (p, p, p, p))
        for i in range(x.shape[0]):
            for _ in self._raster(y_hat[i : i + 1], params[i : i + 1]):
                pass
        y_hat = y_hat[:, :, p:-p, p:-p]
        cp = self.f64("context_prediction")
        assert isinstance(cp, MaskedConv2d)
        ctx = F.conv2d(y_hat, cp.masked_weight(), cp.bias, padding=p)
        scales, means = self.f64("entropy_parameters")(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        _, y_lik = self.gaussian_conditional(y_hat, scales, means=means)
        return float(-(torch.log2(y_lik).sum() + torch.log2(z_lik).sum()))

    def _decompress(self, streams: Sequence[LatentStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        from zoo.coder import Decoder

        z_hat = self.entropy_bottleneck.decompress([s.stream("z") for s in streams], latent_hw)
        params = self.entropy_params(z_hat)
        k, p = self.context_size, self.context_size // 2
        height, width = latent_hw[0] * self.latent_stride, latent_hw[1] * self.latent_stride
        tables = self.gaussian_conditional.tables()
        z_crc = self.entropy_bottleneck.index_crc(latent_hw)
        y_hats, checksums = [], []
        for i, s in enumerate(streams):
            y_hat = torch.zeros((1, self.M, height + 2 * p, width + 2 * p), dtype=torch.float64)
            decoder, crc = Decoder(s.stream("y")), z_crc
            for h in range(height):
                for w in range(width):
                    crop = y_hat[:, :, h : h + k, w : w + k]
                    scales, means = self.context_step(crop, params[i : i + 1, :, h : h + 1, w : w + 1])
                    idx = self.gaussian_conditional.build_indexes(scales).reshape(-1).numpy()
                    crc = crc_indexes(idx, crc)
                    symbols = torch.from_numpy(decoder.decode(idx, tables)).reshape(1, -1)
                    y_hat[:, :, h + p, w + p] = symbols.to(means.dtype) + means
            checksums.append(crc)
            y_hats.append(y_hat[:, :, p : p + height, p : p + width])
        return self.g_s(torch.cat(y_hats).to(z_hat.dtype)).clamp_(0, 1), checksums
