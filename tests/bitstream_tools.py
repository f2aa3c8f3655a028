"""Helpers for tests that build, edit or check zoo files: the golden files' codecs and inputs, and header edits
that keep the checksums valid so that an edit reaches the field checks."""

from __future__ import annotations

import struct
import zlib

import torch

from tests.support import fixture_model, fixture_state_dict
from zoo import bitstream
from zoo.codec import Codec
from zoo.compressed import EntryId
from zoo.entry import weights_fingerprint


def golden_codec(arch: str, tile_size: int = 0) -> Codec:
    entry = EntryId(arch, 1, "mse", "fixture")
    return Codec(fixture_model(arch), entry, weights_fingerprint(fixture_state_dict(arch)), tile_size=tile_size)


def golden_input(h: int, w: int) -> torch.Tensor:
    from tests.support import kodak_image

    return kodak_image("kodim23.png")[:, 200 : 200 + h, 300 : 300 + w]


def reseal(buf: bytearray) -> bytes:
    """Fix both checksums after editing header fields, so the edit reaches the field checks."""
    (body_len,) = struct.unpack_from("<I", buf, 6)
    end = 10 + body_len
    struct.pack_into("<I", buf, end, zlib.crc32(bytes(buf[:end])))
    struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


def field_offset(data: bytes) -> int:
    """Offset of the height field: magic(4) version/flags(2) body_len(4) then the entry strings."""
    pos = 10
    pos += 1 + data[pos]  # arch
    pos += 2  # quality
    pos += 1 + data[pos]  # metric
    pos += 1 + data[pos]  # version
    return pos + bitstream.FINGERPRINT_BYTES
