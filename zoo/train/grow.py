"""Growing a context model (mbt2018, mbt2018-vr) out of a trained mean-scale hyperprior of the same widths.

mbt2018's transforms, hyperprior and gain units have exactly mbt2018-mean's layout; only the context prediction
(a masked 5x5 convolution on y_hat) and the entropy parameters (three 1x1 convolutions from the hyperprior's
params and the context to scales and means) are new. Two starts for the new parts:

    "identity"  the entropy parameters pass the hyperprior's (scales, means) through unchanged and ignore the
                context, so the grown model starts *exactly* at the mean-scale model's rate and distortion.
                Each 1x1 layer routes channel i to channel i; the means ride on a per-channel offset `c` that
                keeps them positive through the LeakyReLUs (measured on training crops), removed by the last
                layer's bias. Scales pass as they are: a negative scale comes out of a LeakyReLU as a smaller
                negative one, and both are raised to the same lower bound by the Gaussian conditional. The
                remaining hidden channels keep their random input weights and get zero output weights, so
                the context has a gradient path from the first step while contributing nothing at step 0.
    "default"   PyTorch's default initialization of the new layers (CompressAI's start from scratch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zoo.entropy import TABLE_BUFFERS

CONTEXT_STARTS = ("identity", "default")
NEW_PARTS = ("context_prediction.", "entropy_parameters.")


def is_mean_scale_source(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether `state` is a mean-scale hyperprior from which this context model can be grown: the model has
    the context parts, the state lacks them, and has every other weight."""
    if not hasattr(model, "context_prediction") or any(k.startswith(NEW_PARTS) for k in state):
        return False
    shared = [k for k in model.state_dict() if not k.startswith(NEW_PARTS) and _not_table(k)]
    return all(k in state for k in shared)


def _not_table(key: str) -> bool:
    return key.rsplit(".", 1)[-1] not in TABLE_BUFFERS


def take_shared(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Load every weight the model shares with the mean-scale `state` (the integer tables excepted: they are
    derived from the weights). Returns the names of the tensors left new. Shapes must match."""
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if k in own and _not_table(k)}
    for k, v in shared.items():
        if tuple(v.shape) != tuple(own[k].shape) and own[k].numel():  # an empty buffer takes the source's size
            raise ValueError(f"{k} is {tuple(v.shape)} in the source, {tuple(own[k].shape)} in this model")
    model.load_state_dict(shared, strict=False)
    return sorted(k for k in own if k not in shared and _not_table(k))


@torch.no_grad()
def mean_offsets(means: Tensor, margin: float = 1.0) -> Tensor:
    """Per-channel offsets that make (means + c) positive over the calibration means (B, M, h, w): 1.5x the
    most negative mean seen, plus a margin for crops not seen."""
    lowest = means.transpose(0, 1).reshape(means.shape[1], -1).amin(dim=1)
    return 1.5 * (-lowest).clamp(min=0) + margin


@torch.no_grad()
def grow_identity(model: Any, offsets: Tensor) -> None:
    """Set the entropy parameters to pass (scales, means) through and the context to contribute nothing yet."""
    ep = model.entropy_parameters
    layers = [m for m in ep if isinstance(m, nn.Conv2d)]
    if len(layers) != 3:
        raise ValueError("entropy_parameters: three 1x1 convolutions expected")
    m = int(offsets.numel())
    two_m = 2 * m
    first, middle, last = layers
    assert first.bias is not None and middle.bias is not None and last.bias is not None
    if first.in_channels != 2 * two_m or middle.in_channels < two_m or last.out_channels != two_m:
        raise ValueError("entropy_parameters' widths do not fit M")
    c = offsets.to(first.weight.dtype)
    eye = torch.eye(two_m, dtype=first.weight.dtype)
    # first: params (the first 2M inputs) to the first 2M hidden channels, the means shifted by c
    first.weight[:two_m].zero_()
    first.weight[:two_m, :two_m, 0, 0] = eye
    first.bias[:two_m] = torch.cat((torch.zeros_like(c), c))
    # middle: the same 2M channels through; its other rows keep their random weights over all inputs
    middle.weight[:two_m].zero_()
    middle.weight[:two_m, :two_m, 0, 0] = eye
    middle.bias[:two_m].zero_()
    # last: scales and means back, the shift removed; the random hidden channels weighted 0 for now
    last.weight.zero_()
    last.weight[:, :two_m, 0, 0] = eye
    last.bias.copy_(torch.cat((torch.zeros_like(c), -c)))


@torch.no_grad()
def calibration_means(model: Any, crops: Tensor, levels: tuple[float, ...] | None) -> Tensor:
    """The hyperprior's predicted means over `crops` (B, 3, H, W), at every level for a variable-rate model:
    z rounded, in float32, as the training forward computes them."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for level in levels or (None,):
            if level is None:
                y = model.g_a(crops)
                z_hat, _ = model.entropy_bottleneck(model.hyper_analysis(y))
                params = model.h_s(z_hat)
            else:
                _, params, _, _ = model.gained_hyperprior(crops, level)
            out.append(params.chunk(2, 1)[1])
        return torch.cat(out)
    finally:
        model.train(was_training)


def grow_context_model(model: Any, state: dict[str, Tensor], start: str, crops: Tensor | None = None) -> str:
    """Take every shared weight of the mean-scale `state`, then start the context parts as `start` says.
    "identity" needs calibration `crops` from the training data. Returns a description for the model card."""
    if start not in CONTEXT_STARTS:
        raise ValueError(f"the context start is one of {', '.join(CONTEXT_STARTS)}, not {start!r}")
    take_shared(model, state)
    if start == "default":
        return "context prediction and entropy parameters at PyTorch's default initialization"
    if crops is None:
        raise ValueError("the identity start needs calibration crops")
    levels = tuple(float(q) for q in range(1, model.levels + 1)) if hasattr(model, "levels") else None
    offsets = mean_offsets(calibration_means(model, crops, levels))
    grow_identity(model, offsets)
    return (
        "entropy parameters start as the identity on the hyperprior's scales and means (offsets "
        f"{float(offsets.min()):.2f}-{float(offsets.max()):.2f} on the means), context weighted 0"
    )
