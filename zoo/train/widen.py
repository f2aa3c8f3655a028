"""Grow a trained model into larger widths without changing what it computes at the start: the warm start
for qualities whose standard widths are larger than their neighbour's (CompressAI's q6-8 use N=192, M=320)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from zoo.entropy import EntropyBottleneck
from zoo.errors import InputError
from zoo.layers import GDN


def _fits(name: str, small: Tensor, big: Tensor) -> None:
    if small.dim() != big.dim() or any(s > b for s, b in zip(small.shape, big.shape, strict=True)):
        raise InputError(f"cannot widen {name}: {tuple(small.shape)} does not fit into {tuple(big.shape)}")


def _copy_conv(prefix: str, module: nn.Conv2d | nn.ConvTranspose2d, state: Mapping[str, Tensor]) -> list[str]:
    """Old channels keep their weights; weights reading new input channels are zero, so the new channels
    change nothing until trained; new output channels keep their random init, so gradients reach them."""
    weight: Tensor = module.weight
    src = state[prefix + "weight"]
    _fits(prefix + "weight", src, weight)
    if src.shape[2:] != weight.shape[2:]:
        raise InputError(f"cannot widen {prefix}weight: kernel {tuple(src.shape[2:])} vs {tuple(weight.shape[2:])}")
    in_dim = 0 if isinstance(module, nn.ConvTranspose2d) else 1  # transposed convs store (in, out, kh, kw)
    weight.narrow(in_dim, src.shape[in_dim], weight.shape[in_dim] - src.shape[in_dim]).zero_()
    weight[tuple(slice(0, n) for n in src.shape)] = src
    names = [prefix + "weight"]
    if module.bias is not None:
        module.bias[: src.shape[1 - in_dim]] = state[prefix + "bias"]
        names.append(prefix + "bias")
    return names


def _copy_leading(prefix: str, module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Per-channel parameters (channels first): old channels copied, new ones keep their init. For GDN's
    gamma this leaves new cross terms at their init, zero, so old channels are normalised as before."""
    names = []
    for pname, p in module.named_parameters():
        src = state[prefix + pname]
        _fits(prefix + pname, src, p)
        p[tuple(slice(0, n) for n in src.shape)] = src
        names.append(prefix + pname)
    return names


def _copy_gains(prefix: str, module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Gain units are (levels, channels): old channels keep their gains; a new channel starts at the mean of
    the old ones per level, so it sits at its level's typical step size."""
    names = []
    for pname, p in module.named_parameters():
        src = state[prefix + pname]
        _fits(prefix + pname, src, p)
        if src.shape[0] != p.shape[0]:
            raise InputError(f"cannot widen {prefix + pname}: {src.shape[0]} levels, this model has {p.shape[0]}")
        p.copy_(src.mean(dim=1, keepdim=True).expand_as(p))
        p[:, : src.shape[1]] = src
        names.append(prefix + pname)
    return names


@torch.no_grad()
def widen_into(target: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a narrower model's state dict into `target` (same architecture, widths ≥ the source's).

    Only for models whose layers' channels are one group each: in the mean-scale models (mbt2018,
    cheng2020) h_s and the entropy parameters emit [scales | means] halves that a plain copy would mix."""
    from zoo.models.google import FactorizedPrior, ScaleHyperprior
    from zoo.models.variable_rate import GainUnits, VariableRateScaleHyperprior

    if type(target) not in (ScaleHyperprior, VariableRateScaleHyperprior) and not isinstance(target, FactorizedPrior):
        raise InputError(
            f"widening is implemented for the factorized and scale-hyperprior models, not {type(target).__name__}"
        )
    done: list[str] = []
    try:
        for name, module in target.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                done += _copy_conv(prefix, module, state)
            elif isinstance(module, GDN | EntropyBottleneck):
                done += _copy_leading(prefix, module, state)
            elif isinstance(module, GainUnits):
                done += _copy_gains(prefix, module, state)
    except KeyError as exc:
        raise InputError(f"cannot widen: the source has no {exc.args[0]}") from None
    left = sorted(set(dict(target.named_parameters())) - set(done))
    if left:
        raise InputError(f"cannot widen: no rule for parameter {left[0]}")
