"""In-memory form of a compressed image: named entropy-coded streams per tile plus what made them, and the
format versions whose rules streams follow.

`zoo.bitstream` turns a `Compressed` into the on-disk format and back; nothing here knows about bytes layout.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

# The one place that decides which format versions exist (docs/bitstream.md, "Versions"): this zoo writes
# FORMAT_VERSION and decodes every version in READABLE_VERSIONS by the rules of the version a file declares
# (`Compressed.format_version`). `zoo.bitstream` lays each version out in bytes.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def symbol_order(format_version: int) -> str:
    """The order of a context model's y symbols in streams of this version (zoo.models.base.SYMBOL_ORDERS):
    format 1 codes them in raster order, formats 2 and 3 wavefront by wavefront. Other models' streams are
    alike in every version."""
    return "raster" if format_version == 1 else "wavefront"


@dataclass(frozen=True)
class EntryId:
    """Identity of the zoo entry that made a stream, as stable strings and numbers (never positions).

    A variable-rate entry has quality 0 and names its operating point by `level`, a float in [1, 8]."""

    arch: str
    quality: int
    metric: str = "mse"
    version: str = "0"
    level: float | None = None

    @property
    def point(self) -> float:
        """The operating point: the level of a variable-rate entry, else the quality."""
        return self.level if self.level is not None else self.quality

    def __str__(self) -> str:
        if self.level is not None:
            return f"{self.arch}/q{format_level(self.level)}-{self.metric}@{self.version}"
        return f"{self.arch}/q{self.quality}-{self.metric}@{self.version}"


def format_level(level: float) -> str:
    """A level as the shortest decimal that reads back to the same float ("3", "3.5", "3.3333333333333335")."""
    text = repr(float(level))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class TileStreams:
    """One tile's entropy-coded streams: the one form a tile has, everywhere. A model's `compress` returns one
    per image of its batch and its `decompress` takes them; `Compressed.tiles` holds them; the bitstream's tile
    table stores their `rect`, `latent_hw` and the length of each stream, whose bytes follow the header.

    `rect` is (top, left, height, width) in image pixels: the Codec places each tile in its image, and a model,
    which codes its whole (padded) input, gives (0, 0, height, width) of that input. `latent_hw` is the spatial
    size of the deepest latent, which the decoder needs to start. `index_checksum` is the CRC32 of the table
    indexes the encoder used, as a model's `compress` computed it; files store one checksum for the whole image
    (`Compressed.index_checksum`, which the Codec derives from these), so the tiles of a `Compressed` carry 0."""

    rect: tuple[int, int, int, int]
    latent_hw: tuple[int, int]
    streams: tuple[tuple[str, bytes], ...]
    index_checksum: int = 0

    def stream(self, name: str) -> bytes:
        for key, data in self.streams:
            if key == name:
                return data
        raise KeyError(name)

    @property
    def lengths(self) -> tuple[tuple[str, int], ...]:
        """(name, length in bytes) of each stream, in order: what the file's tile table records."""
        return tuple((name, len(data)) for name, data in self.streams)

    @property
    def num_bytes(self) -> int:
        return sum(len(data) for _, data in self.streams)


@dataclass(frozen=True)
class Compressed:
    """One compressed image. `index_checksum` is a CRC32 over the entropy-model table indexes the
    encoder used; a decoder that computes different indexes must refuse rather than emit garbage.

    From format 3 on, `tile_checksums` holds each tile's own check (its table indexes bound to its place,
    `zoo.codec.tile_checksum`), which the decoder compares as soon as that tile is decoded, and
    `index_checksum` is their combination (`zoo.codec.combine_checksums`); formats 1 and 2 store only the
    combination, and their `tile_checksums` is empty."""

    entry: EntryId
    # identifies the exact weights and tables: the entry's 16-byte fingerprint as far as the format stores it
    # (all 16 bytes in formats 1 and 2, the first 8 from format 3 on)
    fingerprint: bytes
    height: int
    width: int
    tiles: tuple[TileStreams, ...]
    index_checksum: int
    tile_size: int = 0  # 0: one tile covers the whole image
    channels: int = 3
    bit_depth: int = 8
    extra: tuple[tuple[str, str], ...] = field(default=())
    # The bitstream format the streams follow (FORMAT_VERSION above when made by this zoo); the decoder
    # applies that version's rules (docs/bitstream.md), so a file read from disk keeps the version it was made in.
    format_version: int = FORMAT_VERSION
    tile_checksums: tuple[int, ...] = field(default=())

    @property
    def payload_bytes(self) -> int:
        """Entropy-coded bytes only, without any container header."""
        return sum(t.num_bytes for t in self.tiles)

    @property
    def payload_bits(self) -> int:
        return 8 * self.payload_bytes


def tile_checksum(format_version: int, index: int, tile: TileStreams, index_crc: int) -> int:
    """What tile number `index` contributes to the image's index checksum, given the CRC of the table indexes
    its model used. Format 1: that CRC alone, so a factorized tile's value depends only on its size and two
    tiles' streams could trade places unnoticed. From format 2 on it binds each tile's streams to its place: a
    CRC32 over the tile number, rect and latent size, then each stream's name, length and bytes, then the index
    CRC (format 3 stores this value per tile, format 2 only their combination)."""
    if format_version < 2:
        return index_crc
    crc = zlib.crc32(struct.pack("<IIIIIHH", index, *tile.rect, *tile.latent_hw))
    for name, data in tile.streams:
        crc = zlib.crc32(data, zlib.crc32(name.encode() + struct.pack("<I", len(data)), crc))
    return zlib.crc32(struct.pack("<I", index_crc & 0xFFFFFFFF), crc)


def combine_checksums(checksums: Sequence[int]) -> int:
    """One CRC over the per-tile index checksums, in tile order: what `Compressed.index_checksum` holds."""
    return zlib.crc32(b"".join(struct.pack("<I", c & 0xFFFFFFFF) for c in checksums))
