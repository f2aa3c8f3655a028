"""Structure-aware fuzzing of the decoder: mutated zoo files decoded in worker processes, every outcome classified.

    python benchmarks/fuzz.py [--cases 20000] [--workers 2] [--seed 0] [--json]

Base files: small crops of kodim23 coded by CompressAI's fixture models (bmshj2018-factorized,
bmshj2018-hyperprior, mbt2018-mean), each as one tile and as several, in format 3 (what this zoo writes) and in
format 2 (which it still reads). Each case takes one base and applies one structure-aware mutation: a header
field (format 2: version, flags, sizes, tile size, index checksum, counts, strings, extra fields; format 3: the
operating point, sizes, tile size, counts, varints written overlong, strings, fingerprint, extra fields), the
tiles (format 2: rects, latent sizes, two tiles' entries or payloads swapped; format 3: two tiles' rows and
streams swapped, tile 0 copied into another tile, an index checksum changed), the stream lengths (bytes moved
between streams, lengths changed), the payload (bit flips, bytes replaced, cut or inserted), or the file's ends.
Most mutations recompute the checksums (format 2: both CRCs; format 3: every tile check) so they reach the
checks behind them. Each file is parsed and decoded (`bitstream.loads` + `Codec.decompress`) in a worker
process; a worker that dies or passes 5 s is replaced.

With --entry-cases N, also N tampered entry folders (`fuzz_entries`): config.json values replaced (widths,
ELIC groups, versions, fingerprints, deeply nested or huge JSON), safetensors headers edited (dtypes, shapes,
offsets), CDF tables edited (values, lengths, offsets), files replaced by a FIFO or a directory; each is loaded
with `zoo.load_local` in a worker process (10 s each). With --hub, every download path (`zoo.hub` through
huggingface_hub, and `zoo.net.download`) against each fault server on 127.0.0.1 (closed, silent, drip,
drip-headers, 500), with 1-2 s deadlines; a hang there is an answer later than its deadline plus 3 s.

Outcomes: refused (a zoo.errors exception: the expected answer), same (decoded to exactly the base's own decode:
the mutation touched nothing that matters, e.g. an extra field), and the failures: crash (the worker died),
hang (> 5 s), untyped (any other exception), silent (decoded without error to an image that differs from the
base's decode in size or in any pixel). Ends with
`cases=<n> crashes=<a> hangs=<b> untyped=<c> silent=<d> peak_rss_mb=<e>`; the target is 0 0 0 0, <= 1536 MB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HANG_S = 5.0
# (architecture, height, width, tile size, format version): one tile and several for each family, in the format
# this zoo writes (3) and in format 2, which it still reads
_IMAGES = [
    ("bmshj2018-factorized", 40, 56, 0),
    ("bmshj2018-factorized", 70, 100, 32),
    ("bmshj2018-hyperprior", 40, 56, 0),
    ("bmshj2018-hyperprior", 70, 100, 64),
    ("mbt2018-mean", 40, 56, 0),
    ("mbt2018-mean", 70, 100, 64),
]
BASES = [(*image, version) for version in (3, 2) for image in _IMAGES]


def _codec(arch: str, tile_size: int):
    from tests.test_bitstream import golden_codec

    return golden_codec(arch, tile_size)


def make_bases() -> list[bytes]:
    import dataclasses

    from tests.test_bitstream import golden_input
    from zoo import bitstream

    bases = []
    for arch, h, w, tile, version in BASES:
        codec = _codec(arch, tile)
        c = codec.compress(golden_input(h, w))
        if version < 3:
            c = dataclasses.replace(c, format_version=version, fingerprint=codec.fingerprint, tile_checksums=())
        bases.append(bitstream.dumps(c))
    return bases


# -- the file's structure --------------------------------------------------------------------------


class Layout:
    """Byte offsets of every field of a valid format-1/2 file (docs/bitstream.md), so mutations can aim at them."""

    def __init__(self, data: bytes):
        from zoo import bitstream

        header = bitstream.peek_header(data)
        self.fields: dict[str, tuple[int, int]] = {"version": (4, 1), "flags": (5, 1), "body_len": (6, 4)}
        self.strings: list[int] = []  # offsets of string length bytes
        pos = 10
        self.strings.append(pos)
        pos += 1 + data[pos]
        self.fields["quality"] = (pos, 2)
        pos += 2
        for _ in range(2):
            self.strings.append(pos)
            pos += 1 + data[pos]
        self.fields["fingerprint"] = (pos, 16)
        pos += 16
        for name, size in (("height", 4), ("width", 4), ("channels", 1), ("bit_depth", 1), ("tile_size", 4)):
            self.fields[name] = (pos, size)
            pos += size
        self.fields["index_checksum"] = (pos, 4)
        pos += 4
        self.fields["n_tiles"] = (pos, 2)
        self.fields["n_streams"] = (pos + 2, 1)
        pos += 3
        self.n_streams = len(header.tiles[0].lengths)
        for _ in range(self.n_streams):
            self.strings.append(pos)
            pos += 1 + data[pos]
        self.tiles: list[int] = []  # offset of each tile's entry: 4 u32 rect, 2 u16 latent, n u32 lengths
        self.tile_entry = 20 + 4 * self.n_streams
        for _ in header.tiles:
            self.tiles.append(pos)
            pos += self.tile_entry
        self.fields["n_extra"] = (pos, 1)
        pos += 1
        for _ in header.extra:
            for _ in range(2):
                self.strings.append(pos)
                pos += 1 + data[pos]
        self.header_crc = pos
        self.payload = pos + 4
        # (offset, length) of every stream in the payload, tile by tile
        self.streams: list[list[tuple[int, int]]] = []
        at = self.payload
        for tile in header.tiles:
            row = []
            for _, n in tile.lengths:
                row.append((at, n))
                at += n
            self.streams.append(row)


def reseal(buf: bytearray) -> bytes:
    """Recompute both CRCs of a format-1/2 file, using the body length the file states (so edits reach the
    checks behind them)."""
    if len(buf) < 14:
        return bytes(buf)
    (body_len,) = struct.unpack_from("<I", buf, 6)
    end = 10 + body_len
    if end + 4 <= len(buf) - 4:
        struct.pack_into("<I", buf, end, zlib.crc32(bytes(buf[:end])))
    struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


INTERESTING = [
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    65,
    127,
    128,
    255,
    256,
    1000,
    4096,
    65535,
    65536,
    2**31,
    2**32 - 1,
]


def _put(buf: bytearray, at: int, size: int, value: int) -> None:
    buf[at : at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def _get(buf: bytearray, at: int, size: int) -> int:
    return int.from_bytes(buf[at : at + size], "little")


def _number(rng: random.Random, old: int, size: int) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(INTERESTING)
    if r < 0.7:
        return old + rng.choice([-64, -16, -2, -1, 1, 2, 16, 64])
    if r < 0.85:
        return old * rng.choice([2, 3]) if rng.random() < 0.5 else old // rng.choice([2, 3])
    return rng.getrandbits(8 * size)


def _set_length(buf: bytearray, lay: Layout, tile: int, stream: int, value: int) -> None:
    _put(buf, lay.tiles[tile] + 20 + 4 * stream, 4, value)


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One structure-aware mutation of a file of any format; returns (family, file)."""
    if data[4] >= 3:
        return mutate_v3(data, rng)
    return mutate_v2(data, rng)


