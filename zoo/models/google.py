"""Ballé et al. 2017/2018 and Minnen et al. 2018 architectures, CompressAI-compatible.

    x ── g_a ──> y ── h_a ──> z ──[EB]──> z_hat ── h_s ──> (scales[, means]) ─┐
                 └──────────────────────────[GC]─────────────────────────> y_hat ── g_s ──> x_hat

bmshj2018-factorized stops at y with a factorized prior (EB); mbt2018 adds a causal context model on y_hat.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import Tensor, nn

from zoo.compressed import TileStreams
from zoo.entropy import EntropyBottleneck, GaussianConditional, crc_indexes
from zoo.errors import BitstreamError
from zoo.layers import GDN, MaskedConv2d, conv, deconv, float32_under_autocast, pixel_conv, pixel_deconv
from zoo.models.base import CompressionModel, ForwardOutput, Quantizer, check_order, coded, relaxed_factorized

if TYPE_CHECKING:
    from zoo.coder import Decoder

# What the wavefront coder's products take: a NumPy array on the CPU, a tensor on another device (`_Wavefronts`)
Rows = Any
NUMPY_PRODUCTS = True  # False: the CPU runs them in PyTorch too (the other devices' path; the tests compare the two)
WavefrontGraphs = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]


def analysis(n: int, m: int, act: type[nn.Module] | None = None) -> nn.Sequential:
    a = (lambda: act()) if act else None
    return nn.Sequential(
        pixel_conv(3, n),
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
        pixel_deconv(n, 3),
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

    def analyze(self, x: Tensor) -> dict[str, Tensor]:
        return {"y": self.g_a(x)}

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        y_hat, y_lik = relaxed_factorized(self.entropy_bottleneck, latents["y"], quantize)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik})

    def _code(self, x: Tensor, latents: dict[str, Tensor]) -> list[TileStreams]:
        y = latents["y"]
        strings, crc = self.entropy_bottleneck.compress(y)
        hw = (int(y.shape[-2]), int(y.shape[-1]))
        return [coded(x, (("y", s),), hw, crc) for s in strings]

    def _decompress(self, streams: Sequence[TileStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
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

    def analyze(self, x: Tensor) -> dict[str, Tensor]:
        y = self.g_a(x)
        return {"z": self.hyper_analysis(y), "y": y}

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        z_hat, z_lik = relaxed_factorized(self.entropy_bottleneck, latents["z"], quantize)
        scales = self.h_s(z_hat)
        y_hat = quantize(latents["y"])
        y_lik = self.gaussian_conditional.likelihood(y_hat, scales)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _code_z(self, z: Tensor) -> tuple[list[bytes], int, Tensor]:
        z_strings, z_crc = self.entropy_bottleneck.compress(z)
        # The decoder only sees z_hat from the stream: condition y on exactly that.
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        return z_strings, z_crc, z_hat

    def _scales_means(self, z_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        """y's scales (and means, where the hyperprior predicts them) from z_hat, on the coding path."""
        return self.entropy_params(z_hat), None

    def _code(self, x: Tensor, latents: dict[str, Tensor]) -> list[TileStreams]:
        z_strings, z_crc, z_hat = self._code_z(latents["z"])
        scales, means = self._scales_means(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_strings = self.gaussian_conditional.compress(latents["y"], indexes, means=means)
        hw = (int(z_hat.shape[-2]), int(z_hat.shape[-1]))
        return [
            coded(x, (("z", z_strings[i]), ("y", y_strings[i])), hw, crc_indexes(indexes[i], z_crc))
            for i in range(x.shape[0])
        ]

    def _decompress(self, streams: Sequence[TileStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        z_hat = self.entropy_bottleneck.decompress([s.stream("z") for s in streams], latent_hw)
        scales, means = self._scales_means(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress([s.stream("y") for s in streams], indexes, means=means)
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

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        z_hat, z_lik = relaxed_factorized(self.entropy_bottleneck, latents["z"], quantize)
        scales, means = self.h_s(z_hat).chunk(2, 1)
        y_hat = quantize(latents["y"] - means) + means
        y_lik = self.gaussian_conditional.likelihood(y_hat, scales, means)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _scales_means(self, z_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        scales, means = self.entropy_params(z_hat).chunk(2, 1)
        return scales, means


class JointAutoregressiveHierarchicalPriors(MeanScaleHyperprior):
    """mbt2018: hyperprior plus a causal 5x5 context model on y_hat, combined by 1x1 convolutions.

    The context of position (h, w) is y_hat at rows h-2..h-1 (columns w-2..w+2) and at row h (columns
    w-2..w-1). Every position on the wavefront 3h + w = t has its whole context on earlier wavefronts, so
    the coder takes one wavefront per step (all its positions and channels at once): 3H + W - 2 steps
    instead of H * W, the same model and the same symbols as raster order. Symbols in the y stream:

        order="wavefront" (bitstream format 2): t ascending; within a wavefront h ascending; a position's
                          channels in channel order
        order="raster"    (format 1, and CompressAI): positions in raster order, channels in channel order

    Scales and means come from float64 copies of the context and entropy-parameter networks (see
    `CompressionModel.entropy_params`), on the parameters' device; only the coder runs on the CPU.
    """

    context_size = 5
    # Where another backend runs the context networks as graphs (`zoo.export.ort_backend.onnx_everywhere`), it
    # sets (context, entropy parameters) here: context maps a wavefront's k x k neighbourhoods of y_hat
    # (K, M, k, k) to ctx (K, 2M, 1, 1), entropy parameters maps (params, ctx) to scales then means, (K, 4M, 1, 1).
    # None: the wavefront coder computes them as products of the float64 weights.
    wavefront_graphs: WavefrontGraphs | None = None
    # Set by the trainer while only the context parts train (`zoo.train.trainer.rate_only_parts`): the training
    # forward skips g_s and returns x_hat None, since the reconstruction (from y + noise) does not depend on
    # them and its distortion adds nothing to their gradient.
    rate_only = False

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

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        z = self.hyper_analysis(y)
        z_hat, z_lik = self.entropy_bottleneck(z)
        params = self.h_s(z_hat)
        y_hat = self.gaussian_conditional.quantize(y, "noise" if self.training else "dequantize")
        scales, means = self.context_params(params, y_hat)
        _, y_lik = self.gaussian_conditional(y, scales, means=means)
        x_hat = None if self.rate_only and self.training else self.g_s(y_hat)
        return ForwardOutput(x_hat, {"y": y_lik, "z": z_lik})

    @float32_under_autocast
    def context_params(self, params: Tensor, y_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) from the hyperprior's params and the context of y_hat, as the training forward
        computes them: in float32 even under bfloat16 autocast, since means are read to a fraction of a
        quantization bin (and a grown model carries them on an offset, `zoo.train.grow`)."""
        ctx = self.context_prediction(y_hat)
        scales, means = self.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        return scales, means

    # -- raster order (format 1) ------------------------------------------------------------------
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
        """Quantize one image's latent in raster order, as the format-1 coder does: `y_hat` is y padded
        by context_size // 2 and is overwritten position by position with round(y - mean) + mean, so each
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
                yield symbols.reshape(-1).cpu().numpy(), indexes.reshape(-1).cpu().numpy()

    def _decode_raster(self, data: bytes, params: Tensor, crc: int) -> tuple[Tensor, int]:
        from zoo.coder import Decoder

        k, p = self.context_size, self.context_size // 2
        height, width = params.shape[-2:]
        tables = self.gaussian_conditional.tables()
        y_hat = params.new_zeros((1, self.M, height + 2 * p, width + 2 * p), dtype=torch.float64)
        decoder = Decoder(data)
        with one_thread():
            for h in range(height):
                for w in range(width):
                    crop = y_hat[:, :, h : h + k, w : w + k]
                    scales, means = self.context_step(crop, params[:, :, h : h + 1, w : w + 1])
                    idx = self.gaussian_conditional.build_indexes(scales).reshape(-1).cpu().numpy()
                    crc = crc_indexes(idx, crc)
                    symbols = torch.from_numpy(decoder.decode(idx, tables)).reshape(1, -1).to(means.device)
                    y_hat[:, :, h + p, w + p] = symbols.to(means.dtype) + means
        _check_finished(decoder)
        return y_hat[:, :, p : p + height, p : p + width], crc

    # -- wavefront order (format 2) ---------------------------------------------------------------
    def _wavefront_coder(self, params: Tensor) -> _Wavefronts:
        return _Wavefronts(self, params)

    def _quantize(self, y: Tensor, params: Tensor, order: str) -> tuple[Tensor, list[tuple[np.ndarray, np.ndarray]]]:
        """One image's y_hat as the coder makes it, and the (symbols, table indexes) in coding order."""
        p = self.context_size // 2
        if order == "raster":
            y_hat = F.pad(y.double(), (p, p, p, p))
            with one_thread():
                steps = list(self._raster(y_hat, params))
            return y_hat[:, :, p:-p, p:-p], steps
        check_order(order)
        return self._wavefront_coder(params).quantize(y)

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        """The coder's y_hat is round(y - mean) + mean with each mean from the context of the y_hat coded
        before it, a sequential fixed point; here the context is that of quantize(y), one parallel pass as in
        training, and y is then quantized around the means it gives (the real file decides in the end)."""
        z_hat, z_lik = relaxed_factorized(self.entropy_bottleneck, latents["z"], quantize)
        params = self.h_s(z_hat)
        y = latents["y"]
        scales, means = self.context_params(params, quantize(y))
        y_hat = quantize(y - means) + means
        y_lik = self.gaussian_conditional.likelihood(y_hat, scales, means)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _code(self, x: Tensor, latents: dict[str, Tensor]) -> list[TileStreams]:
        return self._code_ordered(x, latents, "wavefront")

    def _code_in_order(self, x: Tensor, latents: dict[str, Tensor], order: str) -> list[TileStreams]:
        return self._code_ordered(x, latents, order)

    def _compress_ordered(self, x: Tensor, order: str) -> list[TileStreams]:
        return self._code_ordered(x, self.analyze(x), order)

    def _code_ordered(self, x: Tensor, latents: dict[str, Tensor], order: str) -> list[TileStreams]:
        from zoo.coder import Encoder

        y = latents["y"]
        z_strings, z_crc, z_hat = self._code_z(latents["z"])
        params = self.entropy_params(z_hat)
        tables = self.gaussian_conditional.tables()
        out = []
        for i in range(x.shape[0]):
            encoder, crc = Encoder(), z_crc
            for symbols, idx in self._quantize(y[i : i + 1], params[i : i + 1], order)[1]:
                encoder.push(symbols, idx, tables)
                crc = crc_indexes(idx, crc)
            hw = (int(z_hat.shape[-2]), int(z_hat.shape[-1]))
            out.append(coded(x, (("z", z_strings[i]), ("y", encoder.flush())), hw, crc))
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
        y_hat = torch.cat([self._quantize(y[i : i + 1], params[i : i + 1], "wavefront")[0] for i in range(x.shape[0])])
        cp = self.f64("context_prediction")
        assert isinstance(cp, MaskedConv2d)
        ctx = F.conv2d(y_hat, cp.masked_weight(), cp.bias, padding=p)
        scales, means = self.f64("entropy_parameters")(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        _, y_lik = self.gaussian_conditional(y_hat, scales, means=means)
        return float(-(torch.log2(y_lik).sum() + torch.log2(z_lik).sum()))

    def _decompress(
        self, streams: Sequence[TileStreams], latent_hw: tuple[int, int], order: str = "wavefront"
    ) -> tuple[Tensor, list[int]]:
        check_order(order)
        z_hat = self.entropy_bottleneck.decompress([s.stream("z") for s in streams], latent_hw)
        params = self.entropy_params(z_hat)
        z_crc = self.entropy_bottleneck.index_crc(latent_hw)
        y_hats, checksums = [], []
        for i, s in enumerate(streams):
            if order == "raster":
                y_hat, crc = self._decode_raster(s.stream("y"), params[i : i + 1], z_crc)
            else:
                y_hat, crc = self._wavefront_coder(params[i : i + 1]).decode(s.stream("y"), z_crc)
            checksums.append(crc)
            y_hats.append(y_hat)
        return self.g_s(torch.cat(y_hats).to(z_hat.dtype)).clamp_(0, 1), checksums

    def _decompress_in_order(
        self, streams: Sequence[TileStreams], latent_hw: tuple[int, int], order: str
    ) -> tuple[Tensor, list[int]]:
        return self._decompress(streams, latent_hw, order)

    def _compress_in_order(self, x: Tensor, order: str) -> list[TileStreams]:
        # The default order through the plain signature, which subclasses may override (variable-rate guards)
        return self._compress(x) if order == "wavefront" else self._compress_ordered(x, order)


class _Wavefronts:
    """Codes one image's y wavefront by wavefront (see `JointAutoregressiveHierarchicalPriors`).

    y_hat is kept position-major, (H + 4) * (W + 4) rows of M channels (zero padding around it), so a
    wavefront's contexts are one row gather of the 12 causal taps, and the context model is one matrix
    product over them: the masked convolution restricted to the positions being coded. The entropy
    parameters are 1x1 convolutions, i.e. matrix products over the same rows; the hyperprior's share of
    the first (its input columns) is computed once for every position before the loop. All in float64,
    with the weights stored (in, out) so each step is a plain product.

    On the CPU these products run in NumPy, on views of the same float64 weights: its BLAS does products of a
    few rows by a few MB of weights in about two thirds of PyTorch's time (`benchmarks/autoregressive.py`), and
    it is held to one thread like the rest of the loop (`one_thread`). On another device they run in PyTorch.
    Sums in another order than one product over cat(params, ctx) change only the last bits of a mean, which the
    float64 margin absorbs: streams and pixels on Kodak are byte-identical to those of earlier versions, and
    encoder and decoder run the same steps.
    """

    def __init__(self, model: JointAutoregressiveHierarchicalPriors, params: Tensor):
        cp = model.f64("context_prediction")
        assert isinstance(cp, MaskedConv2d) and cp.bias is not None
        k = model.context_size
        p = k // 2
        self.gc, self.M = model.gaussian_conditional, model.M
        self.height, self.width = int(params.shape[-2]), int(params.shape[-1])
        self.device = params.device
        self.padded_width = self.width + 2 * p
        mask = cp.mask[0, 0].cpu()
        taps = [(dy, dx) for dy in range(k) for dx in range(k) if mask[dy, dx] != 0]
        if any(dy > p or (dy == p and dx >= p) for dy, dx in taps):
            raise ValueError("wavefront coding needs a causal (type A) context mask")
        self.graphs, self.context_size = model.wavefront_graphs, k
        self.host = self.graphs is None and self.device.type == "cpu" and NUMPY_PRODUCTS
        self.params: Tensor | None = None
        hyper = params[0].detach().double().flatten(1).t()  # (H * W, 2M)
        if self.graphs is not None:
            # ONNX Runtime graphs (onnx_everywhere): they take whole k x k neighbourhoods (their mask is in the
            # weights) and cat(params, ctx) as the exported entropy_parameters does; no torch network runs
            taps = [(dy, dx) for dy in range(k) for dx in range(k)]
            self.params = hyper.contiguous()
        else:
            ctx_weight, ctx_bias = _context_weights(cp, taps)
            (first, first_bias, self.first_slope), *layers = _entropy_layers(model.f64("entropy_parameters"))
            self.ctx_weight, self.ctx_bias = self._array(ctx_weight), self._array(ctx_bias)
            # The first layer takes cat(params, ctx): its params rows, for all positions at once
            self.hyper = self._array(_affine(hyper, first[: hyper.shape[1]], first_bias))
            self.first_ctx_weight = self._array(first[hyper.shape[1] :])
            self.layers = [(self._array(w), None if b is None else self._array(b), s) for w, b, s in layers]
        self.tap_offsets = np.array([dy * self.padded_width + dx for dy, dx in taps], dtype=np.int64)
        y_hat = params.new_zeros(((self.height + 2 * p) * self.padded_width, self.M), dtype=torch.float64)
        self.y_hat, self.y_rows = y_hat, self._array(y_hat)  # y_rows: the same storage, as the products see it
        self.fronts = _wavefront_positions(self.height, self.width, slope=p + 1)

    def _array(self, t: Tensor) -> Rows:
        """What the products take: a NumPy view of `t` on the CPU, else `t` itself."""
        return t.detach().numpy() if self.host else t

    def _index(self, rows: np.ndarray) -> Rows:
        """Row numbers as the products take them (see `_array`)."""
        return rows if self.host else self._on_device(rows)

    def _on_device(self, rows: np.ndarray) -> Tensor:
        return torch.from_numpy(rows).to(self.device)

    def _rows(self, hs: np.ndarray, ws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of this wavefront's contexts (gather), of its params, and of its y_hat (scatter)."""
        p = (self.padded_width - self.width) // 2
        corner = hs * self.padded_width + ws
        gather = (corner[:, None] + self.tap_offsets[None, :]).reshape(-1)
        return gather, hs * self.width + ws, corner + p * self.padded_width + p

    def _scales_means(self, gather: np.ndarray, param_rows: np.ndarray) -> tuple[Tensor, Tensor]:
        if self.graphs is not None:
            assert self.params is not None
            context, entropy_parameters = self.graphs
            k = self.context_size
            ctx = self.y_hat.index_select(0, self._index(gather)).reshape(len(param_rows), -1)
            neighbourhoods = ctx.reshape(-1, k, k, self.M).permute(0, 3, 1, 2)
            params = self.params.index_select(0, self._index(param_rows))[:, :, None, None]
            scales, means = entropy_parameters(params, context(neighbourhoods)).flatten(1).chunk(2, 1)
            return scales, means
        # The same steps on NumPy arrays (CPU) or tensors (another device): x @ w, += bias, and a leaky ReLU as
        # x[x < 0] *= slope, which is what F.leaky_relu computes
        ctx = self.y_rows[self._index(gather)].reshape(len(param_rows), -1) @ self.ctx_weight
        ctx += self.ctx_bias
        out = ctx @ self.first_ctx_weight
        out += self.hyper[self._index(param_rows)]
        if self.first_slope is not None:
            out[out < 0] *= self.first_slope
        for weight, bias, slope in self.layers:
            out = out @ weight
            if bias is not None:
                out += bias
            if slope is not None:
                out[out < 0] *= slope
        scales, means = (torch.from_numpy(out) if self.host else out).chunk(2, 1)
        return scales, means

    def _store(self, rows: np.ndarray, values: Tensor) -> None:
        self.y_hat.index_copy_(0, self._on_device(rows), values)

    def _y_hat(self) -> Tensor:
        p = (self.padded_width - self.width) // 2
        grid = self.y_hat.reshape(self.height + 2 * p, self.padded_width, self.M)[p:-p, p:-p]
        return grid.permute(2, 0, 1).unsqueeze(0).contiguous()

    def quantize(self, y: Tensor) -> tuple[Tensor, list[tuple[np.ndarray, np.ndarray]]]:
        """Encoder side: y_hat = round(y - mean) + mean wavefront by wavefront, with each wavefront's
        (symbols, table indexes) as int32 arrays on the CPU, in coding order."""
        y_rows = y[0].detach().double().flatten(1).t()  # (H * W, M)
        steps: list[tuple[np.ndarray, np.ndarray]] = []
        with one_thread():
            self._quantize_fronts(y_rows, steps)
        return self._y_hat(), steps

    def _quantize_fronts(self, y_rows: Tensor, steps: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for hs, ws in self.fronts:
            gather, param_rows, rows = self._rows(hs, ws)
            scales, means = self._scales_means(gather, param_rows)
            indexes = self.gc.build_indexes(scales)
            symbols = self.gc.quantize(y_rows.index_select(0, self._on_device(param_rows)), "symbols", means)
            self._store(rows, symbols + means)
            steps.append((symbols.reshape(-1).cpu().numpy(), indexes.reshape(-1).cpu().numpy()))

    def decode(self, data: bytes, crc: int) -> tuple[Tensor, int]:
        """Decoder side: y_hat from the y stream, and the running index checksum."""
        from zoo.coder import Decoder

        tables = self.gc.tables()
        decoder = Decoder(data)
        with one_thread():
            for hs, ws in self.fronts:
                gather, param_rows, rows = self._rows(hs, ws)
                scales, means = self._scales_means(gather, param_rows)
                indexes = self.gc.build_indexes(scales).reshape(-1).cpu().numpy()
                crc = crc_indexes(indexes, crc)
                symbols = torch.from_numpy(decoder.decode(indexes, tables)).to(self.device)
                self._store(rows, symbols.reshape(means.shape).to(means.dtype) + means)
        _check_finished(decoder)
        return self._y_hat(), crc


@contextmanager
def one_thread() -> Iterator[None]:
    """Run a loop of many small CPU ops on one intra-op thread, restoring the setting after. Each wavefront's
    products are a few MB of weights against at most H rows: parallel regions gain little there, and where the
    cores are shared each one waits for a descheduled thread (measured on 2 shared cores at load 15: mbt2018
    decodes a Kodak image in 6.7 s this way, 30.7 s with 2 threads)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        with _blas_pools().limit(limits=1, user_api="blas"):  # NumPy's BLAS too (`_Wavefronts`)
            yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


@functools.cache
def _blas_pools() -> ThreadpoolController:
    """The thread pools of the BLAS libraries loaded (NumPy's), found once."""
    return ThreadpoolController()


def _check_finished(decoder: Decoder) -> None:
    if not decoder.finished():
        raise BitstreamError("entropy-coded y stream does not end where its symbols do (corrupt or truncated)")


def _wavefront_positions(height: int, width: int, slope: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, columns) of the positions with slope * h + w = t, for t = 0, 1, ...; rows ascending."""
    hs, ws = np.divmod(np.arange(height * width, dtype=np.int64), width)
    t = slope * hs + ws
    order = np.lexsort((hs, t))
    bounds = np.flatnonzero(np.diff(t[order])) + 1
    return [(hs[i], ws[i]) for i in np.split(order, bounds)]


def _context_weights(cp: MaskedConv2d, taps: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The masked convolution's weight as a (taps * M, 2M) matrix, tap-major like the gathered rows, and
    its bias. Kept on `cp` (a float64 copy that `f64` replaces when the weights change)."""
    hit = cp.__dict__.get("_wavefront_weights")
    if hit is None or hit[0] != taps:
        weight, bias = cp.weight.detach(), cp.bias
        assert bias is not None
        matrix = torch.cat([weight[:, :, dy, dx].t() for dy, dx in taps]).contiguous()
        hit = cp.__dict__["_wavefront_weights"] = (taps, matrix, bias.detach())
    return hit[1], hit[2]


def _entropy_layers(net: nn.Module) -> list[tuple[Tensor, Tensor | None, float | None]]:
    """`_pointwise_layers` with each weight stored (in, out), kept on `net` (a float64 copy, see above)."""
    hit = net.__dict__.get("_wavefront_layers")
    if hit is None:
        hit = [(w.t().contiguous(), b, slope) for w, b, slope in _pointwise_layers(net)]
        net.__dict__["_wavefront_layers"] = hit
    return hit


def _affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weight (+ bias), weight stored (in, out)."""
    return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)


def _pointwise_layers(net: nn.Module) -> list[tuple[Tensor, Tensor | None, float | None]]:
    """A stack of 1x1 convolutions and leaky ReLUs as (weight, bias, negative slope after it or None)."""
    layers: list[tuple[Tensor, Tensor | None, float | None]] = []
    for m in net.children() if isinstance(net, nn.Sequential) else [net]:
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1:
            bias = m.bias.detach() if m.bias is not None else None
            layers.append((m.weight.detach().flatten(1), bias, None))
        elif isinstance(m, nn.LeakyReLU) and layers and layers[-1][2] is None:
            weight, bias, _ = layers[-1]
            layers[-1] = (weight, bias, float(m.negative_slope))
        else:
            raise TypeError(f"entropy parameters must be 1x1 convolutions and leaky ReLUs, not {type(m).__name__}")
    return layers
