"""The zoo file format (spec: docs/bitstream.md): a `Compressed` as bytes, and back, validated.

Every length and size is checked against fixed limits before anything is allocated from it; any
inconsistency raises `BitstreamError` naming the problem.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from zoo.compressed import Compressed, EntryId, TileStreams, format_level
from zoo.errors import BitstreamError

MAGIC = b"\x89ZOO"
# Version 2 keeps version 1's layout and changes what the streams mean (docs/bitstream.md, "Versions"): the
# decoder applies the rules of the version a file declares (`Compressed.format_version`), so version-1 files
# keep decoding as they were made. This is the only place that decides which versions are read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

MAX_DIM = 65_535  # per side
MAX_PIXELS = 1 << 28  # 268 megapixels
MAX_TILES = 65_535
MAX_STREAMS = 16  # ELIC codes 11: z and two checkerboard passes for each of its 5 channel groups
MAX_STRING = 64
MAX_EXTRA = 32
MAX_FILE_BYTES = 1 << 30
FINGERPRINT_BYTES = 16
# The level of a variable-rate entry travels as this extra field (a decimal string) and is read back into
# `EntryId.level`, so files of fixed-rate entries are byte-for-byte what they were before levels existed.
LEVEL_KEY = "zoo.level"


@dataclass(frozen=True)
class Header:
    """A parsed file as `zoo info` shows it: the header's fields, and the tiles with their streams (whose
    checksum `peek_header` does not verify)."""

    format_version: int
    entry: EntryId
    fingerprint: bytes
    height: int
    width: int
    channels: int
    bit_depth: int
    tile_size: int
    index_checksum: int
    tiles: tuple[TileStreams, ...]
    extra: tuple[tuple[str, str], ...]
    header_bytes: int
    total_bytes: int

    @property
    def payload_bytes(self) -> int:
        return sum(t.num_bytes for t in self.tiles)

    def as_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "entry": {
                "arch": self.entry.arch,
                "quality": self.entry.quality,
                "metric": self.entry.metric,
                "version": self.entry.version,
                **({"level": self.entry.level} if self.entry.level is not None else {}),
            },
            "fingerprint": self.fingerprint.hex(),
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "bit_depth": self.bit_depth,
            "tile_size": self.tile_size,
            "tiles": len(self.tiles),
            "index_checksum": f"{self.index_checksum:08x}",
            "header_bytes": self.header_bytes,
            "payload_bytes": self.payload_bytes,
            "total_bytes": self.total_bytes,
            "bpp": 8 * self.total_bytes / (self.height * self.width),
            "streams": {
                name: sum(n for t in self.tiles for k, n in t.lengths if k == name)
                for name, _ in (self.tiles[0].lengths if self.tiles else ())
            },
            "extra": dict(self.extra),
        }


def symbol_order(format_version: int) -> str:
    """The order of a context model's y symbols in streams of this version (zoo.models.base.SYMBOL_ORDERS):
    format 1 codes them in raster order, format 2 wavefront by wavefront. Other models' streams are alike."""
    return "raster" if format_version == 1 else "wavefront"


def grid_size(height: int, width: int, tile_size: int) -> int:
    """How many tiles an image of that size has (tile_size 0: one), without building the grid."""
    if tile_size <= 0:
        return 1
    return math.ceil(height / tile_size) * math.ceil(width / tile_size)


