"""Cheng et al. 2020 (anchor and attention): residual transforms around mbt2018's entropy model.

x ── [ResBlock↓, ResBlock]x3 ── conv3x3↓ (+ attention) ──> y   (M = N channels)
y_hat ── [ResBlock, ResBlock↑]x3 ── subpel conv ──> x_hat
"""

from __future__ import annotations

from torch import nn

from zoo.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)
from zoo.models.google import JointAutoregressiveHierarchicalPriors


def cheng_analysis(N: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlockWithStride(3, N, stride=2),
        ResidualBlock(N, N),
        ResidualBlockWithStride(N, N, stride=2),
        ResidualBlock(N, N),
        ResidualBlockWithStride(N, N, stride=2),
        ResidualBlock(N, N),
        conv3x3(N, N, stride=2),
    )


def cheng_synthesis(N: int) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(N, N),
        ResidualBlockUpsample(N, N, 2),
        ResidualBlock(N, N),
        ResidualBlockUpsample(N, N, 2),
        ResidualBlock(N, N),
        ResidualBlockUpsample(N, N, 2),
        ResidualBlock(N, N),
        subpel_conv3x3(N, 3, 2),
    )


def cheng_hyper_analysis(N: int) -> nn.Sequential:
    return nn.Sequential(
        conv3x3(N, N),
        nn.LeakyReLU(inplace=True),
        conv3x3(N, N),
        nn.LeakyReLU(inplace=True),
        conv3x3(N, N, stride=2),
        nn.LeakyReLU(inplace=True),
        conv3x3(N, N),
        nn.LeakyReLU(inplace=True),
        conv3x3(N, N, stride=2),
    )


def cheng_hyper_synthesis(N: int) -> nn.Sequential:
    """Emits [scales | means] for y, 2N channels."""
    return nn.Sequential(
        conv3x3(N, N),
        nn.LeakyReLU(inplace=True),
        subpel_conv3x3(N, N, 2),
        nn.LeakyReLU(inplace=True),
        conv3x3(N, N * 3 // 2),
        nn.LeakyReLU(inplace=True),
        subpel_conv3x3(N * 3 // 2, N * 3 // 2, 2),
        nn.LeakyReLU(inplace=True),
        conv3x3(N * 3 // 2, N * 2),
    )


class Cheng2020Anchor(JointAutoregressiveHierarchicalPriors):
    def __init__(self, N: int = 192):
        super().__init__(N=N, M=N)
        self.g_a = cheng_analysis(N)
        self.h_a = cheng_hyper_analysis(N)
        self.h_s = cheng_hyper_synthesis(N)
        self.g_s = cheng_synthesis(N)


class Cheng2020Attention(Cheng2020Anchor):
    def __init__(self, N: int = 192):
        super().__init__(N=N)
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, N, stride=2),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N, stride=2),
            AttentionBlock(N),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N, stride=2),
            ResidualBlock(N, N),
            conv3x3(N, N, stride=2),
            AttentionBlock(N),
        )
        self.g_s = nn.Sequential(
            AttentionBlock(N),
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N, 2),
            AttentionBlock(N),
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N, N),
            subpel_conv3x3(N, 3, 2),
        )
