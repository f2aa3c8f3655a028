"""He et al. 2021's checkerboard context model, on Cheng et al. 2020's anchor transforms; CompressAI-compatible.

    x ── g_a ──> y ── h_a ──> z ──[EB]──> z_hat ── h_s ──> side ──┐
                 ├── anchors ─────[GC]──> y_hat anchors ──────────┤ context_prediction (checkerboard 5x5)
                 └── non-anchors ─[GC]──> y_hat non-anchors <─────┘
    y_hat ── g_s ──> x_hat

Anchors are the positions whose row + column is even. They are coded from the hyperprior alone (a zero
context), then every non-anchor from the hyperprior and the masked convolution of the decoded anchors: two
network passes however large the image, no serial loop. Each pass is its own stream, as in CompressAI's
`compress` (same symbol order and tables, so the same bytes wherever both compute the same table indexes).

The latent-codec modules here (`HyperCodec`, `CheckerboardCodec`, `HyperpriorCodec`) carry CompressAI's
module names (`latent_codec.hyper.h_a`, `latent_codec.y.context_prediction`, ...) so its state dicts load
strictly; `zoo.models.elic` builds ELIC from the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from zoo.compressed import TileStreams
from zoo.entropy import EntropyBottleneck, GaussianConditional, crc_indexes
from zoo.layers import (
    MaskedConv2d,
)
from zoo.models.base import CompressionModel, ForwardOutput, Quantizer, coded, relaxed_factorized
from zoo.models.cheng2020 import cheng_analysis, cheng_hyper_analysis, cheng_hyper_synthesis, cheng_synthesis

CONTEXT_MODEL_DOC = (
    "checkerboard: anchors (row + column even) are coded first with a zero context; context_prediction of the "
    "decoded anchors (non-anchors zero; checkerboard mask folded) then gives ctx for the non-anchors. "
    "entropy_parameters takes (ctx, params) (ELIC: (ctx, channel context, params)) and is pointwise; "
    "channel_context_yk maps the decoded earlier groups to group k's channel context"
)


def ste_round(x: Tensor) -> Tensor:
    """round(x) forward, identity backward (CompressAI's quantize_ste)."""
    return (torch.round(x) - x).detach() + x


class CheckerboardMaskedConv2d(MaskedConv2d):
    """Convolution that sees only the other colour of a checkerboard: anchors see nothing of their own kind."""

    def __init__(self, *args, mask_type: str = "A", **kwargs):
        super().__init__(*args, mask_type=mask_type, **kwargs)
        _, _, h, w = self.mask.shape
        self.mask.fill_(1)
        self.mask[:, :, 0::2, 0::2] = 0
        self.mask[:, :, 1::2, 1::2] = 0
        self.mask[:, :, h // 2, w // 2] = float(mask_type == "B")


def anchor_mask(like: Tensor) -> Tensor:
    """(H, W) boolean mask of the anchors of a (.., H, W) tensor, on its device."""
    h, w = like.shape[-2:]
    rows = torch.arange(h, device=like.device)[:, None]
    cols = torch.arange(w, device=like.device)[None, :]
    return (rows + cols) % 2 == 0


def split_checkerboard(t: Tensor) -> tuple[Tensor, Tensor]:
    """(.., H, W) -> anchors and non-anchors, each (.., H, W // 2), every row's elements left to right."""
    anchors = t.new_empty((*t.shape[:-1], t.shape[-1] // 2))
    others = torch.empty_like(anchors)
    anchors[..., 0::2, :] = t[..., 0::2, 0::2]
    anchors[..., 1::2, :] = t[..., 1::2, 1::2]
    others[..., 0::2, :] = t[..., 0::2, 1::2]
    others[..., 1::2, :] = t[..., 1::2, 0::2]
    return anchors, others


def merge_checkerboard(anchors: Tensor, others: Tensor) -> Tensor:
    """Inverse of `split_checkerboard`."""
    t = anchors.new_empty((*anchors.shape[:-1], anchors.shape[-1] * 2))
    t[..., 0::2, 0::2] = anchors[..., 0::2, :]
    t[..., 1::2, 1::2] = anchors[..., 1::2, :]
    t[..., 0::2, 1::2] = others[..., 0::2, :]
    t[..., 1::2, 0::2] = others[..., 1::2, :]
    return t


class GaussianLeaf(nn.Module):
    """Holds the Gaussian conditional under CompressAI's name (`...y.gaussian_conditional`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gaussian_conditional = GaussianConditional(None)


class HyperCodec(nn.Module):
    """The side branch: h_a, the factorized prior of z, h_s."""

    entropy_bottleneck: EntropyBottleneck
    h_a: nn.Module
    h_s: nn.Module

    def __init__(self, h_a: nn.Module, h_s: nn.Module, channels: int):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(channels)
        self.h_a = h_a
        self.h_s = h_s


# A coding pass: (stream name, Gaussian conditional, this pass's y or None when decoding, table indexes,
# means) -> the pass's y_hat. `_Encoding` and `_Decoding` implement it; the nets are the same both ways.
CodePass = Callable[[str, GaussianConditional, Tensor | None, Tensor, Tensor], Tensor]


class CheckerboardCodec(nn.Module):
    """Two-pass checkerboard coding of one latent (or one channel group) given its side parameters.

    `entropy_parameters` maps cat(ctx, side) to the Gaussian's parameters: scales then means, or means then
    scales with `means_first` (ELIC's Chandelier variant)."""

    entropy_parameters: nn.Module
    context_prediction: MaskedConv2d
    y: GaussianLeaf

    def __init__(self, entropy_parameters: nn.Module, context_prediction: MaskedConv2d, means_first: bool = False):
        super().__init__()
        self.entropy_parameters = entropy_parameters
        self.context_prediction = context_prediction
        self.y = GaussianLeaf()
        self.means_first = means_first

    @property
    def gaussian_conditional(self) -> GaussianConditional:
        return self.y.gaussian_conditional

    def chunk(self, gp: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, means) from the entropy parameters' output."""
        a, b = gp.chunk(2, 1)
        return (b, a) if self.means_first else (a, b)

    def forward(self, y: Tensor, side: Tensor, quantize: Quantizer | None = None) -> tuple[Tensor, Tensor]:
        """y_hat and y's likelihoods, quantizing as the coder does (round(y - mean) + mean, anchors first).

        With `quantize` (encode-time refinement) it stands in for rounding, and the likelihoods are those of
        the y_hat it makes; without, rounding is straight-through and y is rated as in training."""
        rounding = ste_round if quantize is None else quantize
        anchors = anchor_mask(y)
        ep, cp = self.entropy_parameters, self.context_prediction
        zero_ctx = side.new_zeros((y.shape[0], cp.out_channels, *y.shape[-2:]))
        gp_anchors = ep(torch.cat((zero_ctx, side), dim=1))
        _, means = self.chunk(gp_anchors)
        y_hat_anchors = torch.where(anchors, rounding(y - means) + means, torch.zeros_like(y))
        gp = torch.where(anchors, gp_anchors, ep(torch.cat((cp(y_hat_anchors), side), dim=1)))
        scales, means = self.chunk(gp)
        y_hat = torch.where(anchors, y_hat_anchors, rounding(y - means) + means)
        if quantize is not None:
            return y_hat, self.gaussian_conditional.likelihood(y_hat, scales, means)
        _, likelihoods = self.gaussian_conditional(y, scales, means=means)
        return y_hat, likelihoods

    def code(self, ep: nn.Module, cp: nn.Module, side: Tensor, y: Tensor | None, run: CodePass, prefix: str) -> Tensor:
        """Code both passes with `ep`/`cp` (this codec's float64 copies); returns y_hat (float64).

        The entropy parameters are pointwise, so each pass evaluates them on its own half of the positions."""
        gc = self.gaussian_conditional
        side_anchors, side_others = split_checkerboard(side)
        y_anchors, y_others = split_checkerboard(y) if y is not None else (None, None)
        zero_ctx = side.new_zeros((side.shape[0], self.context_prediction.out_channels, *side_anchors.shape[-2:]))
        scales, means = self.chunk(ep(torch.cat((zero_ctx, side_anchors), dim=1)))
        y_hat_anchors = run(f"{prefix}:anchors", gc, y_anchors, gc.build_indexes(scales), means)
        _, ctx = split_checkerboard(cp(merge_checkerboard(y_hat_anchors, torch.zeros_like(y_hat_anchors))))
        scales, means = self.chunk(ep(torch.cat((ctx, side_others), dim=1)))
        y_hat_others = run(f"{prefix}:non_anchors", gc, y_others, gc.build_indexes(scales), means)
        return merge_checkerboard(y_hat_anchors, y_hat_others)


class HyperpriorCodec(nn.Module):
    """`latent_codec` of the model: the hyper branch and the codec of y, under CompressAI's names."""

    y: nn.Module
    hyper: HyperCodec

    def __init__(self, y: nn.Module, hyper: HyperCodec):
        super().__init__()
        self.y = y
        self.hyper = hyper


class _Encoding:
    """Codes each pass of a batch into one stream per image, keeping each image's running index CRC."""

    def __init__(self, batch: int, crc: int):
        self.streams: dict[str, list[bytes]] = {}
        self.crcs = [crc] * batch

    def __call__(self, name: str, gc: GaussianConditional, y: Tensor | None, indexes: Tensor, means: Tensor) -> Tensor:
        assert y is not None
        self.streams[name] = gc.compress(y, indexes, means=means)
        self.crcs = [crc_indexes(indexes[i], c) for i, c in enumerate(self.crcs)]
        return gc.quantize(y, "dequantize", means)


class _Decoding:
    """Decodes each pass of a batch from the images' streams, keeping the same running index CRCs."""

    def __init__(self, streams: Sequence[TileStreams], crc: int):
        self.streams = streams
        self.crcs = [crc] * len(streams)

    def __call__(self, name: str, gc: GaussianConditional, y: Tensor | None, indexes: Tensor, means: Tensor) -> Tensor:
        self.crcs = [crc_indexes(indexes[i], c) for i, c in enumerate(self.crcs)]
        return gc.decompress([s.stream(name) for s in self.streams], indexes, means=means)


class HyperpriorContextModel(CompressionModel):
    """Base of the architectures whose y is coded in a few parallel passes given the hyperprior's side
    parameters (checkerboard, ELIC). Subclasses set `latent_codec` and implement `_forward_y` / `_code_y`.

    The side parameters and every context network run in float64 when coding, like `entropy_params`, so
    backends and devices agree on table indexes and means."""

    downsample = 64
    # graph name -> the module it is exported from: h_a and h_s, and in subclasses each context network
    # (`context_graphs`), which coding takes by that path from `f64`
    graph_paths = {"h_a": "latent_codec.hyper.h_a", "h_s": "latent_codec.hyper.h_s"}
    context_model_doc = CONTEXT_MODEL_DOC
    latent_codec: HyperpriorCodec
    g_a: nn.Module
    g_s: nn.Module

    def entropy_params(self, z_hat: Tensor) -> Tensor:
        return self.f64("latent_codec.hyper.h_s")(z_hat.double())

    def forward(self, x: Tensor) -> ForwardOutput:
        y = self.g_a(x)
        hyper = self.latent_codec.hyper
        z = hyper.h_a(y)
        _, z_lik = hyper.entropy_bottleneck(z)
        medians = hyper.entropy_bottleneck.medians().reshape(1, -1, 1, 1)
        side = hyper.h_s(ste_round(z - medians) + medians)
        y_hat, y_lik = self._forward_y(y, side)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def analyze(self, x: Tensor) -> dict[str, Tensor]:
        y = self.g_a(x)
        return {"z": self.latent_codec.hyper.h_a(y), "y": y}

    def relaxed_forward(self, latents: dict[str, Tensor], quantize: Quantizer) -> ForwardOutput:
        hyper = self.latent_codec.hyper
        z_hat, z_lik = relaxed_factorized(hyper.entropy_bottleneck, latents["z"], quantize)
        y_hat, y_lik = self._forward_y(latents["y"], hyper.h_s(z_hat), quantize)
        return ForwardOutput(self.g_s(y_hat), {"y": y_lik, "z": z_lik})

    def _forward_y(self, y: Tensor, side: Tensor, quantize: Quantizer | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _code_y(self, side: Tensor, y: Tensor | None, run: CodePass) -> Tensor:
        raise NotImplementedError

    def context_graphs(self, y_hat: Tensor, side: Tensor) -> dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str]]]:
        """name -> (module, example inputs, input names) of the context networks, for export."""
        raise NotImplementedError

    def _code(self, x: Tensor, latents: dict[str, Tensor]) -> list[TileStreams]:
        y, z = latents["y"], latents["z"]
        eb = self.latent_codec.hyper.entropy_bottleneck
        z_strings, z_crc = eb.compress(z)
        z_hat = eb.decompress(z_strings, z.shape[-2:])  # condition y on exactly what the decoder sees
        coder = _Encoding(x.shape[0], z_crc)
        self._code_y(self.entropy_params(z_hat), y.double(), coder)
        hw = (int(z.shape[-2]), int(z.shape[-1]))
        return [
            coded(x, (("z", z_strings[i]), *((n, s[i]) for n, s in coder.streams.items())), hw, coder.crcs[i])
            for i in range(x.shape[0])
        ]

    def _decompress(self, streams: Sequence[TileStreams], latent_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
        eb = self.latent_codec.hyper.entropy_bottleneck
        z_hat = eb.decompress([s.stream("z") for s in streams], latent_hw)
        coder = _Decoding(streams, eb.index_crc(latent_hw))
        y_hat = self._code_y(self.entropy_params(z_hat), None, coder)
        return self.g_s(y_hat.to(z_hat.dtype)).clamp_(0, 1), coder.crcs


class _NamedInputs(nn.Module):
    """A pointwise network fed the concatenation of named inputs (export: callers never rely on order)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.net(torch.cat(inputs, dim=1))


class Cheng2020AnchorCheckerboard(HyperpriorContextModel):
    """cheng2020-anchor-checkerboard: Cheng et al. 2020's anchor transforms and hyperprior (M = N) with a
    checkerboard context model (CompressAI's `Cheng2020AnchorCheckerboard`)."""

    latent_names = ("z", "y:anchors", "y:non_anchors")
    graph_paths = {
        **HyperpriorContextModel.graph_paths,
        "context_prediction": "latent_codec.y.context_prediction",
        "entropy_parameters": "latent_codec.y.entropy_parameters",
    }

    def __init__(self, N: int = 192):
        super().__init__()
        self.N = self.M = int(N)
        self.g_a = cheng_analysis(N)
        self.g_s = cheng_synthesis(N)
        h_a, h_s = cheng_hyper_analysis(N), cheng_hyper_synthesis(N)
        entropy_parameters = nn.Sequential(
            nn.Conv2d(N * 12 // 3, N * 10 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(N * 10 // 3, N * 8 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(N * 8 // 3, N * 6 // 3, 1),
        )
        context_prediction = CheckerboardMaskedConv2d(N, 2 * N, kernel_size=5, stride=1, padding=2)
        self.latent_codec = HyperpriorCodec(
            CheckerboardCodec(entropy_parameters, context_prediction), HyperCodec(h_a, h_s, N)
        )

    @property
    def codec(self) -> CheckerboardCodec:
        codec = self.latent_codec.y
        assert isinstance(codec, CheckerboardCodec)
        return codec

    def _forward_y(self, y: Tensor, side: Tensor, quantize: Quantizer | None = None) -> tuple[Tensor, Tensor]:
        return self.codec(y, side, quantize)

    def _code_y(self, side: Tensor, y: Tensor | None, run: CodePass) -> Tensor:
        codec = self.codec
        ep, cp = self.f64("latent_codec.y.entropy_parameters"), self.f64("latent_codec.y.context_prediction")
        return codec.code(ep, cp, side, y, run, "y")

    def context_graphs(self, y_hat: Tensor, side: Tensor) -> dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str]]]:
        codec = self.codec
        ctx = codec.context_prediction(y_hat)
        return {
            "context_prediction": (codec.context_prediction, (y_hat,), ["y_hat"]),
            "entropy_parameters": (_NamedInputs(codec.entropy_parameters), (ctx, side), ["ctx", "params"]),
        }