def mutate_v2(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One structure-aware mutation of a format-1/2 file; returns (family, file)."""
    lay = Layout(data)
    buf = bytearray(data)
    family = rng.choice(["header", "header", "tiles", "lengths", "payload", "payload", "ends", "raw"])
    if family == "header":
        kind = rng.random()
        if kind < 0.7:
            name = rng.choice(sorted(lay.fields))
            at, size = lay.fields[name]
            _put(buf, at, size, _number(rng, _get(buf, at, size), size))
            family = f"header:{name}"
        elif kind < 0.85:  # a string: its length byte or one of its characters
            at = rng.choice(lay.strings)
            if rng.random() < 0.5:
                buf[at] = rng.choice([0, 1, buf[at] + 1, max(buf[at] - 1, 0), 64, 65, 255]) % 256
            elif buf[at]:
                buf[at + 1 + rng.randrange(buf[at])] = rng.randrange(256)
            family = "header:string"
        else:  # an extra key/value inserted before the header CRC, counts and body length kept consistent
            key, value = rng.choice([(b"level", b"3"), (b"k" * 64, b"v"), (b"", b""), (b"\xff\xfe", b"x")])
            entry = bytes([len(key)]) + key + bytes([len(value)]) + value
            buf[lay.header_crc : lay.header_crc] = entry
            at, _ = lay.fields["n_extra"]
            buf[at] = (buf[at] + 1) % 256
            _put(buf, 6, 4, _get(buf, 6, 4) + len(entry))
            family = "header:extra"
        return family, reseal(buf)
    if family == "tiles":
        n = len(lay.tiles)
        kind = rng.random()
        if kind < 0.3 and n > 1:  # two tiles' payloads trade places (lengths follow their bytes)
            i, j = rng.sample(range(n), 2)
            segs = [bytes(data[o : o + m]) for row in lay.streams for o, m in row]
            k = lay.n_streams
            segs[i * k : (i + 1) * k], segs[j * k : (j + 1) * k] = segs[j * k : (j + 1) * k], segs[i * k : (i + 1) * k]
            for t in range(n):
                for s in range(k):
                    _set_length(buf, lay, t, s, len(segs[t * k + s]))
            buf[lay.payload : len(buf) - 4] = b"".join(segs)
            family = "tiles:swap-payload"
        elif kind < 0.5 and n > 1:  # two tile entries trade places (rects and lengths)
            i, j = rng.sample(range(n), 2)
            a, b, e = lay.tiles[i], lay.tiles[j], lay.tile_entry
            buf[a : a + e], buf[b : b + e] = data[b : b + e], data[a : a + e]
            family = "tiles:swap-entry"
        else:  # one rect or latent-size field
            t = rng.randrange(n)
            field = rng.randrange(6)
            at, size = (lay.tiles[t] + 4 * field, 4) if field < 4 else (lay.tiles[t] + 16 + 2 * (field - 4), 2)
            _put(buf, at, size, _number(rng, _get(buf, at, size), size))
            family = "tiles:rect" if field < 4 else "tiles:latent"
        return family, reseal(buf)
    if family == "lengths":
        t = rng.randrange(len(lay.tiles))
        s = rng.randrange(lay.n_streams)
        old = lay.streams[t][s][1]
        if rng.random() < 0.6:  # move k bytes to the next stream: the total stays right, the boundary moves
            flat = [(ti, si) for ti in range(len(lay.tiles)) for si in range(lay.n_streams)]
            pos = flat.index((t, s))
            if pos + 1 < len(flat):
                t2, s2 = flat[pos + 1]
                k = rng.choice([-8, -4, -1, 1, 4, 8])
                k = max(-old, min(k, lay.streams[t2][s2][1]))
                _set_length(buf, lay, t, s, old + k)
                _set_length(buf, lay, t2, s2, lay.streams[t2][s2][1] - k)
            family = "lengths:move"
        else:
            _set_length(buf, lay, t, s, _number(rng, old, 4))
            family = "lengths:change"
        return family, reseal(buf)
    if family == "payload":
        t = rng.randrange(len(lay.tiles))
        s = rng.randrange(lay.n_streams)
        off, n = lay.streams[t][s]
        kind = rng.random()
        if kind < 0.5 and n:
            for _ in range(rng.randint(1, 3)):
                buf[off + rng.randrange(n)] ^= 1 << rng.randrange(8)
            family = "payload:flip"
        elif kind < 0.7 and n:
            buf[off + rng.randrange(n)] = rng.randrange(256)
            family = "payload:byte"
        else:  # cut or insert bytes inside a stream, its length adjusted to match
            if rng.random() < 0.5 and n:
                k = rng.randint(1, min(n, 8))
                at = off + rng.randrange(n - k + 1)
                del buf[at : at + k]
                _set_length(buf, lay, t, s, n - k)
            else:
                k = rng.randint(1, 8)
                at = off + rng.randint(0, n)
                buf[at:at] = bytes(rng.randrange(256) for _ in range(k))
                _set_length(buf, lay, t, s, n + k)
            family = "payload:resize"
        return family, reseal(buf)
    if family == "ends":
        if rng.random() < 0.5:
            return "ends:truncate", bytes(buf[: rng.randrange(len(buf))])
        return "ends:append", bytes(buf) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    # raw bit flips anywhere, checksums left as they are
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return "raw:flip", bytes(buf)


# -- format 3: the file as fields, mutated and written again (its checks recomputed or not) ----------------------


def _leb128(value: int, overlong: bool = False) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    if overlong:  # the same value with a redundant zero group: a reader must refuse it
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


class File3:
    """A valid format-3 file (docs/bitstream.md) as its fields: numbers as numbers, strings and fixed fields as
    raw bytes, so a mutation can set any of them to anything and `write` lays the file out again."""

    NUMBERS = ("entry", "point", "height", "width", "tile_size", "n_streams", "n_extra")

    def __init__(self, data: bytes):
        from zoo import bitstream

        header = bitstream.peek_header(data)
        pos = 5
        self.strings: list[bytes] = []  # architecture, entry version
        for _ in range(2):
            self.strings.append(data[pos : pos + 1 + data[pos]])
            pos += 1 + data[pos]
        self.num = {"entry": data[pos]}  # point kind and metric
        pos += 1
        self.point_raw = b""
        size = {2: 4, 3: 8}.get(data[pos - 1] & 3, 0)
        if size:
            self.point_raw, pos = data[pos : pos + size], pos + size
            self.num["point"] = 0
        else:
            self.num["point"], pos = self._var(data, pos)
        self.fingerprint, pos = data[pos : pos + 8], pos + 8
        for name in ("height", "width", "tile_size"):
            self.num[name], pos = self._var(data, pos)
        self.num["n_streams"], pos = data[pos], pos + 1
        self.num["n_extra"], pos = self._var(data, pos)
        self.extra: list[bytes] = []
        for _ in range(2 * self.num["n_extra"]):
            self.extra.append(data[pos : pos + 1 + data[pos]])
            pos += 1 + data[pos]
        self.lengths = [[n for _, n in t.lengths] for t in header.tiles]
        self.index = list(header.tile_checksums)
        self.checks = []
        for lengths in self.lengths:
            for _ in lengths:
                pos = self._var(data, pos)[1]
            self.checks.append(int.from_bytes(data[pos + 4 : pos + 8], "little"))
            pos += 8
        self.streams = [[bytes(d) for _, d in t.streams] for t in header.tiles]
        self.overlong = ""  # a number field written with a redundant zero group

    @staticmethod
    def _var(data: bytes, pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            value |= (data[pos] & 0x7F) << shift
            shift += 7
            pos += 1
            if not data[pos - 1] & 0x80:
                return value, pos

    def write(self, reseal: bool = True) -> bytes:
        def var(name: str) -> bytes:
            return _leb128(self.num[name], overlong=self.overlong == name)

        head = bytearray(bitstream_magic() + bytes([3])) + b"".join(self.strings)
        head += bytes([self.num["entry"] % 256])
        head += self.point_raw if self.num["entry"] & 2 else var("point")
        head += self.fingerprint + var("height") + var("width") + var("tile_size")
        head += bytes([self.num["n_streams"] % 256]) + var("n_extra") + b"".join(self.extra)
        header_crc = zlib.crc32(head)
        table = bytearray()
        tiles = zip(self.lengths, self.index, self.checks, self.streams, strict=True)
        for i, (lengths, index, check, streams) in enumerate(tiles):
            row = b"".join(_leb128(n) for n in lengths) + struct.pack("<I", index % (1 << 32))
            if reseal:
                crc = zlib.crc32(struct.pack("<I", i), header_crc)
                check = zlib.crc32(b"".join(streams), zlib.crc32(row, crc))
            table += row + struct.pack("<I", check)
        return bytes(head + table + b"".join(b"".join(s) for s in self.streams))


def bitstream_magic() -> bytes:
    from zoo import bitstream

    return bitstream.MAGIC


def mutate_v3(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One structure-aware mutation of a format-3 file; returns (family, file). Most recompute every tile check,
    as a forger would, so the mutation reaches the checks behind them."""
    f = File3(data)
    n, k = len(f.lengths), len(f.lengths[0])
    family = rng.choice(["header", "header", "tiles", "lengths", "payload", "payload", "ends", "raw"])
    if family == "header":
        kind = rng.random()
        if kind < 0.55:
            name = rng.choice(File3.NUMBERS)
            f.num[name] = max(_number(rng, f.num[name], 4), 0)
            family = f"header:{name}"
        elif kind < 0.65:
            f.overlong = rng.choice(File3.NUMBERS[1:])
            family = "header:overlong"
        elif kind < 0.8:  # a string: its length byte or one of its characters
            i = rng.randrange(len(f.strings))
            raw = bytearray(f.strings[i])
            if rng.random() < 0.5:
                raw[0] = rng.choice([0, 1, raw[0] + 1, max(raw[0] - 1, 0), 64, 65, 255]) % 256
            elif raw[0]:
                raw[1 + rng.randrange(raw[0])] = rng.randrange(256)
            f.strings[i] = bytes(raw)
            family = "header:string"
        elif kind < 0.9:
            fp = bytearray(f.fingerprint)
            fp[rng.randrange(8)] ^= 1 << rng.randrange(8)
            f.fingerprint = bytes(fp)
            family = "header:fingerprint"
        else:  # an extra key/value added, the count kept consistent
            key, value = rng.choice([(b"level", b"3"), (b"zoo.level", b"2"), (b"k" * 64, b"v"), (b"", b"")])
            f.extra += [bytes([len(key)]) + key, bytes([len(value)]) + value]
            f.num["n_extra"] += 1
            family = "header:extra"
        return family, f.write()
    if family == "tiles":
        kind = rng.random()
        if kind < 0.3 and n > 1:  # two tiles trade rows and streams (each tile's check recomputed)
            i, j = rng.sample(range(n), 2)
            for part in (f.lengths, f.index, f.streams):
                part[i], part[j] = part[j], part[i]
            family = "tiles:swap"
        elif kind < 0.5 and n > 1:  # tile 0's row and streams copied into another tile, checks kept or redone
            j = rng.randrange(1, n)
            f.lengths[j], f.index[j], f.streams[j], f.checks[j] = f.lengths[0], f.index[0], f.streams[0], f.checks[0]
            family = "tiles:copy"
            return family, f.write(reseal=rng.random() < 0.5)
        else:  # a tile's index checksum
            t = rng.randrange(n)
            f.index[t] = _number(rng, f.index[t], 4)
            family = "tiles:index"
        return family, f.write()
    if family == "lengths":
        t, s = rng.randrange(n), rng.randrange(k)
        old = f.lengths[t][s]
        if rng.random() < 0.6:  # move bytes to the next stream: the total stays right, the boundary moves
            flat = [(ti, si) for ti in range(n) for si in range(k)]
            pos = flat.index((t, s))
            if pos + 1 < len(flat):
                t2, s2 = flat[pos + 1]
                d = rng.choice([-8, -4, -1, 1, 4, 8])
                d = max(-old, min(d, f.lengths[t2][s2]))
                joined = f.streams[t][s] + f.streams[t2][s2]
                f.lengths[t][s] += d
                f.lengths[t2][s2] -= d
                f.streams[t][s], f.streams[t2][s2] = joined[: old + d], joined[old + d :]
            family = "lengths:move"
        else:
            f.lengths[t][s] = max(_number(rng, old, 4), 0)
            family = "lengths:change"
        return family, f.write()
    if family == "payload":
        t, s = rng.randrange(n), rng.randrange(k)
        buf = bytearray(f.streams[t][s])
        kind = rng.random()
        if kind < 0.5 and buf:
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            family = "payload:flip"
        elif kind < 0.7 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
            family = "payload:byte"
        else:  # cut or insert bytes inside a stream, its length adjusted to match
            if rng.random() < 0.5 and buf:
                cut = rng.randint(1, min(len(buf), 8))
                at = rng.randrange(len(buf) - cut + 1)
                del buf[at : at + cut]
            else:
                at = rng.randint(0, len(buf))
                buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            f.lengths[t][s] = len(buf)
            family = "payload:resize"
        f.streams[t][s] = bytes(buf)
        return family, f.write()
    buf = bytearray(data)
    if family == "ends":
        if rng.random() < 0.5:
            return "ends:truncate", bytes(buf[: rng.randrange(len(buf))])
        return "ends:append", bytes(buf) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    for _ in range(rng.randint(1, 4)):  # raw bit flips anywhere, checks left as they are
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return "raw:flip", bytes(buf)


# -- workers ---------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(conn: Connection, bases: list[bytes]) -> None:
    import torch

    torch.set_num_threads(1)
    from zoo import bitstream
    from zoo.errors import ZooError

    codecs = [_codec(arch, tile) for arch, _, _, tile, _ in BASES]
    refs = [codecs[i].decompress(bitstream.loads(b)) for i, b in enumerate(bases)]
    conn.send(("ready", _peak_rss_mb()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case, base, data = msg
        stage = "parse"
        try:
            c = bitstream.loads(data)
            stage = "decode"
            x = codecs[base].decompress(c)
            ref = refs[base]
            outcome = "same" if x.shape == ref.shape and torch.equal(x, ref) else "silent"
            detail = "" if outcome == "same" else f"decoded {tuple(x.shape)} differing from the base's decode"
        except ZooError as exc:
            outcome, detail = "refused", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # the finding this fuzzer looks for
            outcome, detail = "untyped", "".join(traceback.format_exception_only(type(exc), exc)).strip()
        conn.send((case, outcome, detail, _peak_rss_mb(), stage))


class Pool:
    """Worker processes with a per-case deadline; a dead or stuck worker is recorded and replaced."""

    def __init__(self, n: int, bases: list[bytes]):
        self.bases = bases
        self.ctx = mp.get_context("spawn")
        self.workers: list[dict] = [self._start() for _ in range(n)]
        self.peak_mb = 0.0

    def _start(self) -> dict:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker, args=(child, self.bases), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "case": None, "since": 0.0, "ready": False}

    def run(self, cases: list[tuple[int, int, str, bytes]], report) -> None:
        todo = list(reversed(cases))
        info = {c[0]: c for c in cases}
        busy = 0
        while todo or busy:
            for w in self.workers:
                if w["ready"] and w["case"] is None and todo:
                    case, base, _, data = todo.pop()
                    w["conn"].send((case, base, data))
                    w["case"], w["since"] = case, time.monotonic()
                    busy += 1
            ready = wait([w["conn"] for w in self.workers], timeout=0.5)
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                failure = None
                if w["conn"] in ready:
                    try:
                        msg = w["conn"].recv()
                    except (EOFError, OSError):
                        failure = ("crash", f"worker died (exit code {w['proc'].exitcode})")
                    else:
                        if msg[0] == "ready":
                            w["ready"] = True
                            self.peak_mb = max(self.peak_mb, msg[1])
                            continue
                        case, outcome, detail, rss, stage = msg
                        self.peak_mb = max(self.peak_mb, rss)
                        report(info[case], outcome, detail, now - w["since"], stage)
                        w["case"] = None
                        busy -= 1
                        continue
                elif w["case"] is not None and now - w["since"] > HANG_S:
                    failure = ("hang", f"no answer after {HANG_S:.0f} s")
                elif not w["proc"].is_alive():
                    failure = ("crash", f"worker died (exit code {w['proc'].exitcode})")
                if failure:
                    w["proc"].kill()
                    w["proc"].join()
                    if w["case"] is not None:
                        report(info[w["case"]], *failure, now - w["since"], "decode")
                        busy -= 1
                    elif failure[0] == "crash" and not w["ready"]:
                        raise RuntimeError("a fuzz worker died while starting")
                    self.workers[i] = self._start()

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except OSError:
                pass
            w["proc"].join(timeout=5)
            if w["proc"].is_alive():
                w["proc"].kill()


def fuzz(n_cases: int, workers: int, seed: int, verbose: bool = True) -> dict:
    bases = make_bases()
    rng = random.Random(seed)
    cases = []
    for i in range(n_cases):
        base = i % len(bases)
        family, data = mutate(bases[base], rng)
        cases.append((i, base, family, data))
    counts: Counter = Counter()
    stages: Counter = Counter()  # how far each file got: refused by the parser, or handed to the decoder
    by_family: dict[str, Counter] = {}
    failures: list[str] = []

    def report(case, outcome, detail, seconds, stage):
        i, base, family, _ = case
        counts[outcome] += 1
        stages[stage] += 1
        by_family.setdefault(family.split(":")[0], Counter())[outcome] += 1
        if outcome in ("crash", "hang", "untyped", "silent"):
            arch, h, w, tile, version = BASES[base]
            failures.append(f"case {i} {outcome} [{family}] v{version} {arch} {h}x{w} tile {tile}: {detail}")

    t0 = time.perf_counter()
    pool = Pool(workers, bases)
    try:
        pool.run(cases, report)
    finally:
        pool.close()
    result = {
        "cases": n_cases,
        "seconds": round(time.perf_counter() - t0, 1),
        "outcomes": dict(counts),
        "reached_decoder": stages["decode"],
        "families": {k: dict(v) for k, v in sorted(by_family.items())},
        "crashes": counts["crash"],
        "hangs": counts["hang"],
        "untyped": counts["untyped"],
        "silent": counts["silent"],
        "peak_rss_mb": round(max(pool.peak_mb, _peak_rss_mb()), 1),
        "failures": failures[:50],
    }
    if verbose:
        for line in failures[:50]:
            print(line)
        print(f"{n_cases} cases in {result['seconds']} s on {workers} workers; outcomes {dict(counts)}")
        print(f"parsed and handed to the decoder: {stages['decode']}")
        for fam, c in result["families"].items():
            print(f"  {fam:8s} {dict(c)}")
    return result


ENTRY_HANG_S = 10.0


def _entry_worker(conn: Connection) -> None:
    import zoo
    from zoo.errors import ZooError

    while True:
        folder = conn.recv()
        try:
            zoo.load_local(folder)
            conn.send(("loaded", ""))
        except ZooError as exc:
            conn.send(("refused", str(exc)[:200]))
        except Exception as exc:
            conn.send(("untyped", f"{type(exc).__name__}: {str(exc)[:200]}"))
        conn.send(("rss", _peak_rss_mb()))


def _tamper_entry(folder: Path, rng: random.Random) -> str:
    """One change to a copy of a valid entry folder; the config's fingerprint is recomputed where the change is
    to the tensors, so the change reaches the checks behind it."""
    import os

    import torch
    from safetensors.torch import load_file, save_file

    from zoo.entry import CONFIG_NAME, WEIGHTS_NAME, weights_fingerprint

    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    cfg = json.loads(cfg_path.read_text())
    kind = rng.choice(["config", "config", "nest", "header", "tables", "tables", "special"])
    if kind == "config":
        key = rng.choice(["widths", "widths", "architecture", "quality", "version", "weights_fingerprint", "lambda"])
        values = [
            {"N": rng.choice([0, 1, 384, 385, 10**9]), "M": rng.choice([1, 640, 641])},
            {"N": 192, "M": 640, "groups": [1] * rng.choice([5, 17, 640])},
            {"N": 192, "M": 320, "groups": [rng.choice([-1, 0, 64]) for _ in range(5)]},
            "elic2022-official",
            "mbt2018",
            None,
            -1,
            2.5,
            "x" * 10_000,
            [],
            {},
            "00" * 16,
            1e308,
        ]
        value = rng.choice(values)
        if isinstance(value, dict) and rng.random() < 0.5:
            cfg["architecture"] = "elic2022-official"
        cfg[key] = value
        cfg_path.write_text(json.dumps(cfg))
        return f"config:{key}"
    if kind == "nest":
        depth = rng.choice([40, 1000, 200_000])
        cfg_path.write_text(rng.choice(["[", '{"a":']) * depth)
        return f"nest:{depth}"
    if kind == "special":
        target = rng.choice([cfg_path, weights])
        target.unlink()
        if rng.random() < 0.5:
            os.mkfifo(target)
            return f"special:fifo:{target.name}"
        target.mkdir()
        return f"special:dir:{target.name}"
    sd = load_file(str(weights))
    if kind == "tables":
        names = [k for k in sd if k.endswith(("_quantized_cdf", "_cdf_length", "_offset"))]
        name = rng.choice(names)
        t = sd[name].clone()
        i = rng.randrange(t.numel())
        t.view(-1)[i] = rng.choice([-1, 0, 1 << 16, (1 << 16) + 1, 10**6, -(2**31), 2**31 - 1, int(t.view(-1)[i]) + 1])
        if rng.random() < 0.2:
            t = torch.zeros((t.shape[0], rng.choice([2, 70_000])) if t.dim() == 2 else t.shape, dtype=t.dtype)
        sd[name] = t
        save_file(sd, str(weights))
        cfg["weights_fingerprint"] = weights_fingerprint(sd).hex()
        cfg_path.write_text(json.dumps(cfg))
        return f"tables:{name.rsplit('.', 1)[-1]}"
    # header: rewrite one tensor's entry in the safetensors JSON header, keeping the file's data as is
    raw = weights.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    header[name][field] = {
        "dtype": rng.choice(["F64", "I8", "BOOL", "X9"]),
        "shape": rng.choice([[10**6, 10**6], [0], [-1], [3]]),
        "data_offsets": rng.choice([[0, 10**12], [5, 3], [0, 0]]),
    }[field]
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return f"header:{field}"


def fuzz_entries(n_cases: int, seed: int, verbose: bool = True) -> dict:
    """Tampered copies of a small valid entry, each loaded in a worker process: refused, loaded (the change
    did not matter), or a failure (crash, hang over ENTRY_HANG_S, untyped)."""
    import shutil
    import tempfile

    from tests.support import fixture_model
    from zoo.entry import save_entry

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="zoo-fuzz-entries-"))
    template = root / "template"
    save_entry(fixture_model("bmshj2018-hyperprior"), template, arch="bmshj2018-hyperprior", quality=1)
    counts: Counter = Counter()
    by_family: dict[str, Counter] = {}
    failures: list[str] = []
    peak = 0.0
    ctx = mp.get_context("spawn")
    proc = conn = None
    t0 = time.perf_counter()
    try:
        for i in range(n_cases):
            folder = root / f"case{i}"
            shutil.copytree(template, folder)
            family = _tamper_entry(folder, rng)
            if proc is None:
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=_entry_worker, args=(child,), daemon=True)
                proc.start()
            conn.send(str(folder))
            outcome, detail = "hang", f"no answer in {ENTRY_HANG_S} s"
            if conn.poll(ENTRY_HANG_S + (60 if i == 0 else 0)):  # the first case includes the worker's start
                try:
                    outcome, detail = conn.recv()
                    _, rss = conn.recv()
                    peak = max(peak, float(rss))
                except EOFError:
                    outcome, detail = "crash", f"worker exit code {proc.exitcode}"
            if outcome in ("hang", "crash"):
                proc.kill()
                proc.join()
                proc = None
            counts[outcome] += 1
            by_family.setdefault(family.split(":")[0], Counter())[outcome] += 1
            if outcome in ("crash", "hang", "untyped"):
                failures.append(f"entry case {i} {outcome} [{family}]: {detail}")
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if proc is not None:
            proc.kill()
            proc.join()
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "cases": n_cases,
        "seconds": round(time.perf_counter() - t0, 1),
        "outcomes": dict(counts),
        "families": {k: dict(v) for k, v in sorted(by_family.items())},
        "crashes": counts["crash"],
        "hangs": counts["hang"],
        "untyped": counts["untyped"],
        "peak_rss_mb": round(peak, 1),
        "failures": failures[:50],
    }
    if verbose:
        for line in failures[:50]:
            print(line)
        print(f"{n_cases} tampered entries in {result['seconds']} s; outcomes {dict(counts)}")
        for fam, c in result["families"].items():
            print(f"  {fam:8s} {dict(c)}")
    return result


