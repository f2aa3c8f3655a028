"""A simulated accelerator for tests on CPU-only machines: tensors that say they live on another device, compute
on the CPU underneath, and fail the way a real device fails when code forgets where its tensors are.

`SimTensor` wraps a CPU tensor and reports device "meta". Every aten op on it runs on the wrapped tensors and
wraps its results again, but first refuses, as CUDA does, an op that mixes it with a CPU tensor (0-dim CPU
tensors excepted, as on CUDA). `.numpy()` fails as on CUDA (torch refuses it on a tensor subclass), and
`.cpu()` / `.to("cpu")` return plain CPU tensors. While `simulated_device()` is active, factory functions and
`.to()` that name the device make `SimTensor`s, so `torch.zeros(..., device=model_device)` works as it would.
Nothing here can hide a device bug that a real GPU would show in the operations these models use: results are
bit-identical to the CPU's, so a test can also compare streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# "meta": a device type every build knows (a wrapper that says "cuda" aborts CPU-only builds in device guards).
DEVICE = torch.device("meta")


def _is_sim_device(device: Any) -> bool:
    if device is None:
        return False
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError):
        return False
    return device.type == DEVICE.type


class SimTensor(torch.Tensor):
    _inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> SimTensor:
        assert not isinstance(inner, SimTensor) and inner.device.type == "cpu"
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            device=DEVICE,
            requires_grad=inner.requires_grad,
        )
        out._inner = inner
        return out

    # A traceable wrapper subclass: nn.Module._apply (.double(), .to()) swaps such parameters whole instead
    # of assigning .data, which would leave the wrapped tensor behind.
    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["_inner"], None

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], meta: None, size: Any, stride: Any) -> SimTensor:
        return SimTensor(inner["_inner"])

    def data_ptr(self) -> int:  # type: ignore[override]
        return self._inner.data_ptr()

    def __repr__(self, **kwargs: Any) -> str:  # type: ignore[override]
        return f"SimTensor({self._inner!r}, device={DEVICE})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        wrappers: dict[int, SimTensor] = {}

        def unwrap(t: Any) -> Any:
            if isinstance(t, SimTensor):
                wrappers[id(t._inner)] = t
                return t._inner
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two devices, {DEVICE} "
                    f"and {t.device}! ({func})"
                )
            return t

        to_device = kwargs.get("device")
        inner_args, inner_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if "device" in inner_kwargs and (to_device is None or _is_sim_device(to_device)):
            inner_kwargs["device"] = torch.device("cpu")
        out = func(*inner_args, **inner_kwargs)
        if to_device is not None and torch.device(to_device).type == "cpu":
            return out  # .cpu(), .to("cpu"): a plain CPU tensor

        def wrap(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and not isinstance(t, SimTensor):
                known = wrappers.get(id(t))  # in-place ops return their own argument
                return known if known is not None else SimTensor(t)
            return t

        return tree_map(wrap, out)


class _Factories(TorchFunctionMode):
    """Factory functions and `.to()` that name the simulated device make SimTensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and not isinstance(args[0], SimTensor):
            device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            if _is_sim_device(device):
                return SimTensor(args[0].to(dtype=dtype) if dtype is not None else args[0])
        elif _is_sim_device(kwargs.get("device")) and not any(isinstance(a, SimTensor) for a in args):
            return SimTensor(func(*args, **{**kwargs, "device": "cpu"}))
        return func(*args, **kwargs)


def to_simulated_device(model: nn.Module) -> nn.Module:
    """Moves every parameter and buffer of `model` onto the simulated device, like `model.cuda()` (parameters
    become plain SimTensors: inference needs no Parameter)."""
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None and not isinstance(t, SimTensor):
                    store[name] = SimTensor(t.detach())  # type: ignore[assignment]
    return model


@contextmanager
def simulated_device() -> Iterator[torch.device]:
    with _Factories():
        yield DEVICE
