"""Codecs from entries: an entry folder, or an entry already loaded, to a ready `zoo.codec.Codec` (a variable-rate
entry at one level, on the torch or the ONNX Runtime backend).
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoo.compressed import EntryId
from zoo.entry import EntryInfo, load_entry
from zoo.errors import EntryNotFound, InputError
from zoo.models.base import CompressionModel
from zoo.registry import LEVEL_RANGE, get_arch


def codec_from_entry(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    ort_threads: int | None = None,
    level: float | None = None,
    **codec_kwargs,
):
    """A ready `zoo.codec.Codec` for an entry folder. `ort_threads`: ONNX Runtime's intra-op threads for the
    onnx backend (default: ONNX Runtime's own choice, one per core). `level`: the operating point of a
    variable-rate entry, in LEVEL_RANGE; the codec runs the standard model that level folds into."""

    if backend not in ("torch", "onnx"):
        raise InputError(f"unknown backend {backend!r}; backends are torch, onnx")
    if ort_threads is not None and (backend != "onnx" or ort_threads < 1):
        raise InputError(f"ort_threads={ort_threads} needs backend='onnx' and a count of at least 1")
    model, info = load_entry(path, device)
    return codec_for_model(model, info, backend, ort_threads, level, path=path, **codec_kwargs)


def codec_for_model(
    model: CompressionModel,
    info: EntryInfo,
    backend: str = "torch",
    ort_threads: int | None = None,
    level: float | None = None,
    path: str | Path = "",
    **codec_kwargs,
):
    """A `Codec` for an entry already loaded (`load_entry`), at `level` for a variable-rate entry: the folded
    standard model codes. Loading once and calling this per level costs one read of the weights."""
    from zoo.codec import Codec

    entry = info.entry
    if info.variable_rate:
        if level is None:
            raise InputError(f"{entry.arch} is variable-rate: give a quality (level) in {LEVEL_RANGE}")
        level = get_arch(entry.arch).check_level(level)
        model = model.fold(level)  # type: ignore[operator]
        entry = EntryId(entry.arch, entry.quality, entry.metric, entry.version, level)
    elif level is not None and level != entry.quality:
        raise EntryNotFound(f"{path or entry} is the fixed-rate entry {entry}: it has no level {level}")
    if backend == "onnx":
        from zoo.export.ort_backend import to_onnx_backend  # type: ignore[import-not-found]

        model = to_onnx_backend(model, threads=ort_threads)
    return Codec(model, entry, info.fingerprint, **codec_kwargs)
