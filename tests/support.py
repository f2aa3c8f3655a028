"""Paths and small builders shared by the tests (no pytest fixtures here: see conftest.py)."""

from __future__ import annotations

import json
import os
import struct
import zlib
from functools import cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The team's read-only data beside the checkout (ZOO_SHARED overrides). A user's fresh clone has none: the tests
# that need it skip, except under CI=true, where it must be present and its absence fails them.
SHARED = Path(os.environ.get("ZOO_SHARED") or REPO.parent / "shared")
FIXTURES = SHARED / "fixtures" / "compressai"
KODAK = SHARED / "datasets" / "kodak"
PHOTOS = SHARED / "datasets" / "photos"
SAMPLE = REPO / "samples" / "kodim23.png"  # shipped: byte-identical to the shared Kodak image 23
SHARED_SKIP = "needs the team's shared folder"


def need_shared(path: Path) -> Path:
    """`path` inside the shared folder; when it is missing, skip the test (fail it when CI=true)."""
    if not path.exists():
        reason = f"{SHARED_SKIP}: {path} is missing"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason}, and CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return path


def kodak_path(name: str) -> Path:
    return SAMPLE if name == SAMPLE.name else need_shared(KODAK / name)


def photo_path(name: str) -> Path:
    return need_shared(PHOTOS / name)


def fixture_dir(arch: str) -> Path:
    """CompressAI's fixture folder for an architecture (its state dict and its own outputs)."""
    return need_shared(FIXTURES / arch)


FIXTURE_ARCHS = (
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
    "cheng2020-anchor-checkerboard",
    "elic2022-official",
    "elic2022-chandelier",
)
# Architectures that code y in a few parallel passes, each its own stream as in CompressAI's `compress`.
PASS_ARCHS = ("cheng2020-anchor-checkerboard", "elic2022-official", "elic2022-chandelier")


def fixture_state_dict(arch: str) -> dict[str, torch.Tensor]:
    return torch.load(fixture_dir(arch) / "compressai_state_dict.pth", weights_only=True, map_location="cpu")


def fixture_expected(arch: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    folder = fixture_dir(arch)
    return load_file(str(folder / "expected.safetensors")), json.loads((folder / "expected.json").read_text())


@cache
def fixture_model(arch: str):
    """CompressAI's small trained fixture model loaded into our architecture (eval mode)."""
    from zoo.registry import model_from_state_dict

    return model_from_state_dict(arch, fixture_state_dict(arch)).eval()


def fixture_codec(arch: str, **kwargs):
    from zoo.codec import Codec
    from zoo.compressed import EntryId

    return Codec(fixture_model(arch), EntryId(arch, 1, "mse", "fixture"), b"\x00" * 16, **kwargs)


def kodak_image(name: str = "kodim23.png") -> torch.Tensor:
    """A Kodak image as a float (3, H, W) tensor in [0, 1], read without the package's own image I/O."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(kodak_path(name)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def small_recipe(tmp_path: Path, extra: str = "[budget]\nsteps = 2\n") -> Path:
    """A small variable-rate recipe at tmp_path/recipes (tmp_path plays the checkout) over three noise images of
    its own data root: two to train on, one held out."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("train/a.png", "train/b.png", "held/c.png"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "data" / name)
    path = tmp_path / "recipes" / "bmshj2018-hyperprior-vr.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        '[model]\narch = "bmshj2018-hyperprior-vr"\nwidths = { N = 16, M = 24 }\n\n'
        '[data]\nroot = "data"\ntrain = [{ folder = "train", pattern = "*.png" }]\n'
        'val = [{ folder = "held", pattern = "*.png" }]\n\n'
        "[schedule]\nbatch_size = 2\npatch = 64\nlr = 1e-3\nval_every = 1000\nckpt_every = 1\nval_levels = [3]\n\n"
        + extra
        + "\n[run]\nworkers = 0\nquiet = true\nthreads = 1\n"
        + '\n[release]\neval = "held"\n'
    )
    return path


