"""The file format: exact round trips, golden files that old versions must keep decoding, and refusals."""

from __future__ import annotations

import dataclasses
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bitstream_tools import golden_codec, golden_input
from tests.support import quality_offset, reseal_v2, reseal_v3, v3_rows
from zoo import bitstream
from zoo.compressed import EntryId
from zoo.errors import BitstreamError
from zoo.imageio import to_uint8

GOLDEN = Path(__file__).parent / "golden"
# (file, architecture, height, width, tile size, first format version): small crops of kodim23 coded with
# CompressAI's fixtures, once per format version from the first: `v<N>-<case>` was written by format N, and
# every readable version must keep decoding.
_CASES = [
    ("hyperprior-70x90.zoo", "bmshj2018-hyperprior", 70, 90, 0, 1),
    ("factorized-tiled-100x150.zoo", "bmshj2018-factorized", 100, 150, 64, 1),
    ("mbt2018-mean-33x47.zoo", "mbt2018-mean", 33, 47, 0, 1),
    # the context model's symbols: raster order in format 1 (decoded serially), wavefront by wavefront in 2
    ("mbt2018-100x150.zoo", "mbt2018", 100, 150, 0, 1),
    # eleven streams a tile, which format 3 stores without their names
    ("elic2022-chandelier-64x96.zoo", "elic2022-chandelier", 64, 96, 0, 3),
]
GOLDEN_CASES = [
    (f"v{v}-{name}", *rest) for v in bitstream.READABLE_VERSIONS for name, *rest, since in _CASES if v >= since
]


def write_golden() -> None:  # run by hand when a format version is added: python -m tests.test_bitstream
    from PIL import Image

    for name, arch, h, w, tile, _ in _CASES:
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
    """Format 1 codes mbt2018's symbols in raster order, formats 2 and 3 wavefront by wavefront: one model,
    the same symbols, so the same image; a file keeps its version through loads/dumps, and a format-1 stream
    relabelled as format 2 is refused (decoded in the wrong order, its table indexes differ)."""
    v1, v2, v3 = ((GOLDEN / f"v{v}-mbt2018-100x150.zoo").read_bytes() for v in (1, 2, 3))
    c1, c2, c3 = bitstream.loads(v1), bitstream.loads(v2), bitstream.loads(v3)
    assert (c1.format_version, c2.format_version, c3.format_version) == (1, 2, 3) and bitstream.FORMAT_VERSION == 3
    assert bitstream.dumps(c1) == v1 and bitstream.dumps(c2) == v2 and bitstream.dumps(c3) == v3
    assert [t.streams for t in c2.tiles] == [t.streams for t in c3.tiles]  # format 3 changed the container only
    codec = golden_codec("mbt2018")
    assert torch.equal(codec.decompress(c1), codec.decompress(c2))
    assert torch.equal(codec.decompress(c2), codec.decompress(c3))
    assert bitstream.dumps(codec.compress(golden_input(100, 150))) == v3  # what this zoo writes
    relabelled = bytearray(v1)
    relabelled[4] = 2
    with pytest.raises(BitstreamError, match="index checksum|ended early|does not end"):
        codec.decompress(bitstream.loads(reseal_v2(relabelled)))


def test_round_trip_is_exact():
    codec = golden_codec("bmshj2018-hyperprior", tile_size=64)
    c = codec.compress(golden_input(100, 130))
    c = dataclasses.replace(c, extra=(("software", "zoo-test"),))
    data = bitstream.dumps(c)
    assert bitstream.loads(data) == c
    header = bitstream.peek_header(data)
    assert header.total_bytes == len(data) and header.payload_bytes == c.payload_bytes
    assert header.as_dict()["entry"]["arch"] == "bmshj2018-hyperprior"


def test_levels_and_qualities_read_back_exactly():
    """Format 3 stores a level in thousandths when that reads back to the same float, else as a float32 when
    that is exact (a level halved into by a search), else as a float64."""
    codec = golden_codec("bmshj2018-hyperprior")
    c = codec.compress(golden_input(32, 48))
    sizes = {}
    for entry in (
        EntryId("bmshj2018-hyperprior", 7, "ms-ssim", "1.12"),
        EntryId("bmshj2018-hyperprior-vr", 0, "mse", "1.12", 3.0),
        EntryId("bmshj2018-hyperprior-vr", 0, "mse", "1.12", 3.25),
        EntryId("bmshj2018-hyperprior-vr", 0, "mse", "1.12", 3.4765625),
        EntryId("bmshj2018-hyperprior-vr", 0, "mse", "1.12", 10 / 3),
    ):
        data = bitstream.dumps(dataclasses.replace(c, entry=entry))
        assert bitstream.loads(data).entry == entry
        sizes[entry.point] = len(data)
    assert sizes[3.0] == sizes[3.25] and sizes[3.4765625] == sizes[3.0] + 2 and sizes[10 / 3] == sizes[3.0] + 6
    with pytest.raises(BitstreamError, match="quality 0"):  # a level belongs to a variable-rate entry
        bitstream.dumps(dataclasses.replace(c, entry=EntryId("bmshj2018-hyperprior-vr", 3, "mse", "1", 2.0)))


