"""What a forged file can make a decoder spend at the default limits: peak memory and time to refusal.

    python benchmarks/decode_limits.py [--entry DIR] [--factorized DIR] [--skip-handler] [--skip-legal-max]
        [--only-moved-tiles]

Each decode runs in a fresh process (so its peak RSS is its own), through `zoo.codec.Codec` and, for the
TorchServe case, through zoo/handlers/zoo_handler.py's decode handler with a stub context. The forged files are valid
zoo files made here from all-zero latents by a codec whose limits are raised (what an attacker's encoder does):

    moved-tiles-4096x4096  16 tiles of 1024, each carrying tile 0's table row and streams (a splice): refused
                           by tile 1's check before any tile is decoded
    moved-tiles-resealed-4096x4096  the same with every tile check recomputed (a forger who knows the format):
                           refused by tile 1's index checksum once tiles 0 and 1 are decoded, not all 16
    grid-2000x2000-tile1   a 2-tile format-2 file edited to declare a 2000x2000 image in tiles of 1 px (checksums
                           redone); format 3 states no tile count, so its grid is refused by arithmetic
    one-tile-8000x8000     one 8000x8000 tile (tile size 0), factorized entry
    one-tile-2048x2048     one 2048x2048 tile, largest-width hyperprior entry (also through the handler)
    one-tile-1024x1024     one tile at the default per-tile limit, largest-width entry: decodes (the worst legal tile)
    two-tiles-1024x2048    two such tiles: decodes; the second adds its share of the output, not another tile's peak
    legal-max-8192x8192    the largest image the default limits allow (Codec DEFAULT_MAX_PIXELS, 64 megapixels, in
                           64 tiles of 1024), really encoded from a synthetic image: decodes. Encoding it takes
                           minutes, so the file is kept in $TMPDIR/zoo-decode-limits/ and reused (its encode time
                           and peak RSS are printed from that first run)

Every decode is what `zoo decode` does (`Codec.decompress_uint8`, then the PNG written to a file); the
TorchServe case is the handler's own decode.

Prints one line per case, then `max_peak_rss_mb=<a> max_refusal_s=<b>`; targets: peak RSS <= 1536 MB and every
refusal in < 1 s.

Moved tiles, measured 2026-12-07 at load 14-16 with bmshj2018-hyperprior q1 v1.1 (`--only-moved-tiles`): the
splice refused in < 1 ms at the loaded model's 286 MB; with every check recomputed, refused at tile 1 after
28.7 s and 906 MB (two of 16 tiles decoded; format 2 decoded all 16 before its image checksum refused them).

Measured 2026-11-26 on the project's 2-core machine at load 12-22 (so times are upper bounds), hyperprior q7 v1.0:
refusals in <= 0.2 s at <= 369 MB; one 1024^2 tile 1180 MB, two 1218 MB. The legal maximum (7.4 MB file) took
3189 s and 2397 MB to encode; a full decode of its 64 tiles needs about 64 x 5 CPU-seconds, which that machine could
not give in the time, so its figure is the bound `--only-legal-max --legal-max-tiles 1`: 1381 MB (the model 359 MB,
the resident 8-bit output 192 MB, one tile's decode, then the 64-megapixel PNG written). The same bound for the
decode path before `decompress_uint8` (float output, `to_uint8` of the whole image, then `png_bytes`), measured with a
one-off script on the same file: 1908 MB after the tile, 2702 MB peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRIES = REPO / "model_store" / "entries"
DEFAULT_ENTRY = ENTRIES / "bmshj2018-hyperprior" / "q7-mse" / "v1.0"  # the largest widths shipped (N=192, M=320)
DEFAULT_FACTORIZED = ENTRIES / "bmshj2018-factorized" / "q5-mse" / "v1.0"


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec, so a child would
    report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- forging (parent process) --------------------------------------------------------------------


def forge(entry: Path, height: int, width: int, tile_size: int, version: int | None = None) -> bytes:
    """A valid file for `entry` declaring that geometry, coded from all-zero latents (so forging costs no
    analysis transform, and the payload is tiny), in this zoo's format or an older `version`."""
    import torch

    import zoo
    from zoo import bitstream
    from zoo.mirror import entry_folder

    codec = zoo.load_local(entry_folder(entry), tile_size=tile_size, max_tile_pixels=1 << 62)
    model = codec.model
    factor = 16  # g_a's downsampling in every architecture here

    class ZeroLatent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], model.M, x.shape[-2] // factor, x.shape[-1] // factor)

    model.g_a = ZeroLatent()
    image = torch.zeros(3, 1, 1).expand(3, height, width)  # no pixel memory: only the shape is read
    c = codec.compress(image)
    if version is not None and version < 3:  # formats 1 and 2 store the whole fingerprint, no per-tile checks
        c = dataclasses.replace(c, format_version=version, fingerprint=codec.fingerprint, tile_checksums=())
    return bitstream.dumps(c)


