"""Compression networks. Build them through `zoo.registry.create_model`, the one list of names."""

from zoo.models.base import CompressionModel, ForwardOutput, LatentStreams
from zoo.models.cheng2020 import Cheng2020Anchor, Cheng2020Attention
from zoo.models.google import (
    FactorizedPrior,
    FactorizedPriorReLU,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from zoo.models.variable_rate import (
    VariableRateJointAutoregressive,
    VariableRateMeanScaleHyperprior,
    VariableRateScaleHyperprior,
)

__all__ = [
    "Cheng2020Anchor",
    "Cheng2020Attention",
    "CompressionModel",
    "FactorizedPrior",
    "FactorizedPriorReLU",
    "ForwardOutput",
    "JointAutoregressiveHierarchicalPriors",
    "LatentStreams",
    "MeanScaleHyperprior",
    "ScaleHyperprior",
    "VariableRateJointAutoregressive",
    "VariableRateMeanScaleHyperprior",
    "VariableRateScaleHyperprior",
]
