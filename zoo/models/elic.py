"""ELIC (He et al. 2022): uneven channel groups, each coded with a checkerboard context; CompressAI-compatible.

    y = [y0 | y1 | y2 | y3 | y4]            (channel groups, default 16, 16, 32, 64, M - 128)
    side ─────────────────────────┐
    y_hat of earlier groups ── channel_context_yk ──> ch_ctx ─┤
                                                              └─> checkerboard codec of yk (two passes)

Group k's parameters come from the hyperprior's side parameters, a channel context computed from the
groups decoded before it, and the checkerboard spatial context inside the group: 2 passes per group,
10 in all by default, each its own stream as in CompressAI's `compress`. `elic2022-official` feeds the
channel context every earlier group; `elic2022-chandelier` only the first and the latest, with CompressAI's
Chandelier re-implementation's parameter aggregation and (means, scales) order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from zoo.layers import AttentionBlock, conv, conv1x1, conv3x3, deconv
from zoo.models.base import Quantizer
from zoo.models.checkerboard import (
    CheckerboardCodec,
    CheckerboardMaskedConv2d,
    CodePass,
    HyperCodec,
    HyperpriorCodec,
    HyperpriorContextModel,
    _NamedInputs,
)


def default_groups(M: int) -> tuple[int, ...]:
    return (16, 16, 32, 64, M - 128)


class ResidualBottleneckBlock(nn.Module):
    """1x1 down to half the channels, 3x3, 1x1 back up, plus the input."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = min(in_ch, out_ch) // 2
        self.conv1 = conv1x1(in_ch, mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid, mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(mid, out_ch)
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return out + self.skip(x)


def channel_ramp(in_ch: int, out_ch: int, min_ch: int, layers: int = 3) -> nn.Sequential:
    """1x1 convolutions whose widths go linearly from in_ch to out_ch (inner ones at least min_ch), ReLU
    between: CompressAI's `sequential_channel_ramp` as ELIC's official parameter aggregation uses it."""
    widths = torch.linspace(in_ch, out_ch, layers + 1, device="cpu").floor().int()  # also under a meta device
    widths[1:-1] = widths[1:-1].clip(min=min_ch)
    ch = widths.tolist()
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [nn.Conv2d(ch[i], ch[i + 1], 1), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules[:-1])


class ChannelGroupsCodec(nn.Module):
    """`latent_codec.y` of ELIC: the channel contexts and one checkerboard codec per group."""

    def __init__(
        self, groups: Sequence[int], channel_context: Mapping[str, nn.Module], codecs: Mapping[str, nn.Module]
    ):
        super().__init__()
        self.groups = tuple(groups)
        self.channel_context = nn.ModuleDict(channel_context)
        self.latent_codec = nn.ModuleDict(codecs)

    def codec(self, k: int) -> CheckerboardCodec:
        codec = self.latent_codec[f"y{k}"]
        assert isinstance(codec, CheckerboardCodec)
        return codec

    def context(self, k: int) -> nn.Module:
        return self.channel_context[f"y{k}"]


class _Elic2022(HyperpriorContextModel):
    """Transforms and coding shared by both ELIC variants; they differ in what feeds the contexts."""

    latent_names = ("z", *(f"y{k}:{p}" for k in range(5) for p in ("anchors", "non_anchors")))

    @staticmethod
    def _names(groups: int) -> tuple[str, ...]:
        return ("z", *(f"y{k}:{p}" for k in range(groups) for p in ("anchors", "non_anchors")))

    @classmethod
    def latent_names_for(cls, count: int) -> tuple[str, ...] | None:
        """z, then each channel group's two checkerboard passes: 1 + 2 × groups streams."""
        return cls._names((count - 1) // 2) if count >= 3 and count % 2 else None

    side_uses_M = False  # h_s output and parameter aggregation width: 2N (official) or 2M (Chandelier)

    def __init__(self, N: int = 192, M: int = 320, groups: Sequence[int] | None = None):
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.groups = tuple(int(g) for g in (default_groups(M) if groups is None else groups))
        if sum(self.groups) != M or any(g <= 0 for g in self.groups):
            raise ValueError(f"channel groups {self.groups} must be positive and add up to M={M}")
        self.latent_names = self._names(len(self.groups))
        rbb = ResidualBottleneckBlock
        self.g_a = nn.Sequential(
            conv(3, N, 5, 2),
            *(rbb(N, N) for _ in range(3)),
            conv(N, N, 5, 2),
            *(rbb(N, N) for _ in range(3)),
            AttentionBlock(N),
            conv(N, N, 5, 2),
            *(rbb(N, N) for _ in range(3)),
            conv(N, M, 5, 2),
            AttentionBlock(M),
        )
        self.g_s = nn.Sequential(
            AttentionBlock(M),
            deconv(M, N, 5, 2),
            *(rbb(N, N) for _ in range(3)),
            deconv(N, N, 5, 2),
            AttentionBlock(N),
            *(rbb(N, N) for _ in range(3)),
            deconv(N, N, 5, 2),
            *(rbb(N, N) for _ in range(3)),
            deconv(N, 3, 5, 2),
        )
        h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.ReLU(inplace=True), conv(N, N, 5, 2), nn.ReLU(inplace=True), conv(N, N, 5, 2)
        )
        side = 2 * M if self.side_uses_M else 2 * N
        last = conv(N * 3 // 2, side, 3, 1) if self.side_uses_M else deconv(N * 3 // 2, side, 3, 1)
        h_s = nn.Sequential(
            deconv(N, N, 5, 2), nn.ReLU(inplace=True), deconv(N, N * 3 // 2, 5, 2), nn.ReLU(inplace=True), last
        )
        g = self.groups
        channel_context = {
            f"y{k}": nn.Sequential(
                conv(self.channel_context_width(k), 224, 5, 1),
                nn.ReLU(inplace=True),
                conv(224, 128, 5, 1),
                nn.ReLU(inplace=True),
                conv(128, g[k] * 2, 5, 1),
            )
            for k in range(1, len(g))
        }
        codecs = {
            f"y{k}": CheckerboardCodec(
                self.parameter_aggregation(g[k] * 2 + (k > 0) * g[k] * 2 + side, g[k] * 2),
                CheckerboardMaskedConv2d(g[k], g[k] * 2, kernel_size=5, stride=1, padding=2),
                means_first=self.side_uses_M,
            )
            for k in range(len(g))
        }
        self.latent_codec = HyperpriorCodec(ChannelGroupsCodec(g, channel_context, codecs), HyperCodec(h_a, h_s, N))

    @property
    def graph_paths(self) -> dict[str, str]:  # type: ignore[override]
        paths = dict(HyperpriorContextModel.graph_paths)
        for k in range(len(self.groups)):
            codec = f"latent_codec.y.latent_codec.y{k}"
            paths[f"context_prediction_y{k}"] = f"{codec}.context_prediction"
            paths[f"entropy_parameters_y{k}"] = f"{codec}.entropy_parameters"
            if k > 0:
                paths[f"channel_context_y{k}"] = f"latent_codec.y.channel_context.y{k}"
        return paths

    @property
    def channel_groups(self) -> ChannelGroupsCodec:
        lc = self.latent_codec.y
        assert isinstance(lc, ChannelGroupsCodec)
        return lc

    def channel_context_width(self, k: int) -> int:
        raise NotImplementedError

    def parameter_aggregation(self, in_ch: int, out_ch: int) -> nn.Module:
        raise NotImplementedError

    def channel_context_input(self, y_hats: Sequence[Tensor]) -> Tensor:
        """What group len(y_hats)'s channel context sees of the groups decoded so far."""
        raise NotImplementedError

    def _forward_y(self, y: Tensor, side: Tensor, quantize: Quantizer | None = None) -> tuple[Tensor, Tensor]:
        lc = self.channel_groups
        y_hats: list[Tensor] = []
        likelihoods = []
        for k, y_k in enumerate(y.split(self.groups, dim=1)):
            side_k = side if k == 0 else torch.cat((lc.context(k)(self.channel_context_input(y_hats)), side), 1)
            y_hat_k, lik_k = lc.codec(k)(y_k, side_k, quantize)
            y_hats.append(y_hat_k)
            likelihoods.append(lik_k)
        return torch.cat(y_hats, dim=1), torch.cat(likelihoods, dim=1)

    def _code_y(self, side: Tensor, y: Tensor | None, run: CodePass) -> Tensor:
        lc = self.channel_groups
        parts = y.split(self.groups, dim=1) if y is not None else (None,) * len(self.groups)
        y_hats: list[Tensor] = []
        for k, y_k in enumerate(parts):
            side_k = side
            if k > 0:
                ch_ctx = self.f64(f"latent_codec.y.channel_context.y{k}")(self.channel_context_input(y_hats))
                side_k = torch.cat((ch_ctx, side), dim=1)
            path = f"latent_codec.y.latent_codec.y{k}"
            codec = lc.codec(k)
            ep, cp = self.f64(f"{path}.entropy_parameters"), self.f64(f"{path}.context_prediction")
            y_hats.append(codec.code(ep, cp, side_k, y_k, run, f"y{k}"))
        return torch.cat(y_hats, dim=1)

    def context_graphs(self, y_hat: Tensor, side: Tensor) -> dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str]]]:
        lc = self.channel_groups
        y_hats = list(y_hat.split(self.groups, dim=1))
        out: dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str]]] = {}
        for k in range(len(self.groups)):
            codec = lc.codec(k)
            ctx = codec.context_prediction(y_hats[k])
            out[f"context_prediction_y{k}"] = (codec.context_prediction, (y_hats[k],), ["y_hat"])
            ep = _NamedInputs(codec.entropy_parameters)
            if k == 0:
                out["entropy_parameters_y0"] = (ep, (ctx, side), ["ctx", "params"])
                continue
            prev = self.channel_context_input(y_hats[:k])
            cc = lc.context(k)
            out[f"channel_context_y{k}"] = (cc, (prev,), ["y_hat_prev"])
            out[f"entropy_parameters_y{k}"] = (ep, (ctx, cc(prev), side), ["ctx", "channel_ctx", "params"])
        return out


