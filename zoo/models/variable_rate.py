"""Variable-rate forms of the hyperprior models: one network for every quality, by per-channel gain units
(Cui et al. 2021, "Asymmetric gained deep image compression with continuous rate adaptation").

    x ── g_a ──> ·g_y(q) ──> y ── h_a ──> ·g_z(q) ──> z ──[EB]──> z_hat ── ·g_z⁻¹(q) ── h_s ──> params ─┐
                            └──────────────────────────[GC]──────────────────> y_hat ── ·g_y⁻¹(q) ── g_s ──> x_hat

Each level q in [1, L] has a positive gain and an inverse gain per latent channel; a fractional level takes
the log-linear mix of its two neighbours, so rate and λ change smoothly between the trained levels.

Every gain sits next to a convolution, so a level *folds* into a standard fixed-rate model of the base
architecture: g_y scales the output channels of g_a's last convolution, g_y⁻¹ the input channels of g_s's
first, and likewise g_z (h_a's last) and g_z⁻¹ (h_s's first). Coding is always done by the folded model
(`fold`), so a level's bitstream *is* that standard model's bitstream, and export, ONNX Runtime, TorchServe
and evaluation need no second code path. The unfolded form exists for training only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.errors import EntryNotFound, InputError
from zoo.models.base import CompressionModel, ForwardOutput
from zoo.models.google import (
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from zoo.points import LEVELS

# Parameter names of the four layers a level folds into, identical in the three base architectures.
G_A_LAST, H_A_LAST, H_S_FIRST, G_S_FIRST = "g_a.6", "h_a.4", "h_s.0", "g_s.0"


def check_level(level: float, levels: int = LEVELS) -> float:
    """A level as a float in [1, levels]: InputError for what is not a number at all, EntryNotFound (saying which
    levels exist) for a number outside them."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise InputError(f"quality {level!r} is not a number; levels are 1 to {levels}") from None
    if not math.isfinite(value):
        raise InputError(f"quality {level!r} is not a finite number; levels are 1 to {levels}")
    if not 1.0 <= value <= levels:
        raise EntryNotFound(f"quality {level!r} is outside the levels 1 to {levels} of a variable-rate entry")
    return value