def grid_rect(height: int, width: int, tile_size: int, index: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of tile `index` in raster order; tile_size 0: the whole image."""
    if tile_size <= 0 or (height <= tile_size and width <= tile_size):
        return (0, 0, height, width)
    row, col = divmod(index, math.ceil(width / tile_size))
    top, left = row * tile_size, col * tile_size
    return (top, left, min(tile_size, height - top), min(tile_size, width - left))


# -- writing -------------------------------------------------------------------------------------


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise BitstreamError(f"string field {value[:20]!r}... is longer than {MAX_STRING} bytes")
    return struct.pack("<B", len(raw)) + raw


def dumps(c: Compressed) -> bytes:
    """Serialise; raises BitstreamError if `c` does not fit the format's limits."""
    if not (1 <= c.height <= MAX_DIM and 1 <= c.width <= MAX_DIM):
        raise BitstreamError(f"image size {c.height}x{c.width} is outside 1..{MAX_DIM}")
    if len(c.fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not 1 <= len(c.tiles) <= MAX_TILES:
        raise BitstreamError(f"{len(c.tiles)} tiles is outside 1..{MAX_TILES}")
    names = tuple(name for name, _ in c.tiles[0].streams)
    if not 1 <= len(names) <= MAX_STREAMS or any(tuple(n for n, _ in t.streams) != names for t in c.tiles):
        raise BitstreamError(f"every tile must carry the same named streams (1..{MAX_STREAMS})")
    if any(k == LEVEL_KEY for k, _ in c.extra):
        raise BitstreamError(f"extra field {LEVEL_KEY!r} is reserved for the entry's level")
    extra = c.extra + (((LEVEL_KEY, format_level(c.entry.level)),) if c.entry.level is not None else ())
    if len(extra) > MAX_EXTRA:
        raise BitstreamError(f"more than {MAX_EXTRA} extra fields")
    if c.format_version not in READABLE_VERSIONS:
        raise BitstreamError(f"cannot write format version {c.format_version} (this zoo writes {READABLE_VERSIONS})")
    head = bytearray(MAGIC)
    head += struct.pack("<BB", c.format_version, 0)
    body = bytearray()
    body += _str(c.entry.arch) + struct.pack("<H", c.entry.quality) + _str(c.entry.metric) + _str(c.entry.version)
    body += c.fingerprint
    body += struct.pack("<IIBBII", c.height, c.width, c.channels, c.bit_depth, c.tile_size, c.index_checksum)
    body += struct.pack("<HB", len(c.tiles), len(names)) + b"".join(_str(n) for n in names)
    for t in c.tiles:
        body += struct.pack("<IIIIHH", *t.rect, *t.latent_hw)
        body += b"".join(struct.pack("<I", n) for _, n in t.lengths)
    body += struct.pack("<B", len(extra)) + b"".join(_str(k) + _str(v) for k, v in extra)
    head += struct.pack("<I", len(body)) + body
    head += struct.pack("<I", zlib.crc32(head))
    out = head + b"".join(data for t in c.tiles for _, data in t.streams)
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


# -- reading -------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, end: int):
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise BitstreamError(f"file is truncated: ran out of header while reading {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("<B", what)
        if n > MAX_STRING:
            raise BitstreamError(f"{what} is longer than {MAX_STRING} bytes")
        try:
            value = self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError(f"{what} is not valid UTF-8") from None
        if not value.isprintable():
            raise BitstreamError(f"{what} has unprintable characters")
        return value


def _parse_header(data: bytes) -> Header:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise BitstreamError("file is empty")
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError("not a zoo file (wrong magic bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise BitstreamError(f"file is larger than {MAX_FILE_BYTES} bytes")
    r = _Reader(data, len(data))
    r.pos = 4
    version, flags = r.unpack("<BB", "format version")
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"unknown format version {version} (this zoo reads {', '.join(map(str, READABLE_VERSIONS))}); "
            "a newer zoo may read it"
        )
    if flags != 0:
        raise BitstreamError(f"flags byte is {flags:#04x}, but format version {version} defines no flags (must be 0)")
    (body_len,) = r.unpack("<I", "header length")
    if body_len > len(data) - r.pos - 8:
        raise BitstreamError("file is truncated: header is longer than the file")
    body_end = r.pos + body_len
    (stored_crc,) = struct.unpack("<I", data[body_end : body_end + 4])
    if zlib.crc32(data[:body_end]) != stored_crc:
        raise BitstreamError("header checksum mismatch: the file is corrupt")
    r.end = body_end
    arch = r.string("architecture")
    (quality,) = r.unpack("<H", "quality")
    metric = r.string("metric")
    entry_version = r.string("entry version")
    fingerprint = r.take(FINGERPRINT_BYTES, "fingerprint")
    height, width, channels, bit_depth, tile_size, index_checksum = r.unpack("<IIBBII", "image size")
    if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM) or height * width > MAX_PIXELS:
        raise BitstreamError(f"image size {height}x{width} is outside the limits ({MAX_DIM} per side)")
    if channels != 3 or bit_depth != 8:
        raise BitstreamError(f"unsupported image layout: {channels} channels at {bit_depth} bits")
    if tile_size > MAX_DIM:
        raise BitstreamError(f"tile size {tile_size} is out of range")
    n_tiles, n_streams = r.unpack("<HB", "tile count")
    if not 1 <= n_tiles <= MAX_TILES or not 1 <= n_streams <= MAX_STREAMS:
        raise BitstreamError(f"{n_tiles} tiles with {n_streams} streams each is out of range")
    # The grid follows from the image and tile sizes: check the count by arithmetic, before anything is built.
    if n_tiles > 1 and n_tiles != grid_size(height, width, tile_size):
        raise BitstreamError(
            f"{n_tiles} tiles, but a {height}x{width} image cut into tiles of {tile_size} has "
            f"{grid_size(height, width, tile_size)}"
        )
    names = tuple(r.string("stream name") for _ in range(n_streams))
    if len(set(names)) != len(names):
        raise BitstreamError("duplicate stream names")
    table = []
    for i in range(n_tiles):
        top, left, h, w, lh, lw = r.unpack("<IIIIHH", f"tile {i}")
        expected = grid_rect(height, width, tile_size if n_tiles > 1 else 0, i)
        if (top, left, h, w) != expected:
            raise BitstreamError(f"tile {i} is ({top},{left},{h},{w}) where the tile grid has {expected}")
        lengths = r.unpack(f"<{n_streams}I", f"tile {i} stream lengths")
        table.append(((top, left, h, w), (lh, lw), lengths))
    (n_extra,) = r.unpack("<B", "extra count")
    if n_extra > MAX_EXTRA:
        raise BitstreamError(f"{n_extra} extra fields is out of range")
    extra = tuple((r.string("extra key"), r.string("extra value")) for _ in range(n_extra))
    level, extra = _take_level(extra)
    if r.pos != body_end:
        raise BitstreamError("header has trailing bytes")
    header_bytes = body_end + 4
    payload = sum(sum(lengths) for _, _, lengths in table)
    if header_bytes + payload + 4 != len(data):
        raise BitstreamError(
            f"file is {len(data)} bytes but its header describes {header_bytes + payload + 4} (truncated or padded)"
        )
    tiles, pos = [], header_bytes
    for rect, latent_hw, lengths in table:
        streams = []
        for name, n in zip(names, lengths, strict=True):
            streams.append((name, data[pos : pos + n]))
            pos += n
        tiles.append(TileStreams(rect, latent_hw, tuple(streams)))
    return Header(
        version,
        EntryId(arch, quality, metric, entry_version, level),
        fingerprint,
        height,
        width,
        channels,
        bit_depth,
        tile_size,
        index_checksum,
        tuple(tiles),
        extra,
        header_bytes,
        len(data),
    )


def _take_level(extra: tuple[tuple[str, str], ...]) -> tuple[float | None, tuple[tuple[str, str], ...]]:
    values = [v for k, v in extra if k == LEVEL_KEY]
    if not values:
        return None, extra
    if len(values) > 1:
        raise BitstreamError(f"header has {len(values)} {LEVEL_KEY} fields")
    try:
        level = float(values[0])
    except ValueError:
        raise BitstreamError(f"header level {values[0]!r} is not a number") from None
    if not 1.0 <= level <= 1000.0:  # the architecture checks its own range; this only bounds the value
        raise BitstreamError(f"header level {values[0]!r} is out of range")
    return level, tuple((k, v) for k, v in extra if k != LEVEL_KEY)


def peek_header(data: bytes) -> Header:
    """Parse and check the header only (the payload checksum is not verified)."""
    return _parse_header(data)


def loads(data: bytes) -> Compressed:
    """Parse a whole file, verifying both checksums; raises BitstreamError on any problem."""
    header = _parse_header(data)
    (stored,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != stored:
        raise BitstreamError("payload checksum mismatch: the file is corrupt")
    return Compressed(
        entry=header.entry,
        fingerprint=header.fingerprint,
        height=header.height,
        width=header.width,
        tiles=header.tiles,
        index_checksum=header.index_checksum,
        tile_size=header.tile_size,
        channels=header.channels,
        bit_depth=header.bit_depth,
        extra=header.extra,
        format_version=header.format_version,
    )


def read_file(path: str | Path) -> bytes:
    """Read a compressed file, refusing sizes the format cannot have before reading them."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BitstreamError(f"{p} is {size} bytes, larger than any zoo file can be")
        return p.read_bytes()
    except OSError as exc:
        raise BitstreamError(f"cannot read {p}: {exc.strerror or exc}") from None
