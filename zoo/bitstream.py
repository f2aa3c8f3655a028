"""The zoo file format (spec: docs/bitstream.md): a `Compressed` as bytes, and back, validated.

Every length and size is checked against fixed limits before anything is allocated from it; any
inconsistency raises `BitstreamError` naming the problem.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.compressed import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    Compressed,
    EntryId,
    TileStreams,
    combine_checksums,
    format_level,
    symbol_order,
)
from zoo.errors import BitstreamError

# FORMAT_VERSION, READABLE_VERSIONS and symbol_order are zoo.compressed's, named here too for the format's readers
__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "Header",
    "dumps",
    "grid_rect",
    "grid_size",
    "loads",
    "peek_header",
    "read_file",
    "stream_layout",
    "symbol_order",
]

MAGIC = b"\x89ZOO"
MAX_DIM = 65_535  # per side
MAX_PIXELS = 1 << 28  # 268 megapixels
MAX_TILES = 65_535
MAX_STREAMS = 16  # ELIC codes 11: z and two checkerboard passes for each of its 5 channel groups
MAX_STRING = 64
MAX_EXTRA = 32
MAX_FILE_BYTES = 1 << 30
FINGERPRINT_BYTES = 16  # formats 1 and 2
SHORT_FINGERPRINT_BYTES = 8  # from format 3 on: the first 8 bytes of the entry's fingerprint
# The level of a variable-rate entry travels as this extra field (a decimal string) and is read back into
# `EntryId.level`, so files of fixed-rate entries are byte-for-byte what they were before levels existed.
LEVEL_KEY = "zoo.level"


@dataclass(frozen=True)
class Header:
    """A parsed file as `zoo info` shows it: the header's fields, and the tiles with their streams (in formats
    1 and 2, `peek_header` does not verify the payload's checksum; from format 3 on every tile's check, which
    also covers the header, is verified)."""

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
    header_bytes: int  # everything before the first stream: from format 3 on, the tile table too
    total_bytes: int
    tile_checksums: tuple[int, ...] = ()

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


def _varint(value: int) -> bytes:
    """Unsigned LEB128: seven bits a byte, low bits first, the top bit set on every byte but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


# Format 3's entry byte (docs/bitstream.md): bits 0-1 say how the operating point is stored: a fixed-rate quality,
# or a variable-rate level in thousandths when that reads back to the same float (3, 3.5, 3.25), else as a
# float32 when that is exact (3.4765625), else as a float64 (3.3333333333333335); bits 2-3 name the metric by
# its code below; bits 4-7 are 0.
POINT_QUALITY, POINT_MILLI, POINT_FLOAT32, POINT_FLOAT64 = 0, 1, 2, 3
METRIC_CODES = {"mse": 0, "ms-ssim": 1}  # fixed by the format: a new metric gets the next code
MAX_QUALITY = 65_535
MAX_LEVEL = 1000.0  # the architecture checks its own range; this only bounds the value


def _entry_byte_and_point(entry: EntryId) -> bytes:
    if entry.metric not in METRIC_CODES:
        raise BitstreamError(f"metric {entry.metric!r} has no code in this format ({', '.join(METRIC_CODES)})")
    metric = METRIC_CODES[entry.metric] << 2
    if entry.level is None:
        if not 0 <= entry.quality <= MAX_QUALITY:
            raise BitstreamError(f"quality {entry.quality} is outside 0..{MAX_QUALITY}")
        return bytes([metric | POINT_QUALITY]) + _varint(entry.quality)
    level = float(entry.level)
    if entry.quality != 0 or not (math.isfinite(level) and 1.0 <= level <= MAX_LEVEL):
        raise BitstreamError(
            f"level {entry.level!r} (quality {entry.quality}): a level is in 1..{MAX_LEVEL:g}, quality 0"
        )
    kind, point = _level_point(level)
    return bytes([metric | kind]) + point


def _level_point(level: float) -> tuple[int, bytes]:
    """The shortest exact form of a level: (point kind, its bytes)."""
    milli = round(level * 1000)
    if milli / 1000 == level:
        return POINT_MILLI, _varint(milli)
    as_float32 = struct.pack("<f", level)
    if struct.unpack("<f", as_float32)[0] == level:
        return POINT_FLOAT32, as_float32
    return POINT_FLOAT64, struct.pack("<d", level)


