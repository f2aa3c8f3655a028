"""Entropy-coder throughput on a Kodak-sized latent: 192x32x48 Gaussian symbols with log-normal scales.

    python benchmarks/coder.py

Ends with `encode_Msym_s=<x> decode_Msym_s=<y> bits_per_symbol=<z>`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from zoo.coder import CdfTables, decode, encode
from zoo.entropy import GaussianConditional, default_scale_table


def main(repeats: int = 7) -> None:
    rng = np.random.default_rng(0)
    gc = GaussianConditional(None)
    gc.update_scale_table(default_scale_table(), force=True)
    tables: CdfTables = gc.tables()

    shape = (192, 32, 48)
    scales = np.exp(rng.normal(np.log(2.0), 1.0, size=shape)).astype(np.float32)
    symbols = np.round(rng.normal(0.0, scales)).astype(np.int32)
    indexes = gc.build_indexes(torch.from_numpy(scales)).numpy().astype(np.int32)
    n = symbols.size

    # Ideal code length under the same (quantized) tables the coder uses.
    lik = gc._likelihood(torch.from_numpy(symbols.astype(np.float32)), torch.from_numpy(scales))
    ideal_bits = float((-torch.log2(lik.clamp_min(1e-9))).sum())

    enc_t, dec_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = encode(symbols, indexes, tables)
        enc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = decode(data, indexes, tables)
        dec_t.append(time.perf_counter() - t0)
        assert np.array_equal(out, symbols)
    enc, dec = n / min(enc_t) / 1e6, n / min(dec_t) / 1e6
    bits = 8 * len(data) / n
    print(f"symbols: {n} ({'x'.join(map(str, shape))}), scales log-normal (median 2.0, sigma 1.0)")
    print(
        f"stream: {len(data)} bytes; ideal (continuous Gaussian) {ideal_bits / 8:.0f} bytes; "
        f"overhead {100 * (8 * len(data) / ideal_bits - 1):+.2f}%"
    )
    print(f"encode best of {repeats}: {1e3 * min(enc_t):.2f} ms; decode: {1e3 * min(dec_t):.2f} ms")
    print("reference (CompressAI 1.2.8 rANS, this machine): encode ~13 Msym/s, decode ~10 Msym/s")
    print(f"encode_Msym_s={enc:.1f} decode_Msym_s={dec:.1f} bits_per_symbol={bits:.4f}")
    assert math.isfinite(bits)


if __name__ == "__main__":
    main()
