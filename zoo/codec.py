"""The Codec API: images in, `Compressed` out, and back, for any size from 1x1 up.

Padding, tiling and the checks that a stream belongs to this codec live here and only here; the CLI,
the server and the evaluation tools call these methods.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.bitstream import SHORT_FINGERPRINT_BYTES, grid_rect, grid_size
from zoo.compressed import (
    FORMAT_VERSION,
    READABLE_VERSIONS,
    Compressed,
    EntryId,
    TileStreams,
    combine_checksums,
    symbol_order,
    tile_checksum,
)
from zoo.errors import BitstreamError, ImageTooLarge, InputError
from zoo.imageio import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # the one pixel limit, shared with image reading
from zoo.models.base import CompressionModel, check_index_crc

if TYPE_CHECKING:
    from zoo.refine import EffortLevel, Objective

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

    def compress(self, x: Tensor, *, effort: int | EffortLevel = 0, seed: int = 0) -> Compressed:
        """Compress one image, float (3, H, W) or (1, 3, H, W) in [0, 1].

        `effort` (0 to `zoo.refine.MAX_EFFORT`, docs/effort.md): above 0 the encoder refines each tile's
        latents for the entry's rate–distortion cost and keeps whichever of the refined and the plain file
        costs less in real coded bytes and decoded pixels; the result is an ordinary file of the entry.
        `seed` makes a refined encode repeatable; decoding never needs it. An `EffortLevel` instead of a
        level number runs that refinement (benchmarks sweep the number of steps this way)."""
        from zoo.refine import EFFORTS, EffortLevel, check_effort

        x = self._as_image(x)
        level = effort if isinstance(effort, EffortLevel) else EFFORTS[check_effort(effort)]
        if level.steps:
            return self._compress_refined(x, level, seed)
        return self._compress_plain(x)

    def _compress_plain(self, x: Tensor) -> Compressed:
        tiles, checksums = [], []
        for i, (rect, crop) in enumerate(self._tiles(x)):
            (coded,) = self.model.compress(self._pad(crop.unsqueeze(0).to(self.device, torch.float32)))
            tile = self._placed(coded, rect.as_tuple())
            tiles.append(tile)
            checksums.append(tile_checksum(FORMAT_VERSION, i, tile, coded.index_checksum))
        return self._compressed(int(x.shape[1]), int(x.shape[2]), tiles, checksums)

    # -- compress with refinement (effort > 0) ---------------------------------------------------------
    def _compress_refined(self, x: Tensor, level: EffortLevel, seed: int) -> Compressed:
        """Refine tiles of one size as a batch of at most `max_tile_pixels` padded pixels (the encoder's own
        bound on one network pass); keep per tile the cheaper of its refined and plain streams, then the
        cheaper of that file and the plain file, by file bytes and 8-bit decoded pixels."""
        from zoo.refine import entry_objective, refine_latents

        objective = entry_objective(self.entry)
        h, w = int(x.shape[1]), int(x.shape[2])
        grid = list(self._tiles(x))
        plain: list[TileStreams] = []
        for _, crop in grid:  # exactly the plain encoder's tiles, one network pass each
            (coded,) = self.model.compress(self._pad(crop.unsqueeze(0).to(self.device, torch.float32)))
            plain.append(coded)
        chosen = list(plain)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (rect, _) in enumerate(grid):
            groups.setdefault((rect.height, rect.width), []).append(i)
        for (th, tw), members in groups.items():
            d = self.downsample
            per_batch = max(1, self.max_tile_pixels // (math.ceil(th / d) * d * math.ceil(tw / d) * d))
            for start in range(0, len(members), per_batch):
                chunk = members[start : start + per_batch]
                batch = self._pad(torch.stack([grid[i][1] for i in chunk]).to(self.device, torch.float32))
                with torch.enable_grad():
                    latents = refine_latents(self.model, batch, (th, tw), objective, level, seed=seed + chunk[0])
                refined = self.model.compress_latents(batch, latents)
                for j, i in enumerate(chunk):
                    target = batch[j : j + 1, :, :th, :tw]
                    # one tile: the file comparison below decides alone (two decodes saved)
                    if len(grid) == 1 or (
                        self._tile_cost(refined[j], target, objective) < self._tile_cost(plain[i], target, objective)
                    ):
                        chosen[i] = refined[j]
        if chosen == plain:
            return self._compressed_from(h, w, grid, plain)
        candidate = self._compressed_from(h, w, grid, chosen)
        baseline = self._compressed_from(h, w, grid, plain)
        better = self._file_cost(candidate, x, objective) < self._file_cost(baseline, x, objective)
        return candidate if better else baseline

    def _compressed_from(self, h: int, w: int, grid: list[tuple[TileRect, Tensor]], coded: list[TileStreams]):
        tiles, checksums = [], []
        for i, ((rect, _), c) in enumerate(zip(grid, coded, strict=True)):
            tile = self._placed(c, rect.as_tuple())
            tiles.append(tile)
            checksums.append(tile_checksum(FORMAT_VERSION, i, tile, c.index_checksum))
        return self._compressed(h, w, tiles, checksums)

    def _tile_cost(self, coded: TileStreams, target: Tensor, objective: Objective) -> float:
        """Bits of a tile's streams plus its λ-weighted distortion over its pixels, decoded to 8 bits."""
        x_hat, _ = self.model.decompress_unchecked([coded])
        th, tw = target.shape[-2:]
        decoded = x_hat[..., :th, :tw].clamp(0, 1).mul(255).round().div(255).to(target)
        return 8.0 * coded.num_bytes + th * tw * float(objective.distortion(decoded, target)[0])

    def _file_cost(self, c: Compressed, x: Tensor, objective: Objective) -> float:
        """The file's bits per pixel plus its λ-weighted distortion, decoded as a user's 8-bit file."""
        from zoo import bitstream

        decoded = torch.from_numpy(self.decompress_uint8(c)).permute(2, 0, 1)[None].float().div(255)
        pixels = c.height * c.width
        return 8.0 * len(bitstream.dumps(c)) / pixels + float(objective.distortion(decoded, x[None].cpu().float())[0])

    def compress_batch(self, x: Tensor | Sequence[Tensor], *, effort: int = 0, seed: int = 0) -> list[Compressed]:
        """Compress several images; those of the same size that need no tiling share one network pass
        (with `effort` above 0 each image is refined and chosen as `compress` does)."""
        from zoo.refine import check_effort

        images = [self._as_image(img) for img in (list(x) if isinstance(x, Tensor) and x.dim() == 4 else x)]
        if check_effort(effort):
            return [self.compress(img, effort=effort, seed=seed) for img in images]
        results: list[Compressed | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            h, w = int(img.shape[1]), int(img.shape[2])
            if len(tile_grid(h, w, self.tile_size)) > 1:
                results[i] = self._compress_plain(img)
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
        # the fingerprint and checksums as the format this zoo writes stores them, so a file reads back equal
        per_tile = FORMAT_VERSION >= 3
        return Compressed(
            entry=self.entry,
            fingerprint=self.fingerprint[:SHORT_FINGERPRINT_BYTES] if per_tile else self.fingerprint,
            height=h,
            width=w,
            tiles=tuple(tiles),
            index_checksum=combine_checksums(checksums),
            tile_size=self.tile_size if len(tiles) > 1 else 0,
            format_version=FORMAT_VERSION,
            tile_checksums=tuple(checksums) if per_tile else (),
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
        differs = [
            f"{what} {a if a is not None else 'none'} in the stream, {b if b is not None else 'none'} here"
            for what, a, b in (
                ("architecture", theirs.arch, mine.arch),
                ("quality", theirs.quality, mine.quality),
                ("metric", theirs.metric, mine.metric),
                ("level", theirs.level, mine.level),
            )
            if a != b
        ]
        if differs:
            raise BitstreamError(f"stream was made by {theirs}, but this codec is {mine}: {'; '.join(differs)}")
        # a file stores the fingerprint's first bytes (all 16 in formats 1 and 2, 8 from format 3 on)
        if len(c.fingerprint) < SHORT_FINGERPRINT_BYTES or not self.fingerprint.startswith(c.fingerprint):
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
        if c.format_version >= 3 and (
            len(c.tile_checksums) != needed or combine_checksums(c.tile_checksums) != c.index_checksum
        ):
            raise BitstreamError(
                f"a format-{c.format_version} stream has one index checksum per tile ({len(c.tile_checksums)} "
                f"for {needed} tiles), combining to its index checksum"
            )
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
        """Each tile's reconstruction, float (1, 3, h, w) cropped to its rect, one at a time in raster order.
        From format 3 on each tile's checksum is compared as soon as it is decoded; formats 1 and 2 store one
        for the image, compared after the last tile, so callers consume the whole iterator before they return
        anything made from it."""
        checksums = []
        for i, (rect, tile) in enumerate(zip(grid, c.tiles, strict=True)):
            x_hat, (crc,) = self.model.decompress_unchecked([tile], order=symbol_order(c.format_version))
            checksums.append(tile_checksum(c.format_version, i, tile, crc))
            if c.tile_checksums:
                _check_tile_crc(c, i, checksums[-1])
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
                if cs[i].tile_checksums:
                    _check_tile_crc(cs[i], 0, crc)
                check_index_crc(cs[i].index_checksum, combine_checksums([crc]))
                results[i] = convert(x_hat[j : j + 1, :, : cs[i].height, : cs[i].width])
        return [r for r in results if r is not None]


def _check_tile_crc(c: Compressed, index: int, computed: int) -> None:
    """Refuse tile `index` as soon as it is decoded if its checksum differs from the encoder's (format 3 on)."""
    expected = c.tile_checksums[index]
    if computed == expected:
        return
    top, left = c.tiles[index].rect[:2]
    where = f"tile {index} of {len(c.tiles)} (at row {top}, column {left})" if len(c.tiles) > 1 else "the image"
    raise BitstreamError(
        f"{where} does not decode to what the encoder coded there (index checksum {computed:08x}, stream says "
        f"{expected:08x}): its streams belong to another place or image, or were made with other weights, or "
        "by a backend or device that computes different scales"
    )