def reseal(buf: bytearray) -> bytes:
    (body_len,) = struct.unpack_from("<I", buf, 6)
    end = 10 + body_len
    struct.pack_into("<I", buf, end, zlib.crc32(bytes(buf[:end])))
    struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


def grid_bomb(entry: Path) -> bytes:
    """A real 2-tile format-2 file (which states its tile count) whose header then claims a 2000x2000 image in
    1-pixel tiles. Format 3 states no count: its grid follows from the sizes, refused by arithmetic alone."""
    from zoo import bitstream

    data = bytearray(forge(entry, 64, 128, 64, version=2))
    pos = 10
    for _ in range(3):  # arch, quality (u16) between, metric, version
        pos += 1 + data[pos] + (2 if pos == 10 else 0)
    pos += bitstream.FINGERPRINT_BYTES
    height, width, _, _, tile_size, _ = struct.unpack_from("<IIBBII", data, pos)
    assert (height, width, tile_size) == (64, 128, 64), "header layout changed"
    struct.pack_into("<II", data, pos, 2000, 2000)
    struct.pack_into("<I", data, pos + 10, 1)
    return reseal(data)


def moved_tiles(entry: Path, resealed: bool) -> bytes:
    """A 4096x4096 file in 16 tiles, every one carrying tile 0's table row and streams (all tiles have one size,
    so the lengths fit). Not `resealed`: the rows are copied whole, tile checks included, as a splice makes
    them; `resealed`: every tile check recomputed, as a forger who knows the format does."""
    from zoo import bitstream
    from zoo.compressed import combine_checksums

    c = bitstream.loads(forge(entry, 4096, 4096, 1024))
    tiles = tuple(dataclasses.replace(c.tiles[0], rect=t.rect) for t in c.tiles)
    checks = (c.tile_checksums[0],) * len(tiles)
    moved = dataclasses.replace(c, tiles=tiles, tile_checksums=checks, index_checksum=combine_checksums(checks))
    data = bitstream.dumps(moved)
    if resealed:
        return data
    # every row has one length: tile 0's check copied into the other rows
    row = sum(max(1, -(-n.bit_length() // 7)) for _, n in c.tiles[0].lengths) + 8
    table = bitstream.peek_header(bitstream.dumps(c)).header_bytes - sum(
        sum(max(1, -(-n.bit_length() // 7)) for _, n in t.lengths) + 8 for t in c.tiles
    )
    buf = bytearray(data)
    check0 = data[table + row - 4 : table + row]
    for i in range(1, len(tiles)):
        buf[table + (i + 1) * row - 4 : table + (i + 1) * row] = check0
    return bytes(buf)


def legal_max_file(entry: Path) -> tuple[Path, dict]:
    """The largest image the default limits allow, encoded by `entry` with the default tiles, made once in a
    child process and cached; returns the file and its encode figures."""
    from zoo.codec import DEFAULT_MAX_PIXELS

    side = math.isqrt(DEFAULT_MAX_PIXELS)
    fingerprint = json.loads((entry / "config.json").read_text())["weights_fingerprint"]
    folder = Path(tempfile.gettempdir()) / "zoo-decode-limits"
    folder.mkdir(exist_ok=True)
    path = folder / f"{fingerprint}-{side}x{side}.zoo"
    stats = path.with_suffix(".json")
    if not (path.exists() and stats.exists()):
        cmd = [sys.executable, __file__, "--encode-child", str(entry), str(path), str(side)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            sys.exit(f"encoding the legal maximum failed:\n{proc.stderr.strip()}")
        stats.write_text(proc.stdout.strip().splitlines()[-1])
    return path, json.loads(stats.read_text())


def encode_child(entry: str, path: str, side: int) -> None:
    """Encode a synthetic side x side image (smooth gradients with fine texture, like a photo's mix of flat areas
    and detail) with the default tile size, as `zoo encode` does."""
    import torch

    import zoo
    from zoo import bitstream
    from zoo.mirror import entry_folder

    codec = zoo.load_local(entry_folder(entry))
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, side)
    x = torch.empty(3, side, side)
    x[0] = ramp[:, None] * 0.7
    x[1] = ramp[None, :] * 0.7
    x[2] = (x[0] + x[1]) / 2
    texture = torch.rand(3, 1, 64, 1, 64, generator=g).mul_(0.3)
    x.view(3, side // 64, 64, side // 64, 64).add_(texture)  # broadcast: no second copy of the image
    t0 = time.perf_counter()
    c = codec.compress(x)
    data = bitstream.dumps(c)
    seconds = time.perf_counter() - t0
    Path(path).write_bytes(data)
    print(json.dumps({"encode_s": seconds, "encode_peak_mb": peak_rss_mb(), "bytes": len(data), "tiles": len(c.tiles)}))


# -- decoding (child process) --------------------------------------------------------------------


class _Context:
    """The parts of TorchServe's context the handler uses."""

    def __init__(self, model_dir: str):
        self.system_properties = {"model_dir": model_dir}
        self.status: tuple = (200,)

    def set_response_status(self, code: int, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        pass


def child(entry: str, path: str, handler: bool, tiles: int = 0) -> None:
    from zoo import bitstream
    from zoo.errors import ZooError

    data = Path(path).read_bytes()
    if handler:
        from zoo.handlers import zoo_handler as module

        model_dir = tempfile.mkdtemp()
        for f in Path(entry).iterdir():
            os.symlink(f.resolve(), Path(model_dir) / f.name)
        (Path(model_dir) / "zoo_serve.json").write_text(json.dumps({"op": "decode", "backend": "torch"}))
        ctx = _Context(model_dir)
        h = module.ZooHandler()
        h.initialize(ctx)
        loaded = peak_rss_mb()
        t0 = time.perf_counter()
        (out,) = h.handle([{"body": data}], ctx)
        seconds = time.perf_counter() - t0
        code = ctx.status[0]
        outcome = "decoded" if code == 200 else f"refused {code}: {json.loads(out)['error']}"
    else:
        import zoo
        from zoo.imageio import write_png
        from zoo.mirror import entry_folder

        codec = zoo.load_local(entry_folder(entry))
        loaded = peak_rss_mb()
        t0 = time.perf_counter()
        try:
            # what `zoo decode` does: the 8-bit image tile by tile, then the PNG written to a file
            image = (
                bound(codec, bitstream.loads(data), tiles) if tiles else codec.decompress_uint8(bitstream.loads(data))
            )
            with tempfile.TemporaryFile() as f:
                write_png(image, f)
                png_mb = f.tell() / 2**20
            outcome = f"decoded ({png_mb:.0f} MB PNG)" + (
                f", a bound from {tiles} tile(s): see --legal-max-tiles" if tiles else ""
            )
        except ZooError as exc:
            outcome = f"refused ({type(exc).__name__}): {exc}"
        seconds = time.perf_counter() - t0
    print(json.dumps({"outcome": outcome, "seconds": seconds, "loaded_mb": loaded, "peak_mb": peak_rss_mb()}))


def bound(codec, c, tiles: int):
    """A quick upper bound of `decompress_uint8(c)`'s peak: the 8-bit output is made resident in full first (as it
    is when the last tile decodes), then only the first `tiles` tiles are decoded, for real, into it; the rest of
    the image repeats them, so the PNG written after is as large as a real one."""
    import numpy as np

    from zoo.imageio import to_uint8

    grid = codec._checked_grid(c)
    image = np.full((c.height, c.width, 3), 128, dtype=np.uint8)  # written, so resident (np.zeros would not be)
    for _, (rect, x_hat) in zip(range(tiles), codec._decoded_tiles(c, grid), strict=False):
        image[rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = to_uint8(x_hat)
    first = grid[0]
    for rect in grid[tiles:]:
        image[rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = image[
            first.top : first.top + rect.height, first.left : first.left + rect.width
        ]
    return image


def run_case(entry: Path, data: bytes | Path, handler: bool = False, tiles: int = 0) -> dict:
    if isinstance(data, Path):
        name, keep = str(data), True
    else:
        with tempfile.NamedTemporaryFile(suffix=".zoo", delete=False) as f:
            f.write(data)
        name, keep = f.name, False
    try:
        cmd = [sys.executable, __file__, "--child", str(entry), name] + (["--handler"] if handler else [])
        cmd += ["--legal-max-tiles", str(tiles)] if tiles else []
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
    finally:
        if not keep:
            os.unlink(name)
    if proc.returncode != 0:
        return {
            "outcome": f"CRASHED rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
            "seconds": 0.0,
            "loaded_mb": 0.0,
            "peak_mb": 0.0,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", default=str(DEFAULT_ENTRY))
    ap.add_argument("--factorized", default=str(DEFAULT_FACTORIZED))
    ap.add_argument("--skip-handler", action="store_true")
    ap.add_argument("--skip-legal-max", action="store_true", help="skip the 64-megapixel decode (minutes)")
    ap.add_argument(
        "--legal-max-tiles",
        type=int,
        default=0,
        help="decode only this many of the legal maximum's tiles, into its whole output made resident first: "
        "an upper bound of the full decode's peak for a machine too busy to decode 64 tiles",
    )
    ap.add_argument("--only-legal-max", action="store_true", help="run the legal-maximum case alone")
    ap.add_argument("--only-moved-tiles", action="store_true", help="run the two moved-tiles cases alone")
    ap.add_argument("--child", nargs=2, metavar=("ENTRY", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--encode-child", nargs=3, metavar=("ENTRY", "FILE", "SIDE"), help=argparse.SUPPRESS)
    ap.add_argument("--handler", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, handler=args.handler, tiles=args.legal_max_tiles)
        return
    if args.encode_child:
        encode_child(args.encode_child[0], args.encode_child[1], int(args.encode_child[2]))
        return
    entry, factorized = Path(args.entry), Path(args.factorized)
    cases = []
    if not args.only_legal_max:
        # 16 tiles all carrying tile 0's streams: refused by tile 1's check before anything is decoded, or, with
        # the checks recomputed, by tile 1's index checksum after decoding tiles 0 and 1 only
        cases += [
            ("moved-tiles-4096x4096", entry, moved_tiles(entry, resealed=False), False),
            ("moved-tiles-resealed-4096x4096", entry, moved_tiles(entry, resealed=True), False),
        ]
    if not (args.only_legal_max or args.only_moved_tiles):
        cases += [
            ("grid-2000x2000-tile1", entry, grid_bomb(entry), False),
            ("one-tile-8000x8000", factorized, forge(factorized, 8000, 8000, 0), False),
            ("one-tile-2048x2048", entry, forge(entry, 2048, 2048, 0), False),
        ]
        if not args.skip_handler:
            cases.append(("one-tile-2048x2048 (handler)", entry, cases[-1][2], True))
        cases.append(("one-tile-1024x1024", entry, forge(entry, 1024, 1024, 0), False))
        # Tiles are decoded one after another: a second tile adds its share of the output image, not a tile's peak.
        cases.append(("two-tiles-1024x2048", entry, forge(entry, 1024, 2048, 1024), False))
    if not (args.skip_legal_max or args.only_moved_tiles):
        path, stats = legal_max_file(entry)
        print(
            f"legal maximum: {path} ({stats['bytes']:,d} B, {stats['tiles']} tiles), "
            f"encoded in {stats['encode_s']:.0f} s at {stats['encode_peak_mb']:.0f} MB peak RSS"
        )
        side = path.stem.rsplit("-", 1)[1]
        cases.append((f"legal-max-{side}", entry, path, False))
    peaks, refusals = [], []
    print(f"entries: {entry.relative_to(REPO) if entry.is_relative_to(REPO) else entry}, factorized {factorized.name}")
    for name, e, data, handler in cases:
        r = run_case(e, data, handler, args.legal_max_tiles if name.startswith("legal-max") else 0)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        peaks.append(r["peak_mb"])
        if not r["outcome"].startswith("decoded"):
            refusals.append(r["seconds"])
        print(
            f"{name:30s} {size:>11,d} B  {r['seconds']:7.3f} s  peak RSS {r['peak_mb']:7.0f} MB "
            f"(model loaded: {r['loaded_mb']:.0f} MB)  {r['outcome'][:150]}"
        )
    print(f"max_peak_rss_mb={max(peaks):.0f} max_refusal_s={max(refusals, default=0.0):.3f}")


if __name__ == "__main__":
    main()
