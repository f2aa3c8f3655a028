"""Property-based fuzzing of the parser (hypothesis): any bytes, and any edit of a valid header with its checksums
repaired, either raise BitstreamError quickly or parse to a stream consistent with its own header.

The decoder itself is fuzzed by benchmarks/fuzz.py (structure-aware mutations decoded in worker processes);
`test_fuzz_slice_decodes_or_refuses_every_case` runs 2,000 of its cases."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.bitstream_tools import golden_codec, golden_input
from tests.support import reseal_v2, reseal_v3, v3_rows
from zoo import bitstream
from zoo.errors import BitstreamError

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def stream() -> bytes:
    codec = golden_codec("bmshj2018-hyperprior", tile_size=64)
    return bitstream.dumps(codec.compress(golden_input(40, 90)))


@pytest.fixture(scope="module")
def stream_v2(stream) -> bytes:
    """The same image in format 2 (which stores the whole fingerprint and one index checksum)."""
    c = bitstream.loads(stream)
    fingerprint = golden_codec("bmshj2018-hyperprior").fingerprint
    return bitstream.dumps(dataclasses.replace(c, format_version=2, fingerprint=fingerprint, tile_checksums=()))


def _check(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        c = bitstream.loads(data)
    except BitstreamError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        h = bitstream.peek_header(data)
        assert (c.height, c.width) == (h.height, h.width)
        assert 1 <= c.height <= bitstream.MAX_DIM and 1 <= c.width <= bitstream.MAX_DIM
        assert h.total_bytes == len(data) and c.payload_bytes == h.payload_bytes
        for t in c.tiles:
            top, left, th, tw = t.rect
            assert top + th <= c.height and left + tw <= c.width
    assert time.perf_counter() - t0 < 2


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _check(data)
    _check(bitstream.MAGIC + data)
    _check(bitstream.MAGIC + bytes([bitstream.FORMAT_VERSION, 0]) + data)


@SETTINGS
@given(pos=st.integers(min_value=10), value=st.integers(0, 255), width=st.sampled_from([1, 2, 4]))
def test_edited_header_fields_with_repaired_checksums(stream_v2, pos, value, width):
    header_end = bitstream.peek_header(stream_v2).header_bytes - 4
    pos = 10 + pos % (header_end - 10 - width + 1)
    buf = bytearray(stream_v2)
    buf[pos : pos + width] = bytes([value]) * width  # 0xFF.. makes huge u16/u32 fields, 0x00.. zero ones
    _check(reseal_v2(buf))


@SETTINGS
@given(pos=st.integers(min_value=5), value=st.integers(0, 255), width=st.sampled_from([1, 2, 4]))
def test_edited_format_3_headers_and_tile_rows_with_repaired_checks(stream, pos, value, width):
    table_end = v3_rows(stream)[1][-1][1]
    pos = 5 + pos % (table_end - 5 - width + 1)
    buf = bytearray(stream)
    buf[pos : pos + width] = bytes([value]) * width
    _check(reseal_v3(buf))


@SETTINGS
@given(cut=st.integers(min_value=0), body_len=st.integers(0, 2**32 - 1))
def test_truncation_and_lying_body_length(stream, stream_v2, cut, body_len):
    _check(stream[: cut % len(stream)])
    _check(stream_v2[: cut % len(stream_v2)])
    buf = bytearray(stream_v2)
    struct.pack_into("<I", buf, 6, body_len)
    _check(bytes(buf))


@pytest.mark.slow
def test_fuzz_slice_decodes_or_refuses_every_case():
    """2,000 structure-aware mutations of one- and multi-tile factorized, hyperprior and mean-scale files, each
    decoded in a worker process: no crash, hang, untyped error or silently different image, and the mutations
    reach past the parser (some decode to the very same image, e.g. an extra field added)."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "benchmarks" / "fuzz.py"), "--cases", "2000", "--workers", "2", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-2])
    assert (r["crashes"], r["hangs"], r["untyped"], r["silent"]) == (0, 0, 0, 0), r["failures"]
    assert sum(r["outcomes"].values()) == r["cases"] == 2000
    assert set(r["families"]) == {"header", "tiles", "lengths", "payload", "ends", "raw"}
    assert all(f["refused"] > 0 for f in r["families"].values())
    assert r["reached_decoder"] > 500  # mutations get past the parser's checks to the decoder's
    assert r["outcomes"]["same"] > 0  # and mutations of what decoding ignores (an extra field) do decode
    assert r["peak_rss_mb"] < 1536