class Elic2022Official(_Elic2022):
    """elic2022-official: the channel context of group k sees all groups before it (CompressAI's
    `Elic2022Official`)."""

    def channel_context_width(self, k: int) -> int:
        return sum(self.groups[:k])

    def parameter_aggregation(self, in_ch: int, out_ch: int) -> nn.Module:
        return channel_ramp(in_ch, out_ch, min_ch=2 * self.N)

    def channel_context_input(self, y_hats: Sequence[Tensor]) -> Tensor:
        return torch.cat(tuple(y_hats), dim=1)


class Elic2022Chandelier(_Elic2022):
    """elic2022-chandelier: the channel context sees the first and the latest group only; h_s ends in a
    convolution to 2M channels (CompressAI's `Elic2022Chandelier`)."""

    side_uses_M = True

    def channel_context_width(self, k: int) -> int:
        return self.groups[0] + (k > 1) * self.groups[k - 1]

    def parameter_aggregation(self, in_ch: int, out_ch: int) -> nn.Module:
        return nn.Sequential(
            conv1x1(in_ch, 2 * self.M),
            nn.ReLU(inplace=True),
            conv1x1(2 * self.M, 512),
            nn.ReLU(inplace=True),
            conv1x1(512, out_ch),
        )

    def channel_context_input(self, y_hats: Sequence[Tensor]) -> Tensor:
        return y_hats[0] if len(y_hats) == 1 else torch.cat((y_hats[0], y_hats[-1]), dim=1)
