"""The file format: exact round trips, golden files that old versions must keep decoding, and refusals."""

from __future__ import annotations

import dataclasses
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bitstream_tools import field_offset, golden_codec, golden_input, reseal
from zoo import bitstream
from zoo.errors import BitstreamError
from zoo.imageio import to_uint8

GOLDEN = Path(__file__).parent / "golden"
# (file, architecture, height, width, tile size): small crops of kodim23 coded with CompressAI's fixtures, once
# per format version: `v<N>-<case>` was written by format N, and every readable version must keep decoding.
_CASES = [
    ("hyperprior-70x90.zoo", "bmshj2018-hyperprior", 70, 90, 0),
    ("factorized-tiled-100x150.zoo", "bmshj2018-factorized", 100, 150, 64),
    ("mbt2018-mean-33x47.zoo", "mbt2018-mean", 33, 47, 0),
    # the context model's symbols: raster order in format 1 (decoded serially), wavefront by wavefront in 2
    ("mbt2018-100x150.zoo", "mbt2018", 100, 150, 0),
]
GOLDEN_CASES = [(f"v{v}-{name}", *rest) for v in bitstream.READABLE_VERSIONS for name, *rest in _CASES]


def write_golden() -> None:  # run by hand when a format version is added: python -m tests.test_bitstream
    from PIL import Image

    for name, arch, h, w, tile in _CASES:
        name = f"v{bitstream.FORMAT_VERSION}-{name}"  # older versions' files stay as they were written
        codec = golden_codec(arch, tile)
        data = bitstream.dumps(codec.compress(golden_input(h, w)))
        (GOLDEN / name).write_bytes(data)
        Image.fromarray(to_uint8(codec.decompress(bitstream.loads(data)))).save(GOLDEN / f"{name}.png")


# The entropy-decoded symbols must be bit-exact (decompress checks the encoder's index checksum, and a
# symbol error shows as a large pixel error); the synthesis transform is float arithmetic whose last bits
# vary with the CPU's kernels, so a pixel may round to the neighbouring 8-bit value, never further.
@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden_files_still_decode_to_the_same_pixels(case):
    from PIL import Image

    name, arch, h, w, tile = case
    expected = np.asarray(Image.open(GOLDEN / f"{name}.png")).astype(np.int16)
    c = bitstream.loads((GOLDEN / name).read_bytes())
    assert (c.height, c.width) == (h, w)
    assert f"v{c.format_version}-" == name[:3]
    pixels = to_uint8(golden_codec(arch, tile).decompress(c)).astype(np.int16)
    assert pixels.shape == expected.shape
    diff = np.abs(pixels - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_context_streams_of_both_formats_decode_to_the_same_image():
    """Format 1 codes mbt2018's symbols in raster order, format 2 wavefront by wavefront: one model, the
    same symbols, so the same image; a file keeps its version through loads/dumps, and a format-1 stream
    relabelled as format 2 is refused (decoded in the wrong order, its table indexes differ)."""
    v1 = (GOLDEN / "v1-mbt2018-100x150.zoo").read_bytes()
    v2 = (GOLDEN / "v2-mbt2018-100x150.zoo").read_bytes()
    c1, c2 = bitstream.loads(v1), bitstream.loads(v2)
    assert (c1.format_version, c2.format_version) == (1, 2) and bitstream.FORMAT_VERSION == 2
    assert bitstream.dumps(c1) == v1 and bitstream.dumps(c2) == v2
    codec = golden_codec("mbt2018")
    assert torch.equal(codec.decompress(c1), codec.decompress(c2))
    assert bitstream.dumps(codec.compress(golden_input(100, 150))) == v2  # what this zoo writes
    relabelled = bytearray(v1)
    relabelled[4] = 2
    with pytest.raises(BitstreamError, match="index checksum|ended early|does not end"):
        codec.decompress(bitstream.loads(reseal(relabelled)))


def test_round_trip_is_exact():
    codec = golden_codec("bmshj2018-hyperprior", tile_size=64)
    c = codec.compress(golden_input(100, 130))
    c = dataclasses.replace(c, extra=(("software", "zoo-test"),))
    data = bitstream.dumps(c)
    assert bitstream.loads(data) == c
    header = bitstream.peek_header(data)
    assert header.total_bytes == len(data) and header.payload_bytes == c.payload_bytes
    assert header.as_dict()["entry"]["arch"] == "bmshj2018-hyperprior"


def test_a_nonzero_flags_byte_is_refused(stream):
    buf = bytearray(stream)
    buf[5] = 1  # the spec defines no flags: a reader that ignored one would misread what it means
    with pytest.raises(BitstreamError, match="flags"):
        bitstream.loads(reseal(buf))


@pytest.fixture(scope="module")
def stream() -> bytes:
    return bitstream.dumps(golden_codec("bmshj2018-factorized").compress(golden_input(32, 32)))


def test_bad_files_raise_one_clear_error(stream):
    size_at = field_offset(stream)
    huge = bytearray(stream)
    struct.pack_into("<II", huge, size_at, 100_000, 100_000)
    future = bytearray(stream)
    future[4] = 99
    cases = {
        "empty": (b"", "empty"),
        "magic": (b"GIF89a" + stream[6:], "magic"),
        "version": (reseal(future), "version 99"),
        "truncated": (stream[:-7], "truncated|checksum"),
        "flipped": (stream[:-20] + bytes([stream[-20] ^ 4]) + stream[-19:], "checksum"),
        "absurd": (reseal(huge), "outside the limits"),
        "padded": (stream + b"\0" * 10, "checksum|describes"),
    }
    for label, (data, message) in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError, match=message):
            bitstream.loads(data)
        assert time.perf_counter() - t0 < 2, label


if __name__ == "__main__":
    write_golden()
