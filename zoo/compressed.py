"""In-memory form of a compressed image: named entropy-coded streams per tile plus what made them.

`zoo.bitstream` turns a `Compressed` into the on-disk format and back; nothing here knows about bytes layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    encoder used; a decoder that computes different indexes must refuse rather than emit garbage."""

    entry: EntryId
    fingerprint: bytes  # 16 bytes identifying the exact weights and tables
    height: int
    width: int
    tiles: tuple[TileStreams, ...]
    index_checksum: int
    tile_size: int = 0  # 0: one tile covers the whole image
    channels: int = 3
    bit_depth: int = 8
    extra: tuple[tuple[str, str], ...] = field(default=())
    # The bitstream format the streams follow (zoo.bitstream.FORMAT_VERSION when made by this zoo); the decoder
    # applies that version's rules (docs/bitstream.md), so a file read from disk keeps the version it was made in.
    format_version: int = field(default_factory=lambda: _current_format())

    @property
    def payload_bytes(self) -> int:
        """Entropy-coded bytes only, without any container header."""
        return sum(t.num_bytes for t in self.tiles)

    @property
    def payload_bits(self) -> int:
        return 8 * self.payload_bytes


def _current_format() -> int:
    from zoo.bitstream import FORMAT_VERSION

    return FORMAT_VERSION