def test_a_one_tile_file_carries_at_most_64_bytes_and_2_a_stream_beside_its_streams():
    for name, *_ in _CASES:
        data = (GOLDEN / f"v3-{name}").read_bytes()
        header = bitstream.peek_header(data)
        overhead = header.total_bytes - header.payload_bytes
        n_streams = len(header.tiles[0].streams)
        if len(header.tiles) == 1:
            assert overhead <= 64 + 2 * n_streams, name
        v2 = GOLDEN / f"v2-{name}"
        if v2.exists():
            old = bitstream.peek_header(v2.read_bytes())
            assert overhead < old.total_bytes - old.payload_bytes - 50, name


def test_the_longest_entry_name_fits_the_budget():
    """The variable-rate hyperprior has the longest released name: at a fractional level, one tile of a Kodak
    image (two streams of a few kilobytes each) still carries at most 64 + 2 × 2 bytes beside its streams."""
    c = golden_codec("bmshj2018-hyperprior").compress(golden_input(32, 48))
    entry = EntryId("bmshj2018-hyperprior-vr", 0, "mse", "1.12", 3.5)
    big = tuple((name, bytes(6000 if name == "y" else 400)) for name, _ in c.tiles[0].streams)
    tile = dataclasses.replace(c.tiles[0], rect=(0, 0, 512, 768), latent_hw=(8, 12), streams=big)
    c = dataclasses.replace(c, entry=entry, height=512, width=768, tiles=(tile,))
    data = bitstream.dumps(c)
    assert len(data) - 6400 <= 64 + 2 * 2


def test_a_nonzero_flags_byte_is_refused():
    buf = bytearray((GOLDEN / "v2-hyperprior-70x90.zoo").read_bytes())
    buf[5] = 1  # the spec defines no flags: a reader that ignored one would misread what it means
    with pytest.raises(BitstreamError, match="flags"):
        bitstream.loads(reseal_v2(buf))


@pytest.fixture(scope="module")
def stream() -> bytes:
    return bitstream.dumps(golden_codec("bmshj2018-factorized").compress(golden_input(32, 32)))


def test_the_spec_s_tile_check_is_what_the_reader_verifies(stream):
    assert reseal_v3(bytearray(stream)) == stream


@pytest.mark.parametrize("version", [2, 3])
def test_bad_files_raise_one_clear_error(stream, version):
    stream = (GOLDEN / "v2-hyperprior-70x90.zoo").read_bytes() if version == 2 else stream
    reseal = reseal_v2 if version == 2 else reseal_v3
    future = bytearray(stream)
    future[4] = 99
    if version == 2:
        huge = bytearray(stream)
        struct.pack_into("<II", huge, quality_offset(stream) + 2 + 4 + 8 + 16, 100_000, 100_000)
        absurd = reseal_v2(huge)
    else:
        c = bitstream.loads(stream)
        tile = dataclasses.replace(c.tiles[0], rect=(0, 0, 60_000, 60_000), latent_hw=(3750, 3750))
        absurd = bitstream.dumps(dataclasses.replace(c, height=60_000, width=60_000, tiles=(tile,)))
    cases = {
        "empty": (b"", "empty"),
        "magic": (b"GIF89a" + stream[6:], "magic"),
        "version": (reseal(future) if version == 2 else bytes(future), "version 99"),
        "truncated": (stream[:-7], "truncated|checksum|describes"),
        "flipped": (stream[:-20] + bytes([stream[-20] ^ 4]) + stream[-19:], "checksum|check"),
        "header": (stream[:12] + bytes([stream[12] ^ 1]) + stream[13:], "checksum|check"),
        "absurd": (absurd, "outside the limits"),
        "padded": (stream + b"\0" * 10, "checksum|describes"),
    }
    for label, (data, message) in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(BitstreamError, match=message):
            bitstream.loads(data)
        assert time.perf_counter() - t0 < 2, label


def test_a_tile_carrying_another_tile_s_streams_is_refused_before_anything_is_decoded():
    """Every tile of a forged file carries tile 0's table row and streams (all tiles have one size, so the
    lengths fit): the reader refuses tile 1 by its check, before any tile is decoded."""
    c = golden_codec("bmshj2018-factorized", tile_size=64).compress(golden_input(128, 128))  # 4 equal tiles
    data = bitstream.dumps(c)
    table, rows = v3_rows(data)
    payload = rows[-1][1]
    row0, streams0 = data[rows[0][0] : rows[0][1]], data[payload : payload + c.tiles[0].num_bytes]
    forged = data[:table] + row0 * len(rows) + streams0 * len(rows)
    assert forged != data
    with pytest.raises(BitstreamError, match=r"tile 1 of 4 \(at row 0, column 64\)"):
        bitstream.loads(forged)


def test_the_file_format_and_the_models_do_not_import_each_other_in_a_cycle():
    """The format version lives in zoo.compressed: it imports neither zoo.bitstream nor the Codec, and no
    model imports the file format."""
    import ast

    package = Path(bitstream.__file__).parent

    def imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    assert not imports(package / "compressed.py") & {"zoo.bitstream", "zoo.codec", "zoo"}
    for path in (package / "models").glob("*.py"):
        assert not imports(path) & {"zoo.bitstream", "zoo.codec"}, path.name


if __name__ == "__main__":
    write_golden()