def stream_layout(arch: str, count: int) -> tuple[tuple[str, ...], int]:
    """The names of `count` streams of an architecture, in coding order, and its downsampling factor: from
    format 3 on a file stores neither (the architecture defines them), only each stream's length."""
    from zoo.registry import ARCHITECTURES  # lazily: the registry builds on the models

    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise BitstreamError(f"the file was made by architecture {arch!r}, which this zoo does not know")
    names = spec.model_class.latent_names_for(count)
    if names is None:
        raise BitstreamError(f"{arch} codes {len(spec.latent_names)} streams per tile, not {count}")
    return names, spec.downsample


def dumps(c: Compressed) -> bytes:
    """Serialise in the format version `c` declares; raises BitstreamError if `c` does not fit its limits."""
    if not (1 <= c.height <= MAX_DIM and 1 <= c.width <= MAX_DIM):
        raise BitstreamError(f"image size {c.height}x{c.width} is outside 1..{MAX_DIM}")
    if not 1 <= len(c.tiles) <= MAX_TILES:
        raise BitstreamError(f"{len(c.tiles)} tiles is outside 1..{MAX_TILES}")
    names = tuple(name for name, _ in c.tiles[0].streams)
    if not 1 <= len(names) <= MAX_STREAMS or any(tuple(n for n, _ in t.streams) != names for t in c.tiles):
        raise BitstreamError(f"every tile must carry the same named streams (1..{MAX_STREAMS})")
    if any(k == LEVEL_KEY for k, _ in c.extra):
        raise BitstreamError(f"extra field {LEVEL_KEY!r} is reserved for the entry's level")
    if c.format_version not in READABLE_VERSIONS:
        raise BitstreamError(f"cannot write format version {c.format_version} (this zoo writes {READABLE_VERSIONS})")
    if c.format_version >= 3:
        return _dumps_v3(c, names)
    return _dumps_v2(c, names)


def _dumps_v3(c: Compressed, names: tuple[str, ...]) -> bytes:
    canonical, downsample = stream_layout(c.entry.arch, len(names))
    if set(names) != set(canonical) or len(set(names)) != len(names):
        raise BitstreamError(f"streams {list(names)} are not the {list(canonical)} of {c.entry.arch}")
    if len(c.extra) > MAX_EXTRA:
        raise BitstreamError(f"more than {MAX_EXTRA} extra fields")
    if len(c.fingerprint) not in (SHORT_FINGERPRINT_BYTES, FINGERPRINT_BYTES):
        raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes (or its first {SHORT_FINGERPRINT_BYTES})")
    if (c.channels, c.bit_depth) != (3, 8):
        raise BitstreamError(f"unsupported image layout: {c.channels} channels at {c.bit_depth} bits")
    tile_size = c.tile_size if len(c.tiles) > 1 else 0
    if len(c.tiles) == 1 and c.tile_size != 0:
        raise BitstreamError("a one-tile image has tile size 0")
    if grid_size(c.height, c.width, tile_size) != len(c.tiles):
        raise BitstreamError(f"{len(c.tiles)} tiles do not cut {c.height}x{c.width} into tiles of {tile_size}")
    for i, t in enumerate(c.tiles):
        rect = grid_rect(c.height, c.width, tile_size, i)
        if tuple(t.rect) != rect or tuple(t.latent_hw) != _latent_hw(rect, downsample):
            raise BitstreamError(f"tile {i} is at {t.rect} (latent {t.latent_hw}) where the grid has {rect}")
    if len(c.tile_checksums) != len(c.tiles) or combine_checksums(c.tile_checksums) != c.index_checksum:
        raise BitstreamError(
            f"format {c.format_version} stores each tile's index checksum: tile_checksums must give one per tile, "
            "combining to index_checksum"
        )
    head = bytearray(MAGIC) + bytes([c.format_version])
    head += _str(c.entry.arch) + _str(c.entry.version) + _entry_byte_and_point(c.entry)
    head += c.fingerprint[:SHORT_FINGERPRINT_BYTES]
    head += _varint(c.height) + _varint(c.width) + _varint(tile_size) + bytes([len(names)])
    head += _varint(len(c.extra)) + b"".join(_str(k) + _str(v) for k, v in c.extra)
    header_crc = zlib.crc32(head)
    table, payload = bytearray(), bytearray()
    for i, (t, index_check) in enumerate(zip(c.tiles, c.tile_checksums, strict=True)):
        streams = dict(t.streams)
        data = b"".join(streams[name] for name in canonical)
        row = b"".join(_varint(len(streams[name])) for name in canonical) + struct.pack("<I", index_check)
        table += row + struct.pack("<I", _tile_check(header_crc, i, row, data))
        payload += data
    if len(head) + len(table) + len(payload) > MAX_FILE_BYTES:
        raise BitstreamError(f"the file would be larger than {MAX_FILE_BYTES} bytes")
    return bytes(head + table + payload)


