"""Entropy models: learned densities that turn latents into likelihoods (training) and into integer
symbols plus integer CDF tables (coding). They know nothing of bytes: `zoo.coder` does that.

Buffers use CompressAI's names (`_quantized_cdf`, `_offset`, `_cdf_length`, `scale_table`) so its
checkpoints load as they are; the tables travel with the weights and are never rebuilt on a decode path.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import TablesMissingError
from zoo.layers import LowerBound, float32_under_autocast

TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def default_scale_table(lo: float = 0.11, hi: float = 256.0, levels: int = 64) -> Tensor:
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels))


def crc_indexes(indexes: Tensor | np.ndarray, crc: int = 0) -> int:
    """Running CRC32 over table indexes as little-endian int32: what the bitstream's index checksum holds."""
    arr = indexes.detach().cpu().numpy() if isinstance(indexes, Tensor) else indexes
    return zlib.crc32(np.ascontiguousarray(arr, dtype="<i4").tobytes(), crc)


class EntropyModel(nn.Module):
    """Base: quantisation modes, likelihood floor, and the integer tables as buffers."""

    _quantized_cdf: Tensor
    _offset: Tensor
    _cdf_length: Tensor

    def __init__(self, likelihood_bound: float = 1e-9, tail_mass: float = 1e-9, precision: int = 16):
        super().__init__()
        self.tail_mass = float(tail_mass)
        self.precision = int(precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        for name in TABLE_BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.int32))
        self._tables: Any = None  # zoo.coder.CdfTables, built lazily from the buffers

    # -- quantisation ---------------------------------------------------------------------------
    @staticmethod
    def quantize(inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        if mode == "noise":
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5)
        outputs = inputs - means if means is not None else inputs
        outputs = torch.round(outputs)
        if mode == "dequantize":
            return outputs + means if means is not None else outputs
        if mode == "symbols":
            return outputs.int()
        raise ValueError(f"unknown quantisation mode {mode!r}")

    @staticmethod
    def dequantize(symbols: Tensor, means: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        if means is not None:
            return symbols.type_as(means) + means
        return symbols.type(dtype)

    def bound_likelihood(self, likelihood: Tensor) -> Tensor:
        return self.likelihood_lower_bound(likelihood) if self.use_likelihood_bound else likelihood

    # -- tables ---------------------------------------------------------------------------------
    @property
    def has_tables(self) -> bool:
        return self._offset.numel() > 0 and self._quantized_cdf.numel() > 0

    def tables(self):
        """The coder's view of the integer tables, validated once and cached."""
        if not self.has_tables:
            raise TablesMissingError(
                f"{type(self).__name__} has no integer CDF tables: call model.update() before coding"
            )
        if self._tables is None:
            from zoo.coder import CdfTables

            self._tables = CdfTables(self._quantized_cdf, self._cdf_length, self._offset)
        return self._tables

    def _set_tables(self, cdf: Tensor, lengths: Tensor, offsets: Tensor) -> None:
        device = self._offset.device
        self._quantized_cdf = cdf.to(device=device, dtype=torch.int32)
        self._cdf_length = lengths.to(device=device, dtype=torch.int32)
        self._offset = offsets.to(device=device, dtype=torch.int32)
        self._tables = None

    def _pmf_to_cdf(self, pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor, max_length: int) -> Tensor:
        from zoo.cdf import pmf_to_quantized_cdf

        cdf = torch.zeros((len(pmf_length), max_length + 2), dtype=torch.int32)
        pmf_np = pmf.detach().double().cpu().numpy()
        tail_np = tail_mass.detach().double().cpu().numpy().reshape(-1)
        for i, length in enumerate(pmf_length.tolist()):
            row = pmf_to_quantized_cdf(pmf_np[i, :length], float(tail_np[i]), self.precision)
            cdf[i, : len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int32))
        return cdf

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # Table buffers have data-dependent sizes: take the checkpoint's shapes before copying.
        for name in (*TABLE_BUFFERS, "scale_table"):
            key = prefix + name
            if key in state_dict and hasattr(self, name) and getattr(self, name) is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(current).resize_(state_dict[key].shape))
        self._tables = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    # -- coding ---------------------------------------------------------------------------------
    def compress_symbols(self, symbols: Tensor, indexes: Tensor) -> bytes:
        from zoo.coder import encode

        return encode(
            symbols.detach().cpu().numpy().astype(np.int32, copy=False),
            indexes.detach().cpu().numpy().astype(np.int32, copy=False),
            self.tables(),
        )

    def decompress_symbols(self, data: bytes, indexes: Tensor) -> Tensor:
        from zoo.coder import decode

        symbols = decode(data, indexes.detach().cpu().numpy().astype(np.int32, copy=False), self.tables())
        return torch.from_numpy(np.asarray(symbols, dtype=np.int32)).reshape(indexes.shape).to(indexes.device)


