"""The Codec API: images in, `Compressed` out, and back, for any size from 1x1 up.

Padding, tiling and the checks that a stream belongs to this codec live here and only here; the CLI,
the server and the evaluation tools call these methods.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.bitstream import FORMAT_VERSION, symbol_order
from zoo.compressed import Compressed, EntryId, TileStreams
from zoo.errors import BitstreamError, ImageTooLarge, InputError
from zoo.models.base import CompressionModel, LatentStreams, check_index_crc

DEFAULT_TILE_SIZE = 1024  # bounds peak memory: a 1024^2 tile needs well under 1 GB at the largest widths
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class TileRect:
    top: int
    left: int
    height: int
    width: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.top, self.left, self.height, self.width)


def tile_grid(height: int, width: int, tile_size: int) -> list[TileRect]:
    """Tiles in raster order; tile_size 0 means one tile for the whole image."""
    if tile_size <= 0 or (height <= tile_size and width <= tile_size):
        return [TileRect(0, 0, height, width)]
    return [
        TileRect(top, left, min(tile_size, height - top), min(tile_size, width - left))
        for top in range(0, height, tile_size)
        for left in range(0, width, tile_size)
    ]


def combine_checksums(checksums: Sequence[int]) -> int:
    """One CRC over the per-tile index checksums, in tile order: what `Compressed.index_checksum` holds."""
    return zlib.crc32(b"".join(struct.pack("<I", c & 0xFFFFFFFF) for c in checksums))


def _latents(tile: TileStreams) -> LatentStreams:
    # The checksum is compared per image by the Codec, not per tile by the model.
    return LatentStreams(tile.streams, tile.latent_hw, 0)


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
    ):
        if not model.has_tables:
            from zoo.errors import TablesMissingError

            raise TablesMissingError(f"{entry}: the model has no integer CDF tables; call model.update() first")
        if tile_size and tile_size % model.downsample:
            raise ValueError(f"tile_size must be a multiple of {model.downsample}")
        self.model = model.eval()
        self.entry = entry
        self.fingerprint = bytes(fingerprint)
        self.tile_size = int(tile_size)
        self.max_pixels = int(max_pixels)

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
        for rect in tile_grid(x.shape[-2], x.shape[-1], self.tile_size):
            crop = x[..., rect.top : rect.top + rect.height, rect.left : rect.left + rect.width]
            yield rect, crop

    def compress(self, x: Tensor) -> Compressed:
        """Compress one image, float (3, H, W) or (1, 3, H, W) in [0, 1]."""
        x = self._as_image(x)
        tiles, checksums = [], []
        for rect, crop in self._tiles(x):
            (latents,) = self.model.compress(self._pad(crop.unsqueeze(0).to(self.device, torch.float32)))
            tiles.append(TileStreams(rect.as_tuple(), latents.latent_hw, latents.streams))
            checksums.append(latents.index_checksum)
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
            batch = self._pad(torch.stack([images[i] for i in members]).to(self.device, torch.float32))
            for i, latents in zip(members, self.model.compress(batch), strict=True):
                tile = TileStreams((0, 0, h, w), latents.latent_hw, latents.streams)
                results[i] = self._compressed(h, w, [tile], [latents.index_checksum])
        return [r for r in results if r is not None]

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

    def _expected_layout(self, c: Compressed) -> list[TileRect]:
        if c.height < 1 or c.width < 1 or c.height * c.width > self.max_pixels:
            raise BitstreamError(f"image size {c.height}x{c.width} is out of range for this codec")
        if c.channels != 3 or c.bit_depth != 8:
            raise BitstreamError(f"unsupported image layout: {c.channels} channels at {c.bit_depth} bits")
        grid = tile_grid(c.height, c.width, c.tile_size if len(c.tiles) > 1 else 0)
        if len(grid) != len(c.tiles):
            raise BitstreamError(f"stream has {len(c.tiles)} tiles where its layout needs {len(grid)}")
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

    def decompress(self, c: Compressed) -> Tensor:
        """Reconstruction as a float (1, 3, H, W) tensor in [0, 1]."""
        self.check_compatible(c)
        grid = self._expected_layout(c)
        out = torch.empty((1, 3, c.height, c.width), dtype=torch.float32)
        checksums = []
        for rect, tile in zip(grid, c.tiles, strict=True):
            x_hat, (crc,) = self.model.decompress_unchecked([_latents(tile)], order=symbol_order(c.format_version))
            checksums.append(crc)
            out[..., rect.top : rect.top + rect.height, rect.left : rect.left + rect.width] = x_hat[
                ..., : rect.height, : rect.width
            ].cpu()
        check_index_crc(c.index_checksum, combine_checksums(checksums))
        return out

    def decompress_batch(self, cs: Sequence[Compressed]) -> list[Tensor]:
        """Decompress several streams; single-tile streams of one latent size share one network pass."""
        results: list[Tensor | None] = [None] * len(cs)
        groups: dict[tuple[tuple[int, int], str], list[int]] = {}
        for i, c in enumerate(cs):
            self.check_compatible(c)
            self._expected_layout(c)
            if len(c.tiles) > 1:
                results[i] = self.decompress(c)
            else:
                groups.setdefault((c.tiles[0].latent_hw, symbol_order(c.format_version)), []).append(i)
        for (_, order), members in groups.items():
            x_hat, checksums = self.model.decompress_unchecked([_latents(cs[i].tiles[0]) for i in members], order=order)
            for j, i in enumerate(members):
                check_index_crc(cs[i].index_checksum, combine_checksums([checksums[j]]))
                results[i] = x_hat[j : j + 1, :, : cs[i].height, : cs[i].width].cpu()
        return [r for r in results if r is not None]
