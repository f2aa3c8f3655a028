"""The Codec API: images in, `Compressed` out, and back, for any size from 1x1 up.

Padding, tiling and the checks that a stream belongs to this codec live here and only here; the CLI,
the server and the evaluation tools call these methods.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.bitstream import FORMAT_VERSION, READABLE_VERSIONS, grid_rect, grid_size, symbol_order
from zoo.compressed import Compressed, EntryId, TileStreams
from zoo.errors import BitstreamError, ImageTooLarge, InputError
from zoo.imageio import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # the one pixel limit, shared with image reading
from zoo.models.base import CompressionModel, check_index_crc

DEFAULT_TILE_SIZE = 1024  # bounds peak memory: a 1024^2 tile needs well under 1 GB at the largest widths
# The decoder's own bound on one tile, whatever a file declares: a tile is decoded in one network pass, so
# this (not the file) decides the memory a decode needs (benchmarks/decode_limits.py measures it).
DEFAULT_MAX_TILE_PIXELS = DEFAULT_TILE_SIZE * DEFAULT_TILE_SIZE

_Out = TypeVar("_Out")


@dataclass(frozen=True)
class TileRect:
    top: int
    left: int
    height: int
    width: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.top, self.left, self.height, self.width)


def tile_grid(height: int, width: int, tile_size: int) -> list[TileRect]:
    """Tiles in raster order (the grid docs/bitstream.md defines); tile_size 0 means one tile for the whole
    image. Callers check `grid_size` first: the list has one entry per tile."""
    return [TileRect(*grid_rect(height, width, tile_size, i)) for i in range(grid_size(height, width, tile_size))]


def combine_checksums(checksums: Sequence[int]) -> int:
    """One CRC over the per-tile index checksums, in tile order: what `Compressed.index_checksum` holds."""
    return zlib.crc32(b"".join(struct.pack("<I", c & 0xFFFFFFFF) for c in checksums))


def tile_checksum(format_version: int, index: int, tile: TileStreams, index_crc: int) -> int:
    """What tile number `index` contributes to the image's index checksum, given the CRC of the table indexes
    its model used. Format 1: that CRC alone, so a factorized tile's value depends only on its size and two
    tiles' streams could trade places unnoticed. Format 2 binds each tile's streams to its place: a CRC32 over
    the tile number, rect and latent size, then each stream's name, length and bytes, then the index CRC."""
    if format_version < 2:
        return index_crc
    crc = zlib.crc32(struct.pack("<IIIIIHH", index, *tile.rect, *tile.latent_hw))
    for name, data in tile.streams:
        crc = zlib.crc32(data, zlib.crc32(name.encode() + struct.pack("<I", len(data)), crc))
    return zlib.crc32(struct.pack("<I", index_crc & 0xFFFFFFFF), crc)


