"""Served (TorchServe) vs in-process throughput for encode and decode of Kodak images.

    python benchmarks/serve.py [--entry DIR] [--images 8] [--requests 16] [--backend torch|onnx]

Starts TorchServe on free loopback ports (token auth off), sends encode then decode requests from 1 and 4
concurrent clients, and compares with the in-process codec of the same backend on the same machine
(--backend onnx: archives carrying the exported graphs, workers running them in ONNX Runtime, 1 thread).
Prints requests/s and p50/p99 latency per endpoint (encode, decode) and combined for each client count, then
the 4-client per-endpoint line `encode_p50_ms=.. encode_p99_ms=.. decode_p50_ms=.. decode_p99_ms=..`, and ends with
`inproc_rps=<x> served_rps=<y> ratio=<y/x> p50_ms=<a> p99_ms=<b>` (4 clients, encode + decode requests together).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
DEFAULT_ENTRY = REPO / "model_store" / "entries" / "bmshj2018-hyperprior" / "q3-mse" / "v1.0"


def post(url: str, body: bytes) -> tuple[float, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        data = r.read()
    return time.perf_counter() - t0, data


def run_clients(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [t for t, _ in pool.map(lambda b: post(url, b), bodies)]
    return len(bodies) / (time.perf_counter() - t0), lat


@dataclass(frozen=True)
class Load:
    """Throughput and latency of one run of requests."""

    rps: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, rps: float, latencies_s: list[float]) -> Load:
        ms = np.array(latencies_s) * 1e3
        return cls(rps, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))

    def __str__(self) -> str:
        return f"{self.rps:.2f} req/s  p50 {self.p50_ms:.0f} ms  p99 {self.p99_ms:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", default=str(DEFAULT_ENTRY))
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    args = ap.parse_args()

    import torch

    import zoo
    from zoo import bitstream
    from zoo.imageio import read_image
    from zoo.serve import build_archives, start, stop

    paths = sorted(KODAK.glob("*.png"))[: args.images]
    pngs = [p.read_bytes() for p in paths]
    bodies = [pngs[i % len(pngs)] for i in range(args.requests)]

    # In-process: the same work a worker does (image bytes -> bitstream, bitstream -> PNG), one process.
    from zoo.imageio import png_bytes

    torch.set_num_threads(1)
    threads = {"ort_threads": 1} if args.backend == "onnx" else {}  # as in a worker
    codec = zoo.load_local(args.entry, backend=args.backend, **threads)
    streams = [bitstream.dumps(codec.compress(read_image(b)[0])) for b in pngs]
    t0 = time.perf_counter()
    for b in bodies:
        bitstream.dumps(codec.compress(read_image(b)[0]))
    for i in range(len(bodies)):
        png_bytes(codec.decompress(bitstream.loads(streams[i % len(streams)])))
    inproc = 2 * len(bodies) / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        build_archives(args.entry, store, name="bench", backend=args.backend, batch_size=4, max_batch_delay_ms=10)
        info = start(store, state_dir=Path(tmp) / "state", auth=False)
        try:
            enc_url, dec_url = (
                f"{info['inference']}/predictions/bench-encode",
                f"{info['inference']}/predictions/bench-decode",
            )
            post(enc_url, pngs[0])
            post(dec_url, streams[0])  # warm up
            results: dict[int, dict[str, Load]] = {}
            for clients in (1, 4):
                t0 = time.perf_counter()
                rps_e, lat_e = run_clients(enc_url, bodies, clients)
                rps_d, lat_d = run_clients(dec_url, [streams[i % len(streams)] for i in range(len(bodies))], clients)
                rps = 2 * len(bodies) / (time.perf_counter() - t0)
                results[clients] = {
                    "encode": Load.of(rps_e, lat_e),
                    "decode": Load.of(rps_d, lat_d),
                    "encode+decode": Load.of(rps, lat_e + lat_d),
                }
                for op, load in results[clients].items():
                    print(f"{clients} client(s) {op}: {load}")
        finally:
            stop(Path(tmp) / "state")
    print(
        f"{args.backend} backend; in-process (1 thread, same requests): {inproc:.2f} req/s; {len(paths)} Kodak images, "
        f"{args.requests} encode + {args.requests} decode requests per run"
    )
    enc, dec, both = (results[4][op] for op in ("encode", "decode", "encode+decode"))
    print(
        f"encode_p50_ms={enc.p50_ms:.0f} encode_p99_ms={enc.p99_ms:.0f} "
        f"decode_p50_ms={dec.p50_ms:.0f} decode_p99_ms={dec.p99_ms:.0f}"
    )
    print(
        f"inproc_rps={inproc:.2f} served_rps={both.rps:.2f} ratio={both.rps / inproc:.3f} "
        f"p50_ms={both.p50_ms:.0f} p99_ms={both.p99_ms:.0f}"
    )


if __name__ == "__main__":
    main()
