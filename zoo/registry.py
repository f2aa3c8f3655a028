"""The one list of architectures: classes, per-quality widths and λ tables.

The CLI, the Hub entries, export, training and serving all read names and tables from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from zoo.errors import ArchitectureError, EntryNotFound
from zoo.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    CompressionModel,
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
    check_level,
)

METRICS = ("mse", "ms-ssim")

# CompressAI's training λ per quality 1..8 (loss λ·255²·MSE + bpp, or λ·(1 − MS-SSIM) + bpp).
LAMBDAS: dict[str, tuple[float, ...]] = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_class: type[CompressionModel]
    # quality -> constructor widths, e.g. {"N": 128, "M": 192}
    width_table: Mapping[int, Mapping[str, int]]
    title: str
    autoregressive: bool = False
    base: str | None = None  # variable-rate architectures: the fixed-rate architecture every level folds into

    @property
    def variable_rate(self) -> bool:
        return self.base is not None

    @property
    def qualities(self) -> tuple[int, ...]:
        return tuple(sorted(self.width_table))

    @property
    def downsample(self) -> int:
        return self.model_class.downsample

    @property
    def latent_names(self) -> tuple[str, ...]:
        return self.model_class.latent_names

    @property
    def width_keys(self) -> tuple[str, ...]:
        return tuple(next(iter(self.width_table.values())))

    def check_quality(self, quality: float) -> int:
        """An integer quality of a fixed-rate architecture (for a variable-rate one see `check_level`)."""
        if self.variable_rate:
            raise EntryNotFound(f"{self.name} is variable-rate: it takes a level in [1, 8], not a fixed quality")
        if quality not in self.width_table or int(quality) != quality:
            raise EntryNotFound(
                f"{self.name} has no quality {quality}; qualities are {', '.join(map(str, self.qualities))}"
            )
        return int(quality)

    def check_level(self, level: float) -> float:
        """A level in [1, 8] of a variable-rate architecture."""
        if not self.variable_rate:
            raise EntryNotFound(f"{self.name} is fixed-rate: it takes an integer quality, not a level")
        return check_level(level, len(self.width_table))

    def widths(self, quality: float) -> dict[str, int]:
        if self.variable_rate:
            return dict(self.width_table[1])  # one network for every level
        return dict(self.width_table[self.check_quality(quality)])

    def lmbda(self, quality: float, metric: str = "mse") -> float:
        if metric not in LAMBDAS:
            raise EntryNotFound(f"unknown metric {metric!r}; metrics are {', '.join(METRICS)}")
        if self.variable_rate:
            return ladder_lambda(self.check_level(quality), metric)
        return LAMBDAS[metric][self.check_quality(quality) - 1]


def ladder_lambda(level: float, metric: str = "mse") -> float:
    """λ of a level in [1, 8]: the standard table at integers, log-linear in between."""
    table = LAMBDAS[metric]
    low = min(int(math.floor(level)), len(table) - 1)
    t = level - low
    if t == 0:
        return table[low - 1]
    return math.exp((1 - t) * math.log(table[low - 1]) + t * math.log(table[low]))


def _table(split: int, low: dict[str, int], high: dict[str, int], qualities: int = 8) -> dict[int, dict[str, int]]:
    return {q: dict(low if q <= split else high) for q in range(1, qualities + 1)}


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "bmshj2018-factorized",
            FactorizedPrior,
            _table(5, {"N": 128, "M": 192}, {"N": 192, "M": 320}),
            "Ballé et al. 2018, factorized prior",
        ),
        ArchSpec(
            "bmshj2018-factorized-relu",
            FactorizedPriorReLU,
            _table(5, {"N": 128, "M": 192}, {"N": 192, "M": 320}),
            "Ballé et al. 2018, factorized prior with ReLU instead of GDN",
        ),
        ArchSpec(
            "bmshj2018-hyperprior",
            ScaleHyperprior,
            _table(5, {"N": 128, "M": 192}, {"N": 192, "M": 320}),
            "Ballé et al. 2018, scale hyperprior",
        ),
        ArchSpec(
            "mbt2018-mean",
            MeanScaleHyperprior,
            _table(4, {"N": 128, "M": 192}, {"N": 192, "M": 320}),
            "Minnen et al. 2018, mean-scale hyperprior",
        ),
        ArchSpec(
            "mbt2018",
            JointAutoregressiveHierarchicalPriors,
            _table(4, {"N": 192, "M": 192}, {"N": 192, "M": 320}),
            "Minnen et al. 2018, joint autoregressive and hierarchical priors",
            autoregressive=True,
        ),
        ArchSpec(
            "bmshj2018-hyperprior-vr",
            VariableRateScaleHyperprior,
            _table(8, {"N": 128, "M": 192}, {}),
            "Ballé et al. 2018 scale hyperprior, variable-rate by gain units (Cui et al. 2021)",
            base="bmshj2018-hyperprior",
        ),
        ArchSpec(
            "mbt2018-mean-vr",
            VariableRateMeanScaleHyperprior,
            _table(8, {"N": 128, "M": 192}, {}),
            "Minnen et al. 2018 mean-scale hyperprior, variable-rate by gain units (Cui et al. 2021)",
            base="mbt2018-mean",
        ),
        ArchSpec(
            "mbt2018-vr",
            VariableRateJointAutoregressive,
            _table(8, {"N": 192, "M": 192}, {}),
            "Minnen et al. 2018 joint autoregressive model, variable-rate by gain units (Cui et al. 2021)",
            base="mbt2018",
            autoregressive=True,
        ),
        ArchSpec(
            "cheng2020-anchor",
            Cheng2020Anchor,
            _table(3, {"N": 128}, {"N": 192}, qualities=6),
            "Cheng et al. 2020, anchor",
            autoregressive=True,
        ),
        ArchSpec(
            "cheng2020-attn",
            Cheng2020Attention,
            _table(3, {"N": 128}, {"N": 192}, qualities=6),
            "Cheng et al. 2020, with attention",
            autoregressive=True,
        ),
    )
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise EntryNotFound(f"unknown architecture {name!r}; architectures are {', '.join(ARCHITECTURES)}") from None


def create_model(arch: str, quality: float | None = None, **widths: int) -> CompressionModel:
    """A randomly initialised model: widths given explicitly, else the quality's standard widths."""
    spec = get_arch(arch)
    if not widths:
        if quality is None:
            raise ValueError("give a quality or explicit widths")
        widths = spec.widths(quality)
    unknown = set(widths) - set(spec.width_keys)
    if unknown:
        raise ArchitectureError(f"{arch} takes widths {spec.width_keys}, not {sorted(unknown)}")
    return spec.model_class(**widths)


def infer_widths(arch: str, state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """Read N (and M) from weight shapes, so checkpoints of non-standard widths load too."""
    spec = get_arch(arch)
    try:
        if arch.startswith("cheng2020"):
            return {"N": int(state_dict["g_a.0.conv1.weight"].shape[0])}
        return {"N": int(state_dict["g_a.0.weight"].shape[0]), "M": int(state_dict["g_a.6.weight"].shape[0])}
    except KeyError as exc:
        raise ArchitectureError(f"state dict does not look like {spec.name}: missing {exc.args[0]}") from None


def model_from_state_dict(arch: str, state_dict: Mapping[str, Tensor]) -> CompressionModel:
    """Build the architecture at the checkpoint's widths and load it strictly."""
    model = create_model(arch, **infer_widths(arch, state_dict))
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArchitectureError(f"checkpoint does not fit {arch}: {' '.join(first[:3])[:400]}") from None
    return model
