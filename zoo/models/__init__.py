"""Compression networks. Build them through `zoo.registry.create_model`, the one list of names."""

from zoo.models.base import CompressionModel, ForwardOutput
from zoo.models.checkerboard import Cheng2020AnchorCheckerboard
from zoo.models.cheng2020 import Cheng2020Anchor, Cheng2020Attention
from zoo.models.elic import Elic2022Chandelier, Elic2022Official
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
    "Cheng2020AnchorCheckerboard",
    "Cheng2020Attention",
    "CompressionModel",
    "Elic2022Chandelier",
    "Elic2022Official",
    "FactorizedPrior",
    "FactorizedPriorReLU",
    "ForwardOutput",
    "JointAutoregressiveHierarchicalPriors",
    "MeanScaleHyperprior",
    "ScaleHyperprior",
    "VariableRateJointAutoregressive",
    "VariableRateMeanScaleHyperprior",
    "VariableRateScaleHyperprior",
]