def _tile_check(header_crc: int, index: int, row: bytes, data: bytes) -> int:
    """Format 3's per-tile check: CRC32 of the header, the tile's number, its table row and its streams' bytes.
    It binds the streams to their place (and covers the header), verified before the tile is decoded."""
    return zlib.crc32(data, zlib.crc32(row, zlib.crc32(struct.pack("<I", index), header_crc)))


def _latent_hw(rect: tuple[int, int, int, int], downsample: int) -> tuple[int, int]:
    return (math.ceil(rect[2] / downsample), math.ceil(rect[3] / downsample))


def _dumps_v2(c: Compressed, names: tuple[str, ...]) -> bytes:
    """Formats 1 and 2 (one layout): written only to re-serialise files of those versions."""
    if len(c.fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    extra = c.extra + (((LEVEL_KEY, format_level(c.entry.level)),) if c.entry.level is not None else ())
    if len(extra) > MAX_EXTRA:
        raise BitstreamError(f"more than {MAX_EXTRA} extra fields")
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

    def varint(self, what: str, limit: int) -> int:
        """An unsigned LEB128 value of at most 5 bytes, written in its shortest form, and at most `limit`."""
        value = 0
        for k in range(5):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * k)
            if not byte & 0x80:
                if byte == 0 and k > 0:
                    raise BitstreamError(f"{what} is not written in its shortest form")
                if value > limit:
                    raise BitstreamError(f"{what} {value} is out of range (at most {limit})")
                return value
        raise BitstreamError(f"{what} is longer than 5 bytes")


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
    (version,) = r.unpack("<B", "format version")
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"unknown format version {version} (this zoo reads {', '.join(map(str, READABLE_VERSIONS))}); "
            "a newer zoo may read it"
        )
    if version >= 3:
        return _parse_v3(r, version)
    (flags,) = r.unpack("<B", "flags")
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
        streams, pos = _streams_at(data, pos, names, lengths)
        tiles.append(TileStreams(rect, latent_hw, streams))
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


def _streams_at(
    data: bytes, pos: int, names: Sequence[str], lengths: Sequence[int]
) -> tuple[tuple[tuple[str, bytes], ...], int]:
    """One tile's named streams, laid end to end from `pos`, and the position after them."""
    streams = []
    for name, n in zip(names, lengths, strict=True):
        streams.append((name, data[pos : pos + n]))
        pos += n
    return tuple(streams), pos


