"""Which reduced precision a CPU or GPU runs fast: shared by training and encode-time refinement."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions in hardware (AMX tiles or AVX-512 BF16): there, `--amp bf16
    --channels-last` trains about 2.5x faster per CPU-second (docs/history.md); elsewhere bf16 is emulated
    and slower than float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is faster than float32 on `device`: a CUDA GPU that supports it, or a CPU
    with bfloat16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()
