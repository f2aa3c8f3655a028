"""The one list of architectures: classes, per-quality widths and λ tables.

The CLI, the Hub entries, export, training and serving all read names and tables from here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from zoo.errors import ArchitectureError, EntryNotFound, InputError
from zoo.models import (
    Cheng2020Anchor,
    Cheng2020AnchorCheckerboard,
    Cheng2020Attention,
    CompressionModel,
    Elic2022Chandelier,
    Elic2022Official,
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
from zoo.points import LAMBDAS as LAMBDAS
from zoo.points import LEVEL_RANGE as LEVEL_RANGE
from zoo.points import LEVELS as LEVELS
from zoo.points import METRICS as METRICS
from zoo.points import check_metric as check_metric

# A width (N, M) may be at most this many times the largest in the architecture's table: room for wider
# experiments, while a weights file that declares N=20000 is refused before anything is allocated. A model
# at twice the largest standard widths is about four times the largest standard model (~400 MB): the most a
# forged entry can make us build before its shapes are refused.
WIDTH_HEADROOM = 2
# ELIC uses 5 channel groups; each one more builds two context networks, so a config's list is bounded.
MAX_CHANNEL_GROUPS = 16


@dataclass(frozen=True)
class ArchSpec:
    name: str
    model_class: type[CompressionModel]
    # quality -> constructor widths, e.g. {"N": 128, "M": 192}
    width_table: Mapping[int, Mapping[str, int]]
    title: str
    autoregressive: bool = False
    # constructor arguments besides the widths that a checkpoint's shapes also fix (ELIC's channel groups)
    structure_keys: tuple[str, ...] = ()
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

    @property
    def max_width(self) -> int:
        return WIDTH_HEADROOM * max(w for widths in self.width_table.values() for w in widths.values())

    def check_widths(self, widths: Mapping[str, Any]) -> dict[str, Any]:
        """Widths with exactly this architecture's keys, each a whole number in 1..max_width, and the structure
        keys a checkpoint may add (ELIC's channel groups: positive whole numbers adding up to M)."""
        plain = {k: v for k, v in widths.items() if k not in self.structure_keys}
        if set(plain) != set(self.width_keys):
            raise ArchitectureError(f"{self.name} takes widths {list(self.width_keys)}, not {sorted(widths)}")
        for key, value in plain.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.max_width:
                raise ArchitectureError(f"{self.name} width {key}={value!r} is out of range (1 to {self.max_width})")
        if "groups" in widths:
            groups = tuple(widths["groups"])
            if len(groups) > MAX_CHANNEL_GROUPS:  # each group is a context model of its own: count them first
                raise ArchitectureError(f"{self.name} has {len(groups)} channel groups, more than {MAX_CHANNEL_GROUPS}")
            if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in groups) or sum(groups) != plain["M"]:
                raise ArchitectureError(
                    f"{self.name} channel groups {groups} must be positive whole numbers adding up to M={plain['M']}"
                )
            plain["groups"] = groups
        return plain

    def check_quality(self, quality: float) -> int:
        """An integer quality of a fixed-rate architecture (for a variable-rate one see `check_level`)."""
        if self.variable_rate:
            raise EntryNotFound(f"{self.name} is variable-rate: it takes a level in {LEVEL_RANGE}, not a fixed quality")
        if isinstance(quality, bool) or not isinstance(quality, numbers.Real):
            raise InputError(f"quality {quality!r} is not a number; {self.name}'s are {self.qualities}")
        if quality not in self.width_table or int(quality) != quality:
            raise EntryNotFound(
                f"{self.name} has no quality {quality}; qualities are {', '.join(map(str, self.qualities))}"
            )
        return int(quality)

    def check_level(self, level: float) -> float:
        """A level in [1, LEVELS] of a variable-rate architecture."""
        if not self.variable_rate:
            raise EntryNotFound(f"{self.name} is fixed-rate: it takes an integer quality, not a level")
        return check_level(level, len(self.width_table))

    def widths(self, quality: float) -> dict[str, int]:
        if self.variable_rate:
            return dict(self.width_table[1])  # one network for every level
        return dict(self.width_table[self.check_quality(quality)])

    def lmbda(self, quality: float, metric: str = "mse") -> float:
        check_metric(metric)
        if self.variable_rate:
            return ladder_lambda(self.check_level(quality), metric)
        return LAMBDAS[metric][self.check_quality(quality) - 1]