class Codec:
    """A model with its identity, ready to compress images to `Compressed` and back.

    `tile_size`: images larger than this in either dimension are cut into independent tiles of this size
    (a multiple of the model's downsampling factor), which bounds memory; 0 disables tiling.
    """

    def __init__(
        self,
        model: CompressionModel,
        entry: EntryId,
        fingerprint: bytes,
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS,
    ):
        if not model.has_tables:
            from zoo.errors import TablesMissingError

            raise TablesMissingError(f"{entry}: the model has no integer CDF tables; call model.update() first")
        if (
            isinstance(tile_size, bool)
            or not isinstance(tile_size, int)
            or tile_size < 0
            or tile_size % model.downsample
        ):
            raise InputError(
                f"tile_size must be 0 (no tiling) or a positive multiple of {model.downsample}, not {tile_size!r}"
            )
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise InputError(f"max_pixels must be a positive number of pixels, not {max_pixels!r}")
        self.model = model.eval()
        self.entry = entry
        self.fingerprint = bytes(fingerprint)
        self.tile_size = int(tile_size)
        self.max_pixels = int(max_pixels)
        self.max_tile_pixels = int(max_tile_pixels)

    def __repr__(self) -> str:
        return f"Codec({self.entry}, fingerprint={self.fingerprint.hex()[:12]}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def downsample(self) -> int:
        return self.model.downsample

    # -- compress -------------------------------------------------------------------------------
    def _as_image(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"expected a torch.Tensor image, got {type(x).__name__}")
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 3 or x.shape[0] != 3:
            raise InputError(f"expected an image tensor of shape (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}")
        h, w = int(x.shape[1]), int(x.shape[2])
        if h < 1 or w < 1:
            raise InputError(f"empty image {h}x{w}")
        if h * w > self.max_pixels:
            raise ImageTooLarge(f"image of {h}x{w} pixels is over the limit of {self.max_pixels} pixels")
        if not x.is_floating_point():
            raise InputError(f"expected a float image in [0, 1], got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise InputError("image has NaN or infinite values")
        # Refused rather than clamped: values outside [0, 1] are most often a scale mistake (0..255), which
        # clamping would turn into a silently white image. zoo.imageio clips float files with a notice.
        low, high = torch.aminmax(x)
        if low < 0 or high > 1:
            raise InputError(
                f"image values span {low.item():.4g} to {high.item():.4g}, outside [0, 1] (clamp or rescale it first)"
            )
        return x

    def _pad(self, x: Tensor) -> Tensor:
        """Replicate-pad (B, 3, h, w) to a multiple of the downsampling factor (codes cheaper than zeros)."""
        h, w = x.shape[-2:]
        d = self.downsample
        ph, pw = math.ceil(h / d) * d - h, math.ceil(w / d) * d - w
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (0, pw, 0, ph), mode="replicate")

    def _tiles(self, x: Tensor) -> Iterator[tuple[TileRect, Tensor]]:
        self._check_tile(*self._largest_tile(x.shape[-2], x.shape[-1], self.tile_size), declared=False)
        for rect in tile_grid(x.shape[-2], x.shape[-1], self.tile_size):
            crop = x[..., rect.top : rect.top + rect.height, rect.left : rect.left + rect.width]
            yield rect, crop

    def compress(self, x: Tensor) -> Compressed:
        """Compress one image, float (3, H, W) or (1, 3, H, W) in [0, 1]."""
        x = self._as_image(x)
        tiles, checksums = [], []
        for i, (rect, crop) in enumerate(self._tiles(x)):
            (coded,) = self.model.compress(self._pad(crop.unsqueeze(0).to(self.device, torch.float32)))
            tile = self._placed(coded, rect.as_tuple())
            tiles.append(tile)
            checksums.append(tile_checksum(FORMAT_VERSION, i, tile, coded.index_checksum))
        return self._compressed(int(x.shape[1]), int(x.shape[2]), tiles, checksums)

    def compress_batch(self, x: Tensor | Sequence[Tensor]) -> list[Compressed]:
        """Compress several images; those of the same size that need no tiling share one network pass."""
        images = [self._as_image(img) for img in (list(x) if isinstance(x, Tensor) and x.dim() == 4 else x)]
        results: list[Compressed | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            h, w = int(img.shape[1]), int(img.shape[2])
            if len(tile_grid(h, w, self.tile_size)) > 1:
                results[i] = self.compress(img)
            else:
                groups.setdefault((h, w), []).append(i)
        for (h, w), members in groups.items():
            self._check_tile(h, w, declared=False)
            batch = self._pad(torch.stack([images[i] for i in members]).to(self.device, torch.float32))
            for i, coded in zip(members, self.model.compress(batch), strict=True):
                tile = self._placed(coded, (0, 0, h, w))
                crc = tile_checksum(FORMAT_VERSION, 0, tile, coded.index_checksum)
                results[i] = self._compressed(h, w, [tile], [crc])
        return [r for r in results if r is not None]

    @staticmethod
    def _placed(coded: TileStreams, rect: tuple[int, int, int, int]) -> TileStreams:
        """A model's output as a tile of the image: at its place, without its own index checksum (a file has
        one per image, which `tile_checksum` folds these into)."""
        return dataclasses.replace(coded, rect=rect, index_checksum=0)

    def _compressed(self, h: int, w: int, tiles: list[TileStreams], checksums: list[int]) -> Compressed:
        return Compressed(
            entry=self.entry,
            fingerprint=self.fingerprint,
            height=h,
            width=w,
            tiles=tuple(tiles),
            index_checksum=combine_checksums(checksums),
            tile_size=self.tile_size if len(tiles) > 1 else 0,
            format_version=FORMAT_VERSION,
        )

    # -- decompress -----------------------------------------------------------------------------
    def check_compatible(self, c: Compressed) -> None:
        """Refuse streams that were made by another entry or other weights."""
        if not isinstance(c, Compressed):
            raise InputError(
                f"decompress takes a zoo.Compressed, not {type(c).__name__}: "
                "zoo.bitstream.loads(data) parses file bytes"
            )
        mine, theirs = self.entry, c.entry
        if (mine.arch, mine.quality, mine.metric, mine.level) != (
            theirs.arch,
            theirs.quality,
            theirs.metric,
            theirs.level,
        ):
            raise BitstreamError(f"stream was made by {theirs}, but this codec is {mine}")
        if c.fingerprint != self.fingerprint:
            raise BitstreamError(
                f"stream was made by {theirs} with weights {c.fingerprint.hex()[:12]}, but this codec's "
                f"weights are {self.fingerprint.hex()[:12]} ({mine})"
            )

    def _largest_tile(self, height: int, width: int, tile_size: int) -> tuple[int, int]:
        if tile_size <= 0:
            return height, width
        return min(tile_size, height), min(tile_size, width)

    def _check_tile(self, height: int, width: int, *, declared: bool) -> None:
        if height * width <= self.max_tile_pixels:
            return
        what = "the stream declares a tile" if declared else "a tile"
        hint = "" if declared else ": use a smaller tile_size"
        raise ImageTooLarge(
            f"{what} of {height}x{width} pixels, over this codec's limit of {self.max_tile_pixels} pixels per tile "
            f"(a tile is coded in one network pass; Codec max_tile_pixels){hint}"
        )

    def _expected_layout(self, c: Compressed) -> list[TileRect]:
        """Check the declared geometry against the tiles present and this decoder's limits, by arithmetic
        only, before anything is allocated from it; then the tile grid it implies."""
        if c.format_version not in READABLE_VERSIONS:
            raise BitstreamError(f"unknown format version {c.format_version} (this zoo reads {READABLE_VERSIONS})")
        if c.height < 1 or c.width < 1:
            raise BitstreamError(f"image size {c.height}x{c.width} is out of range")
        if c.height * c.width > self.max_pixels:
            raise ImageTooLarge(
                f"the stream declares {c.height}x{c.width} pixels, over this codec's limit of {self.max_pixels}"
            )
        if c.channels != 3 or c.bit_depth != 8:
            raise BitstreamError(f"unsupported image layout: {c.channels} channels at {c.bit_depth} bits")
        tile_size = c.tile_size if len(c.tiles) > 1 else 0
        if len(c.tiles) > 1 and (tile_size < 1 or tile_size % self.downsample):
            raise BitstreamError(
                f"tile size {tile_size} is not a positive multiple of the model's downsampling ({self.downsample})"
            )
        needed = grid_size(c.height, c.width, tile_size)
        if needed != len(c.tiles):
            raise BitstreamError(f"stream has {len(c.tiles)} tiles where its layout needs {needed}")
        self._check_tile(*self._largest_tile(c.height, c.width, tile_size), declared=True)
        grid = tile_grid(c.height, c.width, tile_size)
        names = set(self.model.latent_names)
        for rect, tile in zip(grid, c.tiles, strict=True):
            if tuple(tile.rect) != rect.as_tuple():
                raise BitstreamError(f"tile {tile.rect} does not match the layout (expected {rect.as_tuple()})")
            expected_hw = self._latent_hw(rect.height, rect.width)
            if tuple(tile.latent_hw) != expected_hw:
                raise BitstreamError(f"tile latent size {tile.latent_hw} does not match {expected_hw}")
            if {name for name, _ in tile.streams} != names:
                raise BitstreamError(
                    f"tile streams {[n for n, _ in tile.streams]} are not the {sorted(names)} of this model"
                )
        return grid

    def _latent_hw(self, h: int, w: int) -> tuple[int, int]:
        d = self.downsample
        return (math.ceil(h / d), math.ceil(w / d))

    def _checked_grid(self, c: Compressed) -> list[TileRect]:
        self.check_compatible(c)
        return self._expected_layout(c)

    def _decoded_tiles(self, c: Compressed, grid: list[TileRect]) -> Iterator[tuple[TileRect, Tensor]]:
        """Each tile's reconstruction, float (1, 3, h, w) cropped to its rect, one at a time in raster order;
        the image's index checksum is compared after the last one, so callers consume the whole iterator
        before they return anything made from it."""
        checksums = []
        for i, (rect, tile) in enumerate(zip(grid, c.tiles, strict=True)):
            # The checksum is compared per image, once every tile is decoded, not per tile by the model.
            x_hat, (crc,) = self.model.decompress_unchecked([tile], order=symbol_order(c.format_version))
            checksums.append(tile_checksum(c.format_version, i, tile, crc))
            yield rect, x_hat[..., : rect.height, : rect.width]
        check_index_crc(c.index_checksum, combine_checksums(checksums))

    def decompress(self, c: Compressed) -> Tensor:
        """Reconstruction as a float (1, 3, H, W) tensor in [0, 1]. For an image to save or send,
        `decompress_uint8` needs a quarter of the memory."""
        grid = self._checked_grid(c)  # every check passes before the output is allocated
        out = torch.empty((1, 3, c.height, c.width), dtype=torch.float32)
        for rect, x_hat in self._decoded_tiles(c, grid):
            out[..., rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = x_hat.cpu()
        return out

    def decompress_uint8(self, c: Compressed) -> np.ndarray:
        """Reconstruction as the 8-bit (H, W, 3) image a file stores, equal to
        `zoo.imageio.to_uint8(self.decompress(c))`, but each tile is rounded to 8 bits as soon as it is decoded
        and written into one preallocated array: decoding needs the 8-bit image plus one tile, never a float copy
        of the whole image (4 bytes a sample, and rounding makes more: 2-3 GB at the default 64-megapixel limit)."""
        from zoo.imageio import to_uint8

        grid = self._checked_grid(c)
        out = np.empty((c.height, c.width, 3), dtype=np.uint8)
        for rect, x_hat in self._decoded_tiles(c, grid):
            out[rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = to_uint8(x_hat)
        return out

    def decompress_batch(self, cs: Sequence[Compressed]) -> list[Tensor]:
        """Decompress several streams; single-tile streams of one latent size share one network pass."""
        return self._batch(cs, self.decompress, lambda x_hat: x_hat.cpu())

    def decompress_batch_uint8(self, cs: Sequence[Compressed]) -> list[np.ndarray]:
        """`decompress_batch` giving 8-bit (H, W, 3) images, made as `decompress_uint8` makes them."""
        from zoo.imageio import to_uint8

        return self._batch(cs, self.decompress_uint8, to_uint8)

    def _batch(
        self, cs: Sequence[Compressed], one: Callable[[Compressed], _Out], convert: Callable[[Tensor], _Out]
    ) -> list[_Out]:
        results: list[_Out | None] = [None] * len(cs)
        groups: dict[tuple[tuple[int, int], int], list[int]] = {}
        for i, c in enumerate(cs):
            self._checked_grid(c)
            if len(c.tiles) > 1:
                results[i] = one(c)
            else:
                groups.setdefault((c.tiles[0].latent_hw, c.format_version), []).append(i)
        for (_, version), members in groups.items():
            tiles = [cs[i].tiles[0] for i in members]
            x_hat, checksums = self.model.decompress_unchecked(tiles, order=symbol_order(version))
            for j, i in enumerate(members):
                crc = tile_checksum(cs[i].format_version, 0, cs[i].tiles[0], checksums[j])
                check_index_crc(cs[i].index_checksum, combine_checksums([crc]))
                results[i] = convert(x_hat[j : j + 1, :, : cs[i].height, : cs[i].width])
        return [r for r in results if r is not None]