class EntropyBottleneck(EntropyModel):
    """Fully factorized density (Ballé et al. 2018, appendix 6.1), one per channel, with learned
    quantiles that bound the range the integer tables cover; `loss()` is the auxiliary loss fitting them."""

    quantiles: nn.Parameter
    target: Tensor

    def __init__(self, channels: int, *args, init_scale: float = 10.0, filters: Sequence[int] = (3, 3, 3, 3), **kwargs):
        super().__init__(*args, **kwargs)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # from a list rather than by repeat: the same values, and cheap on the meta device too (see zoo.untrusted)
        self.quantiles = nn.Parameter(torch.tensor([[[-init_scale, 0.0, init_scale]]] * channels))
        target = math.log(2 / self.tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    def medians(self) -> Tensor:
        return self.quantiles[:, :, 1:2]

    def logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        logits = inputs
        for i, matrix in enumerate(self.matrices):
            matrix = matrix.detach() if stop_gradient else matrix
            logits = torch.matmul(F.softplus(matrix), logits)
            bias = self.biases[i].detach() if stop_gradient else self.biases[i]
            logits = logits + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def loss(self) -> Tensor:
        logits = self.logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    def _likelihood(self, inputs: Tensor, stop_gradient: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        lower = self.logits_cumulative(inputs - 0.5, stop_gradient)
        upper = self.logits_cumulative(inputs + 0.5, stop_gradient)
        sign = -torch.sign(lower + upper)
        likelihood = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return likelihood, lower, upper

    @float32_under_autocast
    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        training = self.training if training is None else training
        # (B, C, H, W) -> (C, 1, B*H*W): each channel's density applies to all of its values.
        perm = (1, 0, *range(2, x.dim()))
        inv_perm = tuple(int(i) for i in np.argsort(perm))
        values = x.permute(*perm).contiguous()
        shape = values.shape
        values = values.reshape(values.shape[0], 1, -1)
        outputs = self.quantize(values, "noise" if training else "dequantize", self.medians())
        likelihood, _, _ = self._likelihood(outputs)
        likelihood = self.bound_likelihood(likelihood)
        outputs = outputs.reshape(shape).permute(*inv_perm).contiguous()
        likelihood = likelihood.reshape(shape).permute(*inv_perm).contiguous()
        return outputs, likelihood

    def likelihood(self, values: Tensor) -> Tensor:
        """Likelihood of each element of a (B, C, ...) tensor of (possibly relaxed) quantized values, bounded
        as in training; differentiable in `values` (encode-time refinement, `zoo.refine`)."""
        perm = (1, 0, *range(2, values.dim()))
        inv_perm = tuple(int(i) for i in np.argsort(perm))
        moved = values.permute(*perm).contiguous()
        likelihood, _, _ = self._likelihood(moved.reshape(moved.shape[0], 1, -1))
        likelihood = self.bound_likelihood(likelihood)
        return likelihood.reshape(moved.shape).permute(*inv_perm).contiguous()

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        if self.has_tables and not force:
            return False
        medians = self.quantiles[:, 0, 1]
        minima = torch.clamp(torch.ceil(medians - self.quantiles[:, 0, 0]).int(), min=0)
        maxima = torch.clamp(torch.ceil(self.quantiles[:, 0, 2] - medians).int(), min=0)
        pmf_start = medians - minima
        pmf_length = maxima + minima + 1
        max_length = int(pmf_length.max().item())
        samples = torch.arange(max_length, device=pmf_start.device)[None, :] + pmf_start[:, None, None]
        _, lower, upper = self._likelihood(samples, stop_gradient=True)
        # CompressAI (1.2) takes the plain difference here, not the sign-flipped one `_likelihood` returns:
        # the same float steps give the same tables, which `import-compressai` and the parity test rely on.
        pmf = (torch.sigmoid(upper) - torch.sigmoid(lower))[:, 0, :]
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        cdf = self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        self._set_tables(cdf, pmf_length + 2, -minima)
        return True

    def build_indexes(self, size: Sequence[int]) -> Tensor:
        """Table index of every element of a (B, C, *spatial) latent: its channel."""
        b, c, *spatial = size
        idx = torch.arange(c, dtype=torch.int32).view(1, c, *([1] * len(spatial)))
        return idx.expand(b, c, *spatial)

    def index_crc(self, latent_hw: Sequence[int]) -> int:
        """CRC of the indexes of one latent of that size (they depend only on the size here)."""
        return crc_indexes(self.build_indexes((1, self.channels, *latent_hw))[0])

    def _expanded_medians(self, batch: int, spatial_dims: int) -> Tensor:
        medians = self.medians().detach().reshape(1, -1, *([1] * spatial_dims))
        return medians.expand(batch, -1, *([1] * spatial_dims))

    def compress(self, x: Tensor) -> tuple[list[bytes], int]:
        """One stream per batch item, and the CRC of the indexes used."""
        symbols = self.quantize(x, "symbols", self._expanded_medians(x.shape[0], x.dim() - 2))
        indexes = self.build_indexes(x.shape)
        strings = [self.compress_symbols(symbols[i], indexes[i]) for i in range(x.shape[0])]
        return strings, crc_indexes(indexes[0])

    def decompress(self, strings: Sequence[bytes], size: Sequence[int]) -> Tensor:
        shape = (len(strings), int(self._quantized_cdf.shape[0]), *size)
        indexes = self.build_indexes(shape)
        medians = self._expanded_medians(len(strings), len(size))
        symbols = torch.stack([self.decompress_symbols(s, indexes[i]) for i, s in enumerate(strings)])
        return self.dequantize(symbols.to(medians.device), medians)


class GaussianConditional(EntropyModel):
    """Gaussian density whose scale (and optional mean) per element come from a hyperprior.

    Coding uses one table per entry of `scale_table`; an element's table is the smallest scale in the
    table that is >= its predicted scale."""

    scale_table: Tensor
    scale_bound: Tensor

    def __init__(self, scale_table: Sequence[float] | None, *args, scale_bound: float = 0.11, **kwargs):
        super().__init__(*args, **kwargs)
        table = torch.tensor(list(scale_table), dtype=torch.float32) if scale_table else torch.zeros(0)
        self.register_buffer("scale_table", table)
        self.register_buffer("scale_bound", torch.tensor([float(scale_bound)]))
        self.lower_bound_scale = LowerBound(scale_bound)

    @staticmethod
    def _standardized_cumulative(inputs: Tensor) -> Tensor:
        return 0.5 * torch.erfc(-(2**-0.5) * inputs)

    def _likelihood(self, inputs: Tensor, scales: Tensor, means: Tensor | None = None) -> Tensor:
        values = torch.abs(inputs - means if means is not None else inputs)
        scales = self.lower_bound_scale(scales)
        upper = self._standardized_cumulative((0.5 - values) / scales)
        lower = self._standardized_cumulative((-0.5 - values) / scales)
        return upper - lower

    @float32_under_autocast
    def forward(
        self, inputs: Tensor, scales: Tensor, means: Tensor | None = None, training: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        training = self.training if training is None else training
        outputs = self.quantize(inputs, "noise" if training else "dequantize", means)
        return outputs, self.bound_likelihood(self._likelihood(outputs, scales, means))

    def likelihood(self, values: Tensor, scales: Tensor, means: Tensor | None = None) -> Tensor:
        """Likelihood of (possibly relaxed) quantized values, bounded as in training; differentiable."""
        return self.bound_likelihood(self._likelihood(values, scales, means))

    @torch.no_grad()
    def update_scale_table(self, scale_table: Tensor, force: bool = False) -> bool:
        if self.has_tables and not force:
            return False
        self.scale_table = scale_table.to(device=self._offset.device, dtype=torch.float32).clone()
        self.update()
        return True

    @torch.no_grad()
    def update(self) -> None:
        # Tables cover +-multiplier standard deviations: the normal quantile at tail_mass / 2.
        multiplier = -float(torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64)))
        table = self.scale_table.float()  # float32 like CompressAI: same scale table, same tables
        pmf_center = torch.ceil(table * multiplier).int()
        pmf_length = 2 * pmf_center + 1
        max_length = int(pmf_length.max().item())
        samples = torch.abs(torch.arange(max_length, device=table.device).int() - pmf_center[:, None]).float()
        scales = table.unsqueeze(1)
        upper = self._standardized_cumulative((0.5 - samples) / scales)
        lower = self._standardized_cumulative((-0.5 - samples) / scales)
        pmf = upper - lower
        tail_mass = 2 * lower[:, :1]
        cdf = self._pmf_to_cdf(pmf, tail_mass, pmf_length, max_length)
        self._set_tables(cdf, pmf_length + 2, -pmf_center)

    def build_indexes(self, scales: Tensor) -> Tensor:
        if self.scale_table.numel() == 0:
            raise TablesMissingError("GaussianConditional has no scale table: call model.update()")
        scales = self.lower_bound_scale(scales)
        # The first table entry >= the scale, i.e. the number of entries strictly below it (the last
        # entry catches everything larger). Same result as CompressAI's comparison loop, in one pass.
        boundaries = self.scale_table[:-1].to(device=scales.device, dtype=scales.dtype).contiguous()
        return torch.bucketize(scales, boundaries, right=False).int()

    def compress(self, inputs: Tensor, indexes: Tensor, means: Tensor | None = None) -> list[bytes]:
        symbols = self.quantize(inputs, "symbols", means)
        return [self.compress_symbols(symbols[i], indexes[i]) for i in range(inputs.shape[0])]

    def decompress(self, strings: Sequence[bytes], indexes: Tensor, means: Tensor | None = None) -> Tensor:
        symbols = torch.stack([self.decompress_symbols(s, indexes[i]) for i, s in enumerate(strings)])
        return self.dequantize(symbols, means)
