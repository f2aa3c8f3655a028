"""Native entropy coding: integer symbols + integer CDF tables -> bytes, and back (C extension zoo._rans).

Bytes depend only on integers, so any platform that computes the same table indexes decodes bit-exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo import _rans  # type: ignore[attr-defined]
from zoo.errors import BitstreamError, TablesMissingError

PRECISION: int = _rans.PRECISION
_LUT_SIZE: int = _rans.LUT_SIZE
_LUT_SHIFT = PRECISION - ((_LUT_SIZE - 1).bit_length() - 1)  # slot >> shift picks the lut entry


def _int32(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int32)


class CdfTables:
    """Validated, contiguous int32 copies of a set of CDF tables (CompressAI layout, 16-bit precision),
    plus a small per-table lookup that lets the decoder find a symbol in a step or two."""

    def __init__(self, cdfs: Any, cdf_lengths: Any, offsets: Any):
        cdf = _int32(cdfs, "cdfs")
        lengths = _int32(cdf_lengths, "cdf_lengths").reshape(-1)
        offs = _int32(offsets, "offsets").reshape(-1)
        if cdf.size == 0 or lengths.size == 0 or not np.any(cdf):
            raise TablesMissingError("CDF tables are empty: call model.update() to compute them")
        if cdf.ndim != 2 or cdf.shape[0] != lengths.size or offs.size != lengths.size:
            raise ValueError(f"inconsistent table shapes {cdf.shape}, {lengths.shape}, {offs.shape}")
        if np.any(lengths < 3) or np.any(lengths > cdf.shape[1]):
            raise ValueError("cdf_lengths out of range")
        lut = np.empty((lengths.size, _LUT_SIZE), dtype=np.int32)
        slots = np.arange(_LUT_SIZE, dtype=np.int64) << _LUT_SHIFT
        for t, n in enumerate(lengths.tolist()):
            row = cdf[t, :n].astype(np.int64)
            if row[0] != 0 or row[-1] != 1 << PRECISION or np.any(np.diff(row) < 1):
                raise ValueError(f"CDF table {t} is not a strictly increasing table from 0 to {1 << PRECISION}")
            # lut[j]: the symbol whose interval holds slot j << shift (capped at the escape symbol)
            lut[t] = np.minimum(np.searchsorted(row[1:], slots, side="right"), n - 2)
        self.cdf, self.lengths, self.offsets, self.lut = cdf, lengths, offs, lut
        self.stride = int(cdf.shape[1])

    def __len__(self) -> int:
        return int(self.lengths.size)

    def _args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        return self.cdf, self.lengths, self.offsets, self.lut, self.stride


class Encoder:
    """Accumulates symbols from several `push` calls (possibly with different tables) into one stream."""

    def __init__(self) -> None:
        self._enc = _rans.Encoder()

    def push(self, symbols: Any, indexes: Any, tables: CdfTables) -> None:
        sym, idx = _int32(symbols, "symbols").reshape(-1), _int32(indexes, "indexes").reshape(-1)
        if sym.size != idx.size:
            raise ValueError(f"{sym.size} symbols but {idx.size} indexes")
        self._enc.push(sym, idx, *tables._args())

    def flush(self) -> bytes:
        return self._enc.flush()


class Decoder:
    """Decodes one stream across any number of `decode` calls; the coder state lives in C between calls,
    which is what autoregressive models need (one call per spatial position)."""

    def __init__(self, data: bytes):
        try:
            self._dec = _rans.Decoder(bytes(data))
        except EOFError as exc:
            raise BitstreamError(str(exc)) from None

    def decode(self, indexes: Any, tables: CdfTables) -> np.ndarray:
        idx = _int32(indexes, "indexes")
        out = np.empty(idx.shape, dtype=np.int32)
        try:
            self._dec.decode(idx.reshape(-1), out.reshape(-1), *tables._args())
        except EOFError as exc:
            raise BitstreamError(str(exc)) from None
        return out

    def finished(self) -> bool:
        """True when every byte was consumed and the coder returned to its initial state."""
        return bool(self._dec.finished())


def encode(symbols: Any, indexes: Any, tables: CdfTables) -> bytes:
    enc = Encoder()
    enc.push(symbols, indexes, tables)
    return enc.flush()


def decode(data: bytes, indexes: Any, tables: CdfTables) -> np.ndarray:
    """Decode exactly as many symbols as there are indexes; a stream with bytes left over or missing
    is a BitstreamError."""
    dec = Decoder(data)
    out = dec.decode(indexes, tables)
    if not dec.finished():
        raise BitstreamError("entropy-coded stream does not end where its symbols do (corrupt or truncated)")
    return out