# -- editing files as a forger would (docs/bitstream.md): fix the checks after an edit -------------------------


def reseal_v2(buf: bytearray) -> bytes:
    """Fix both checksums of a format-1/2 file after editing header fields, so the edit reaches the checks."""
    (body_len,) = struct.unpack_from("<I", buf, 6)
    end = 10 + body_len
    struct.pack_into("<I", buf, end, zlib.crc32(bytes(buf[:end])))
    struct.pack_into("<I", buf, len(buf) - 4, zlib.crc32(bytes(buf[:-4])))
    return bytes(buf)


def quality_offset(data: bytes) -> int:
    """Offset of the quality field of a format-1/2 file: magic(4) version/flags(2) body_len(4), the arch."""
    return 10 + 1 + data[10]


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[pos] & 0x7F) << shift
        shift += 7
        pos += 1
        if not data[pos - 1] & 0x80:
            return value, pos


def _v3_size_at(data: bytes) -> int:
    """Offset of a format-3 file's height field."""
    pos = 5
    for _ in range(2):  # architecture, entry version
        pos += 1 + data[pos]
    kind, pos = data[pos] & 3, pos + 1  # the entry byte: point kind, metric
    pos = {2: pos + 4, 3: pos + 8}.get(kind) or _leb128(data, pos)[1]
    return pos + 8  # the fingerprint


def with_v3_arch(data: bytes, arch: str) -> bytes:
    """A format-3 file naming another architecture, its checks recomputed."""
    raw = arch.encode()
    return reseal_v3(bytearray(data[:5] + bytes([len(raw)]) + raw + data[6 + data[5] :]))


def with_v3_size(data: bytes, height: int, width: int) -> bytes:
    """A format-3 file declaring another image size, its checks recomputed (what a forger makes)."""
    at = _v3_size_at(data)
    end = _leb128(data, _leb128(data, at)[1])[1]
    size = bytearray()
    for value in (height, width):
        while value > 0x7F:
            size.append(0x80 | (value & 0x7F))
            value >>= 7
        size.append(value)
    return reseal_v3(bytearray(data[:at] + bytes(size) + data[end:]))


def v3_rows(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Where a format-3 file's tile table starts, and each tile's row (start, end), read as the spec says."""
    from zoo.bitstream import grid_size

    pos = _v3_size_at(data)
    height, pos = _leb128(data, pos)
    width, pos = _leb128(data, pos)
    tile_size, pos = _leb128(data, pos)
    n_streams, pos = data[pos], pos + 1
    n_extra, pos = _leb128(data, pos)
    for _ in range(2 * n_extra):
        pos += 1 + data[pos]
    table = pos
    rows = []
    n_tiles = grid_size(height, width, tile_size)
    if n_tiles > 65_535:
        raise IndexError("more tiles than a file can have")
    for _ in range(n_tiles):
        start = pos
        for _ in range(n_streams):
            pos = _leb128(data, pos)[1]
        pos += 8  # index checksum, tile check
        rows.append((start, pos))
    return table, rows


def reseal_v3(buf: bytearray) -> bytes:
    """Recompute every tile check of a format-3 file after an edit, as the spec defines the check (a file the
    edit left unreadable comes back as it is)."""
    try:
        table, rows = v3_rows(bytes(buf))
    except IndexError:
        return bytes(buf)
    if not rows or rows[-1][1] > len(buf):
        return bytes(buf)
    header_crc = zlib.crc32(bytes(buf[:table]))
    pos = rows[-1][1]
    for i, (start, end) in enumerate(rows):
        lengths, p = [], start
        while p < end - 8:
            n, p = _leb128(bytes(buf), p)
            lengths.append(n)
        streams = bytes(buf[pos : pos + sum(lengths)])
        pos += sum(lengths)
        crc = zlib.crc32(struct.pack("<I", i), header_crc)
        crc = zlib.crc32(streams, zlib.crc32(bytes(buf[start : end - 4]), crc))
        struct.pack_into("<I", buf, end - 4, crc)
    return bytes(buf)