def fuzz_hub(verbose: bool = True) -> dict:
    """Each download path against each fault server, with short deadlines (ZOO_HUB_TIMEOUT=1,
    ZOO_DOWNLOAD_BASE=1, ZOO_DOWNLOAD_MIN_RATE=100): refused in time (HubError), late, or untyped."""
    import os
    import tempfile

    from tests.faults import FaultServer, closed_port

    os.environ.update({"ZOO_HUB_TIMEOUT": "1", "ZOO_DOWNLOAD_BASE": "1", "ZOO_DOWNLOAD_MIN_RATE": "100"})
    os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="zoo-fuzz-hf-")
    import huggingface_hub.constants as hfc

    hfc.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]
    from zoo.errors import HubError
    from zoo.hub import download_entry
    from zoo.net import download

    counts: Counter = Counter()
    lines = []
    for mode in ("closed", "silent", "drip", "drip-headers", "500"):
        server = None if mode == "closed" else FaultServer(mode, size=300, interval=0.5)
        url = f"http://127.0.0.1:{closed_port()}" if server is None else server.url
        for path in ("hub", "net"):
            t0 = time.perf_counter()
            try:
                if path == "hub":
                    os.environ["HF_ENDPOINT"] = url
                    download_entry("fuzz/absent", "v1")
                else:
                    download(url + "/w.pth", Path(hfc.HF_HUB_CACHE) / "w.pth", expected_size=300)
                outcome, detail = "untyped", "no error"
            except HubError as exc:
                outcome, detail = "refused", str(exc)
            except Exception as exc:
                outcome, detail = "untyped", f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            # the longest deadline here: a 300-byte file at 100 B/s plus 1 s, after a 1 s HEAD
            if outcome == "refused" and seconds > 1 + 1 + 300 / 100 + 3:
                outcome = "late"
            counts[outcome] += 1
            lines.append(f"  {mode:12s} {path}: {outcome} in {seconds:.1f} s: {detail[:150]}")
        if server is not None:
            server.stop()
    if verbose:
        print("\n".join(lines))
    total = sum(counts.values())
    return {"cases": total, "outcomes": dict(counts), "late": counts["late"], "untyped": counts["untyped"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    ap.add_argument("--entry-cases", type=int, default=0, help="tampered entry folders to load as well")
    ap.add_argument("--hub", action="store_true", help="also every download path against the fault servers")
    args = ap.parse_args()
    if args.entry_cases:
        e = fuzz_entries(args.entry_cases, args.seed, verbose=not args.json)
        print(
            f"entry_cases={e['cases']} crashes={e['crashes']} hangs={e['hangs']} untyped={e['untyped']} "
            f"peak_rss_mb={e['peak_rss_mb']:.0f}"
        )
    if args.hub:
        h = fuzz_hub(verbose=not args.json)
        print(f"hub_cases={h['cases']} late={h['late']} untyped={h['untyped']} outcomes={h['outcomes']}")
    if args.cases == 0:
        return
    r = fuzz(args.cases, args.workers, args.seed, verbose=not args.json)
    if args.json:
        print(json.dumps(r))
    print(
        f"cases={r['cases']} crashes={r['crashes']} hangs={r['hangs']} untyped={r['untyped']} "
        f"silent={r['silent']} peak_rss_mb={r['peak_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
