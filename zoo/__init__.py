"""zoo: pretrained learned image codecs you can load in one line, with real files and a server.

codec = zoo.load("bmshj2018-hyperprior", quality=3)
data = zoo.bitstream.dumps(codec.compress(x))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.compressed import Compressed, EntryId, TileStreams
from zoo.errors import (
    BitstreamError,
    EntryNotFound,
    HubError,
    InputError,
    IntegrityError,
    TablesMissingError,
    ZooError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from zoo.codec import Codec


def load(name: str, quality: float | None = None, *, source: str = "zoo", **kwargs: Any) -> Codec:
    """A ready codec for a released entry, e.g. `zoo.load("bmshj2018-hyperprior", quality=3)`; a variable-rate
    entry takes any level in `zoo.points.LEVEL_RANGE`, e.g. `zoo.load("bmshj2018-hyperprior-vr", quality=3.5)`.
    Any other model argument (entry folder, hf-hub:ORG/NAME[@REV], checkpoint with arch=) as `zoo.resolve` says.

    `source="compressai"` loads CompressAI's own published weights for that name instead, downloaded and
    verified once, then cached as an entry (docs/compressai.md)."""
    if source == "compressai":
        from zoo.compressai import load as _load_compressai

        return _load_compressai(name, quality, **kwargs)
    if source != "zoo":
        raise InputError(f"unknown source {source!r}; sources are zoo, compressai")
    from zoo.resolve import load as _load

    return _load(name, quality=quality, **kwargs)


def load_local(path: str | Path, **kwargs: Any) -> Codec:
    """A ready codec from an entry folder on disk (config.json + model.safetensors)."""
    from zoo.resolve import load_local as _load_local

    return _load_local(path, **kwargs)


__all__ = [
    "BitstreamError",
    "Compressed",
    "EntryId",
    "EntryNotFound",
    "HubError",
    "InputError",
    "IntegrityError",
    "TablesMissingError",
    "TileStreams",
    "ZooError",
    "load",
    "load_local",
]
