"""What every compression network shares: the three verbs (forward / compress / decompress),
table updates, the auxiliary loss, and the typed results they return."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.compressed import TileStreams
from zoo.entropy import EntropyBottleneck, GaussianConditional, default_scale_table
from zoo.errors import BitstreamError

# Orders in which context models code y's symbols: "wavefront" (the default; bitstream formats 2 and 3) and
# "raster" (format 1): `zoo.compressed.symbol_order` maps a format version to its order. Models without a
# context model have one order, and ignore the argument.
SYMBOL_ORDERS = ("wavefront", "raster")

# Stands in for rounding in `relaxed_forward`: continuous offsets (latent minus its median or mean) to relaxed
# integers of the same shape. `torch.round` gives the coder's quantization; `zoo.refine` passes a stochastic
# relaxation that gradients flow through.
Quantizer = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ForwardOutput:
    """Training-time output: the reconstruction and the likelihood of every latent element, by name. `x_hat`
    is None where a context model skipped its synthesis (`rate_only`): nothing that trains moves it."""

    x_hat: Tensor | None
    likelihoods: dict[str, Tensor]


def coded(x: Tensor, streams: Sequence[tuple[str, bytes]], latent_hw: tuple[int, int], crc: int) -> TileStreams:
    """What a model's `compress` returns for one image of its padded batch `x`: the named streams, placed at
    the whole input (the Codec places them in the image), and the CRC32 of the table indexes used."""
    return TileStreams((0, 0, int(x.shape[-2]), int(x.shape[-1])), latent_hw, tuple(streams), crc)


class CompressionModel(nn.Module):
    """Base class. Subclasses define the transforms and `_compress_one` / `_decompress` logic.

    `downsample` is the factor between the input and the deepest latent: inputs are padded to a multiple
    of it by `zoo.codec.Codec`, never here.
    """

    downsample: int = 16
    latent_names: tuple[str, ...] = ("y",)

    @classmethod
    def latent_names_for(cls, count: int) -> tuple[str, ...] | None:
        """The names of this architecture's `count` streams, in coding order (what a file without names stores
        lengths for), or None when it codes another number of streams."""
        return cls.latent_names if count == len(cls.latent_names) else None

    def f64(self, name: str) -> nn.Module:
        """A float64 copy of a submodule, for the path that feeds the entropy models (see `entropy_params`).

        `name` may be a dotted path (`latent_codec.hyper.h_s`). Cached; rebuilt whenever the weights change."""
        module = self.get_submodule(name)
        key = tuple((p.data_ptr(), p._version) for p in module.parameters())
        cache = self.__dict__.setdefault("_f64_cache", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, copy.deepcopy(module).double().eval())
            cache[name] = hit
        return hit[1]

    def entropy_params(self, z_hat: Tensor) -> Tensor:
        """h_s(z_hat) as the entropy models see it when coding: in float64, whatever runs the transforms.

        Table indexes and means must be identical on the encoder and decoder; computing them in double
        precision from integer-valued z_hat makes a last-bit difference between backends or devices
        (float32 ONNX Runtime vs eager, CPU vs GPU) practically never move an index or a mean."""
        return self.f64("h_s")(z_hat.double())

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> float:
        """The rate of a padded batch estimated from likelihoods (-sum log2), without coding it. For
        these models the eval-mode forward quantizes exactly as the coder does; the coder then pays
        only its table precision and a few bytes of flushing over this figure."""
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        return float(sum(-torch.log2(lik.double()).sum() for lik in out.likelihoods.values()))

    def aux_loss(self) -> Tensor:
        losses = [m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck)]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith("quantiles")]

    def main_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("quantiles")]

    def update(self, scale_table: Tensor | None = None, force: bool = False) -> bool:
        """Compute the integer CDF tables from the current weights (skipped where present unless forced)."""
        updated = False
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                updated |= m.update(force=force)
            elif isinstance(m, GaussianConditional):
                # Keep the scale table the weights came with (an imported checkpoint may have its own).
                table = scale_table if scale_table is not None else m.scale_table
                if table.numel() == 0:
                    table = default_scale_table()
                updated |= m.update_scale_table(table, force=force)
        return updated

    @property
    def has_tables(self) -> bool:
        return all(m.has_tables for m in self.modules() if isinstance(m, EntropyBottleneck | GaussianConditional))

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"input {h}x{w} is not a multiple of {self.downsample}: pad it (zoo.codec does)")

    @torch.no_grad()
    def compress(self, x: Tensor, *, order: str = "wavefront") -> list[TileStreams]:
        """Entropy-code a padded batch; one TileStreams per batch item (see `coded`). `order`: see SYMBOL_ORDERS."""
        check_order(order)
        self.check_input(x)
        return self._compress_in_order(x, order)

    @torch.no_grad()
    def decompress(self, streams: Sequence[TileStreams], *, order: str | None = None) -> Tensor:
        """Decode a batch of streams that share one latent size; returns the padded reconstruction."""
        if not streams:
            raise ValueError("nothing to decompress")
        x_hat, checksums = self.decompress_unchecked(streams, order=order)
        for s, computed in zip(streams, checksums, strict=True):
            check_index_crc(s.index_checksum, computed)
        return x_hat

    @torch.no_grad()
    def decompress_unchecked(
        self, streams: Sequence[TileStreams], *, order: str | None = None
    ) -> tuple[Tensor, list[int]]:
        """Decode and return the index checksums the decoder computed, for the caller to compare
        (`zoo.codec` compares one checksum over all tiles of an image). `order` (SYMBOL_ORDERS) is the one the
        streams were coded in: `zoo.compressed.symbol_order` of their file's format version; by default
        "wavefront", which `compress` uses by default."""
        if not streams:
            raise ValueError("nothing to decompress")
        order = SYMBOL_ORDERS[0] if order is None else order
        check_order(order)
        hw = streams[0].latent_hw
        if any(s.latent_hw != hw for s in streams):
            raise ValueError("streams of one decompress call must share their latent size")
        return self._decompress_in_order(streams, hw, order)

    # -- coding given latents (encode-time refinement, `zoo.refine`) --------------------------------------
    def analyze(self, x: Tensor) -> dict[str, Tensor]:
        """The continuous latents the encoder quantizes, by stream name (`latent_names`): z here is the
        hyper-analysis of y, which `compress_latents` takes as it is rather than recomputing it."""
        raise NotImplementedError(f"{type(self).__name__} has no analysis for encode-time refinement")

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        """The reconstruction and the likelihoods of `latents` quantized by `quantize` around the medians and
        means the coder uses: with `torch.round` the integers `compress_latents` codes (up to the float64
        entropy path and, for sequential context models, the context of the coder's own y_hat)."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable path for encode-time refinement")

    @torch.no_grad()
    def compress_latents(self, x: Tensor, latents: dict[str, Tensor], *, order: str = "wavefront") -> list[TileStreams]:
        """Entropy-code given latents of the padded batch `x` (its shape places the streams) exactly as
        `compress` codes the latents of its own analysis: `compress(x)` is `compress_latents(x, analyze(x))`."""
        check_order(order)
        self.check_input(x)
        return self._code_in_order(x, latents, order)

    def _code_in_order(self, x: Tensor, latents: dict[str, Tensor], order: str) -> list[TileStreams]:
        return self._code(x, latents)

    def _code(self, x: Tensor, latents: dict[str, Tensor]) -> list[TileStreams]:
        raise NotImplementedError

    # Context models override these two: their symbol order is part of the stream. Others have one order.
    def _compress_in_order(self, x: Tensor, order: str) -> list[TileStreams]:
        return self._compress(x)

    def _decompress_in_order(
        self, streams: Sequence[TileStreams], latent_hw: tuple[int, int], order: str
    ) -> tuple[Tensor, list[int]]:
        return self._decompress(streams, latent_hw)

    def _compress(self, x: Tensor) -> list[TileStreams]:
        return self._code(x, self.analyze(x))

    def _decompress(self, streams: Sequence[TileStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        raise NotImplementedError


def relaxed_factorized(eb: EntropyBottleneck, latent: Tensor, quantize: Quantizer) -> tuple[Tensor, Tensor]:
    """A latent under a factorized prior quantized by `quantize` around the medians the coder uses, and its
    likelihoods (`CompressionModel.relaxed_forward`)."""
    medians = eb.medians().detach().reshape(1, -1, *([1] * (latent.dim() - 2)))
    latent_hat = quantize(latent - medians) + medians
    return latent_hat, eb.likelihood(latent_hat)


def check_order(order: str) -> None:
    if order not in SYMBOL_ORDERS:
        raise ValueError(f"unknown symbol order {order!r} (expected one of {', '.join(SYMBOL_ORDERS)})")


def check_index_crc(expected: int, computed: int) -> None:
    """Refuse a decode made with table indexes other than the encoder's (it would be garbage)."""
    if expected != computed:
        raise BitstreamError(
            f"entropy-model table indexes differ from the encoder's (index checksum {computed:08x}, "
            f"stream says {expected:08x}): the stream was made with other weights, or by a backend or "
            "device that computes different scales"
        )