def ladder_lambda(level: float, metric: str = "mse") -> float:
    """λ of a level in [1, LEVELS]: the standard table at integers, log-linear in between."""
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
        # Two coding passes per latent (or channel group) instead of one per position: not `autoregressive`.
        ArchSpec(
            "cheng2020-anchor-checkerboard",
            Cheng2020AnchorCheckerboard,
            _table(3, {"N": 128}, {"N": 192}, qualities=6),
            "He et al. 2021, checkerboard context on the Cheng et al. 2020 anchor",
        ),
        ArchSpec(
            "elic2022-official",
            Elic2022Official,
            _table(8, {"N": 192, "M": 320}, {}),
            "He et al. 2022, ELIC: uneven channel groups with checkerboard contexts",
            structure_keys=("groups",),
        ),
        ArchSpec(
            "elic2022-chandelier",
            Elic2022Chandelier,
            _table(8, {"N": 192, "M": 320}, {}),
            "He et al. 2022, ELIC as re-implemented by Chandelier (first and latest group as channel context)",
            structure_keys=("groups",),
        ),
    )
}


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise EntryNotFound(f"unknown architecture {name!r}; architectures are {', '.join(ARCHITECTURES)}") from None


def create_model(arch: str, quality: float | None = None, **widths: Any) -> CompressionModel:
    """A randomly initialised model: widths given explicitly, else the quality's standard widths."""
    spec = get_arch(arch)
    if not widths:
        if quality is None:
            raise ValueError("give a quality or explicit widths")
        widths = spec.widths(quality)
    return spec.model_class(**spec.check_widths(widths))


def check_shapes(model: CompressionModel, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse tensors whose names or shapes do not fit `model` (built at the widths they claim), before any
    of them is read. The integer CDF tables are sized by their data, so only their names are checked."""
    expected = model.state_dict()
    arch = type(model).__name__
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        problems = [
            f"{what} {', '.join(keys[:3])}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        ]
        raise ArchitectureError(f"weights do not fit {arch}: {'; '.join(problems)}")
    for name, tensor in expected.items():
        if tensor.numel() and tuple(shapes[name]) != tuple(tensor.shape):
            raise ArchitectureError(
                f"weights do not fit {arch}: {name} has shape {tuple(shapes[name])}, expected {tuple(tensor.shape)}"
            )


def load_weights(model: CompressionModel, state_dict: Mapping[str, Tensor]) -> CompressionModel:
    """Load a state dict strictly, after `check_shapes`; errors are ArchitectureError."""
    check_shapes(model, {k: tuple(v.shape) for k, v in state_dict.items()})
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArchitectureError(f"weights do not fit {type(model).__name__}: {' '.join(first[:3])[:400]}") from None
    return model


def infer_widths(arch: str, state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Read N (and M, and ELIC's channel groups) from weight shapes, so checkpoints of non-standard widths
    load too."""
    spec = get_arch(arch)
    try:
        if arch.startswith("elic2022"):
            groups: list[int] = []
            prefix = "latent_codec.y.latent_codec.y{}.context_prediction.weight"
            while prefix.format(len(groups)) in state_dict:
                groups.append(int(state_dict[prefix.format(len(groups))].shape[1]))
            if not groups:
                raise KeyError(prefix.format(0))
            n, m = state_dict["g_a.0.weight"].shape[0], state_dict["g_a.13.weight"].shape[0]
            return spec.check_widths({"N": int(n), "M": int(m), "groups": tuple(groups)})
        if arch.startswith("cheng2020"):
            widths = {"N": int(state_dict["g_a.0.conv1.weight"].shape[0])}
        else:
            widths = {"N": int(state_dict["g_a.0.weight"].shape[0]), "M": int(state_dict["g_a.6.weight"].shape[0])}
    except KeyError as exc:
        raise ArchitectureError(f"state dict does not look like {spec.name}: missing {exc.args[0]}") from None
    return spec.check_widths(widths)


def state_dict_from_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The weights in a checkpoint file (see `load_checkpoint`)."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: str | Path, mmap: bool = False) -> tuple[dict[str, Tensor], Any]:
    """The weights in a checkpoint file, the one reader for them, and the whole loaded object (a training run's
    checkpoint also holds its config): a weights-only `torch.load` (nothing else is unpickled), then the
    "state_dict" (CompressAI's train.py) or "model" (zoo training runs) entry when there is one, with
    DataParallel's "module." prefixes removed. `mmap`: tensors stay on disk until read (for a look at the config)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except Exception as exc:  # pickles that weights_only refuses, truncated files, folders, ...
        raise InputError(f"{path} is not a loadable weights-only checkpoint: {exc}") from None
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ArchitectureError(f"{path} holds no state dict")
    return {str(k).removeprefix("module."): v for k, v in state.items()}, ckpt


def model_from_state_dict(arch: str, state_dict: Mapping[str, Tensor]) -> CompressionModel:
    """Build the architecture at the checkpoint's widths and load it strictly. The widths are bounded
    (`ArchSpec.check_widths`) before anything is built, so a small file cannot make a large model."""
    return load_weights(create_model(arch, **infer_widths(arch, state_dict)), state_dict)