def _parse_v3(r: _Reader, version: int) -> Header:
    """Format 3 (docs/bitstream.md): varints, no stream names, and each tile's check verified before
    anything is made from its streams."""
    data = r.data
    arch = r.string("architecture")
    entry_version = r.string("entry version")
    (entry_byte,) = r.unpack("<B", "entry byte")
    kind, metric_code = entry_byte & 3, (entry_byte >> 2) & 3
    metric = next((name for name, code in METRIC_CODES.items() if code == metric_code), None)
    if metric is None or entry_byte >> 4:
        raise BitstreamError(f"entry byte {entry_byte:#04x} names no metric this zoo knows, or sets reserved bits")
    quality, level = 0, None
    if kind == POINT_QUALITY:
        quality = r.varint("quality", MAX_QUALITY)
    else:
        if kind == POINT_MILLI:
            level = r.varint("level", round(MAX_LEVEL * 1000)) / 1000
        else:
            (level,) = r.unpack("<f" if kind == POINT_FLOAT32 else "<d", "level")
        if not (math.isfinite(level) and 1.0 <= level <= MAX_LEVEL):
            raise BitstreamError(f"header level {level!r} is out of range")
        if _level_point(level)[0] != kind:
            raise BitstreamError(f"level {level!r} is not stored in its shortest exact form")
    fingerprint = r.take(SHORT_FINGERPRINT_BYTES, "fingerprint")
    height, width = r.varint("height", 0xFFFFFFFF), r.varint("width", 0xFFFFFFFF)
    if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM) or height * width > MAX_PIXELS:
        raise BitstreamError(f"image size {height}x{width} is outside the limits ({MAX_DIM} per side)")
    tile_size = r.varint("tile size", MAX_DIM)
    (n_streams,) = r.unpack("<B", "stream count")
    if not 1 <= n_streams <= MAX_STREAMS:
        raise BitstreamError(f"{n_streams} streams per tile is outside 1..{MAX_STREAMS}")
    n_extra = r.varint("extra count", MAX_EXTRA)
    extra = tuple((r.string("extra key"), r.string("extra value")) for _ in range(n_extra))
    if any(k == LEVEL_KEY for k, _ in extra):
        raise BitstreamError(f"extra field {LEVEL_KEY!r} is reserved")
    # The grid follows from the image and tile sizes: the count by arithmetic, before anything is built.
    n_tiles = grid_size(height, width, tile_size)
    if tile_size and n_tiles == 1:
        raise BitstreamError(f"tile size {tile_size} for a one-tile {height}x{width} image (a one-tile image has 0)")
    if n_tiles > MAX_TILES:
        raise BitstreamError(
            f"a {height}x{width} image cut into tiles of {tile_size} has {n_tiles} tiles (over {MAX_TILES})"
        )
    if n_tiles * (n_streams + 8) > len(data) - r.pos:  # a row is at least a byte a stream and two u32
        raise BitstreamError(f"file is truncated: {n_tiles} tiles of {n_streams} streams do not fit in it")
    header_crc = zlib.crc32(data[: r.pos])
    rows = []
    for i in range(n_tiles):
        start = r.pos
        lengths = tuple(r.varint(f"tile {i} stream length", MAX_FILE_BYTES) for _ in range(n_streams))
        (index_check,) = r.unpack("<I", f"tile {i} index checksum")
        row = data[start : r.pos]
        (check,) = r.unpack("<I", f"tile {i} check")
        rows.append((lengths, index_check, row, check))
    header_bytes = r.pos
    described = header_bytes + sum(sum(lengths) for lengths, *_ in rows)
    if described != len(data):
        raise BitstreamError(f"file is {len(data)} bytes but its header describes {described} (truncated or padded)")
    pos = header_bytes
    for i, (lengths, _, row, check) in enumerate(rows):
        end = pos + sum(lengths)
        if _tile_check(header_crc, i, row, data[pos:end]) != check:
            top, left, _, _ = grid_rect(height, width, tile_size, i)
            where = f"tile {i} of {n_tiles} (at row {top}, column {left})" if n_tiles > 1 else "the image"
            raise BitstreamError(
                f"{where} fails its check: its streams are corrupt or do not belong at its place"
                + (", or the header is corrupt" if i == 0 else "")
            )
        pos = end
    # every byte is verified: what the header names can be looked up now
    names, downsample = stream_layout(arch, n_streams)
    tiles, pos = [], header_bytes
    for i, (lengths, *_) in enumerate(rows):
        rect = grid_rect(height, width, tile_size, i)
        streams, pos = _streams_at(data, pos, names, lengths)
        tiles.append(TileStreams(rect, _latent_hw(rect, downsample), streams))
    checks = tuple(index_check for _, index_check, *_ in rows)
    return Header(
        version,
        EntryId(arch, quality, metric, entry_version, level),
        fingerprint,
        height,
        width,
        3,
        8,
        tile_size,
        combine_checksums(checks),
        tuple(tiles),
        extra,
        header_bytes,
        len(data),
        checks,
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
    """Parse and check the header (formats 1 and 2: without the payload checksum; from format 3 on every
    tile's check, which covers the header too)."""
    return _parse_header(data)


def loads(data: bytes) -> Compressed:
    """Parse a whole file, verifying every checksum; raises BitstreamError on any problem."""
    header = _parse_header(data)
    if header.format_version < 3:
        (stored,) = struct.unpack("<I", data[-4:])
        if zlib.crc32(bytes(data[:-4])) != stored:
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
        tile_checksums=header.tile_checksums,
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