class GainUnits(nn.Module):
    """A positive gain and inverse gain per (level, channel), stored as natural logs.

    `log_gain[k]` is level k + 1; fractional levels interpolate the logs linearly (a geometric mix of the
    gains), which is exact at integer levels: weights (1, 0) or (0, 1)."""

    def __init__(self, channels: int, levels: int = LEVELS):
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(levels, channels))
        self.log_inverse = nn.Parameter(torch.zeros(levels, channels))

    @property
    def levels(self) -> int:
        return int(self.log_gain.shape[0])

    def forward(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """(gain, inverse), each (B, C, 1, 1), for a (B,) tensor of levels in [1, levels]."""
        gain, inverse = self._mix(level.to(self.log_gain.dtype), self.log_gain, self.log_inverse)
        return gain.exp()[..., None, None], inverse.exp()[..., None, None]

    def _mix(self, level: Tensor, *logs: Tensor) -> list[Tensor]:
        pos = (level - 1).clamp(0, self.levels - 1)
        low = pos.floor().long().clamp(max=self.levels - 2)
        t = (pos - low)[:, None]
        return [(1 - t) * table[low] + t * table[low + 1] for table in logs]

    @torch.no_grad()
    def at(self, level: float) -> tuple[Tensor, Tensor]:
        """(gain, inverse) at one level as float64 (C,) vectors: what `fold` multiplies into the weights."""
        logs = (self.log_gain.double(), self.log_inverse.double())
        level_t = torch.tensor([float(level)], dtype=torch.float64, device=self.log_gain.device)
        gain, inverse = self._mix(level_t, *logs)
        return gain[0].exp(), inverse[0].exp()

    @torch.no_grad()
    def init_from_lambdas(self, lambdas: tuple[float, ...], reference: float, power: float = 0.5) -> None:
        """Start each level's gain at (λ_q / λ_ref)^power (and the inverse at its reciprocal): at high rate
        the MSE-optimal quantization step scales as λ^-1/2, so a model trained at λ_ref starts every level
        near its own rate point instead of all at the reference's."""
        logs = torch.tensor(
            [power * math.log(lam / reference) for lam in lambdas],
            dtype=self.log_gain.dtype,
            device=self.log_gain.device,
        )
        self.log_gain.copy_(logs[:, None].expand_as(self.log_gain))
        self.log_inverse.copy_(-logs[:, None].expand_as(self.log_inverse))


def _scale_out(weight: Tensor, bias: Tensor | None, gain: Tensor) -> tuple[Tensor, Tensor | None]:
    """A Conv2d whose output channels are multiplied by `gain` (float64, computed once, then cast)."""
    w = (weight.double() * gain[:, None, None, None]).to(weight.dtype)
    b = None if bias is None else (bias.double() * gain).to(bias.dtype)
    return w, b


def _scale_in_transposed(weight: Tensor, gain: Tensor) -> Tensor:
    """A ConvTranspose2d (weight laid out as in, out, kh, kw) whose input channels are multiplied by `gain`."""
    return (weight.double() * gain[:, None, None, None]).to(weight.dtype)


class VariableRateMixin:
    """What the three variable-rate classes share: gain units, the level ladder, and folding."""

    base_class: type[CompressionModel]
    y_gain: GainUnits
    z_gain: GainUnits

    def _add_gains(self, N: int, M: int) -> None:
        self.y_gain = GainUnits(M)
        self.z_gain = GainUnits(N)

    @property
    def levels(self) -> int:
        return self.y_gain.levels

    def level_tensor(self, level: Tensor | float, batch: int, device: torch.device) -> Tensor:
        if isinstance(level, Tensor):
            level = level.to(device=device, dtype=torch.float32).reshape(-1)
            return level.expand(batch) if level.numel() == 1 else level
        return torch.full((batch,), float(check_level(level, self.levels)), device=device)

    def gains(self, level: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gy, iy = self.y_gain(level)
        gz, iz = self.z_gain(level)
        return gy, iy, gz, iz

    def gained_hyperprior(self, x: Tensor, level: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The shared front of the three forwards: (gained y, h_s params, z likelihoods, y's inverse gain)."""
        model: ScaleHyperprior = self  # type: ignore[assignment]
        gy, iy, gz, iz = self.gains(self.level_tensor(level, x.shape[0], x.device))
        y = model.g_a(x) * gy
        z_hat, z_lik = model.entropy_bottleneck(model.hyper_analysis(y) * gz)
        return y, model.h_s(z_hat * iz), z_lik, iy

    @torch.no_grad()
    def fold(self, level: float) -> CompressionModel:
        """The standard fixed-rate model this network is at `level`: same widths, gains multiplied into
        the adjacent convolutions, the shared entropy models' tables copied. Loads strict into the base
        class (and so into CompressAI's class of that name)."""
        level = check_level(level, self.levels)
        model = self  # type: ignore[assignment]
        assert isinstance(model, CompressionModel)
        state = {
            k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(("y_gain.", "z_gain."))
        }
        gy, iy = self.y_gain.at(level)
        gz, iz = self.z_gain.at(level)
        for prefix, gain in ((G_A_LAST, gy), (H_A_LAST, gz)):
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = _scale_out(
                state[f"{prefix}.weight"], state[f"{prefix}.bias"], gain
            )
        for prefix, gain in ((H_S_FIRST, iz), (G_S_FIRST, iy)):
            state[f"{prefix}.weight"] = _scale_in_transposed(state[f"{prefix}.weight"], gain)
        widths = {"N": int(getattr(model, "N")), "M": int(getattr(model, "M"))}  # noqa: B009
        folded = self.base_class(**widths)  # built on the CPU: loaded there, then moved to the model's device
        folded.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=True)
        device = next(model.parameters()).device
        return folded.to(device).eval()

    def _compress(self, x):  # pragma: no cover - a guard, not a code path
        raise TypeError("a variable-rate network codes through fold(level): use zoo.load(..., quality=level)")


class VariableRateScaleHyperprior(VariableRateMixin, ScaleHyperprior):
    """bmshj2018-hyperprior-vr: the scale hyperprior with gain units on y and z."""

    base_class = ScaleHyperprior

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M)
        self._add_gains(N, M)

    def forward(self, x: Tensor, level: Tensor | float = 1.0) -> ForwardOutput:  # type: ignore[override]
        y, scales, z_lik, iy = self.gained_hyperprior(x, level)
        y_hat, y_lik = self.gaussian_conditional(y, scales)
        return ForwardOutput(self.g_s(y_hat * iy), {"y": y_lik, "z": z_lik})


class VariableRateMeanScaleHyperprior(VariableRateMixin, MeanScaleHyperprior):
    """mbt2018-mean-vr: the mean-scale hyperprior with gain units on y and z."""

    base_class = MeanScaleHyperprior

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M)
        self._add_gains(N, M)

    def forward(self, x: Tensor, level: Tensor | float = 1.0) -> ForwardOutput:  # type: ignore[override]
        y, params, z_lik, iy = self.gained_hyperprior(x, level)
        scales, means = params.chunk(2, 1)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means=means)
        return ForwardOutput(self.g_s(y_hat * iy), {"y": y_lik, "z": z_lik})


class VariableRateJointAutoregressive(VariableRateMixin, JointAutoregressiveHierarchicalPriors):
    """mbt2018-vr: the joint autoregressive model with gain units on y and z; the context model and the
    entropy parameters work in the gained domain, so they fold unchanged."""

    base_class = JointAutoregressiveHierarchicalPriors

    def __init__(self, N: int = 192, M: int = 192):
        super().__init__(N, M)
        self._add_gains(N, M)

    def forward(self, x: Tensor, level: Tensor | float = 1.0) -> ForwardOutput:  # type: ignore[override]
        y, params, z_lik, iy = self.gained_hyperprior(x, level)
        y_hat = self.gaussian_conditional.quantize(y, "noise" if self.training else "dequantize")
        scales, means = self.context_params(params, y_hat)
        _, y_lik = self.gaussian_conditional(y, scales, means=means)
        x_hat = None if self.rate_only and self.training else self.g_s(y_hat * iy)
        return ForwardOutput(x_hat, {"y": y_lik, "z": z_lik})
