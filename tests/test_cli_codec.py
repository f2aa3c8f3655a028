"""`zoo encode / decode / info` on real files, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.support import PASS_ARCHS, REPO, kodak_path, with_v3_arch, with_v3_size
from zoo import bitstream
from zoo.cli import main
from zoo.imageio import read_image


def _crop(tmp_path, fmt="PNG", mode="RGB", name="img"):
    img = Image.open(kodak_path("kodim23.png")).crop((300, 200, 396, 264)).convert(mode)
    path = tmp_path / f"{name}.{fmt.lower()}"
    img.save(path, format=fmt)
    return path


def test_encode_info_decode(tmp_path, fixture_entry, capsys):
    src = _crop(tmp_path)
    out = tmp_path / "a.zoo"
    assert main(["encode", str(src), str(out), "--model", str(fixture_entry)]) == 0
    report = capsys.readouterr().out
    assert "bpp" in report and "s\n" in report
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["width"] == 96 and info["height"] == 64 and info["entry"]["arch"] == "bmshj2018-hyperprior"
    assert info["total_bytes"] == out.stat().st_size
    png = tmp_path / "a.png"
    assert main(["decode", str(out), str(png), "--model", str(fixture_entry), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert Image.open(png).size == (96, 64)
    # The decoded PNG is exactly what the API gives.
    import zoo
    from zoo.imageio import to_uint8

    codec = zoo.load_local(fixture_entry)
    expected = to_uint8(codec.decompress(bitstream.loads(out.read_bytes())))
    assert np.array_equal(np.asarray(Image.open(png)), expected)


@pytest.mark.parametrize("arch", PASS_ARCHS)
def test_context_models_encode_info_decode(tmp_path, arch_entry, arch, capsys):
    """Checkerboard and ELIC entries through the CLI: one named stream per coding pass in the file."""
    import zoo
    from zoo.imageio import to_uint8

    entry, src, out, png = arch_entry(arch), _crop(tmp_path), tmp_path / "a.zoo", tmp_path / "a.png"
    assert main(["encode", str(src), str(out), "--model", str(entry), "--quiet"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    groups = 5 if arch.startswith("elic") else 1
    assert info["entry"]["arch"] == arch and len(info["streams"]) == 1 + 2 * groups
    assert main(["decode", str(out), str(png), "--model", str(entry), "--quiet"]) == 0
    codec = zoo.load_local(entry)
    expected = to_uint8(codec.decompress(bitstream.loads(out.read_bytes())))
    assert np.array_equal(np.asarray(Image.open(png)), expected)
    assert psnr_uint8(expected, np.asarray(Image.open(src))) > 15


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@pytest.mark.parametrize(
    "fmt,mode",
    [("JPEG", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB"), ("BMP", "RGB"), ("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA")],
)
def test_image_formats_are_read(tmp_path, fmt, mode):
    x, notices = read_image(_crop(tmp_path, fmt, mode))
    assert x.shape == (3, 64, 96) and 0 <= x.min() and x.max() <= 1
    assert bool(notices) == (mode != "RGB")


def test_exif_orientation_and_16_bit(tmp_path):
    img = Image.open(kodak_path("kodim23.png")).crop((0, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    x, _ = read_image(tmp_path / "r.jpg")
    assert x.shape == (3, 40, 20)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
    x, notices = read_image(tmp_path / "g16.png")
    assert x.min() == 1.0 and any("8 bits" in n for n in notices)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(tmp_path, fixture_entry):
    stream = tmp_path / "ok.zoo"
    assert main(["encode", str(_crop(tmp_path)), str(stream), "--model", str(fixture_entry), "--quiet"]) == 0
    data = stream.read_bytes()
    (tmp_path / "trunc.zoo").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.zoo").write_bytes(b"")
    (tmp_path / "text.txt").write_text("hello")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    flipped = bytearray(data)
    flipped[-20] ^= 4
    (tmp_path / "flipped.zoo").write_bytes(flipped)
    future = bytearray(data)
    future[4] = 99  # the version is read before anything it governs
    (tmp_path / "future.zoo").write_bytes(future)
    (tmp_path / "huge.zoo").write_bytes(with_v3_size(data, 100_000, 100_000))
    out = str(tmp_path / "o")
    cases = [
        (["decode", str(tmp_path / "trunc.zoo"), out], "truncated"),
        (["decode", str(tmp_path / "empty.zoo"), out], "empty"),
        (["decode", str(tmp_path / "text.txt"), out], "magic"),
        (["decode", str(tmp_path / "flipped.zoo"), out], "check"),
        (["decode", str(tmp_path / "future.zoo"), out], "version 99"),
        (["info", str(tmp_path / "huge.zoo")], "outside the limits"),
        (["decode", str(tmp_path / "huge.zoo"), out], "outside the limits"),
        (["info", str(tmp_path / "missing.zoo")], "cannot read"),
        (["encode", str(tmp_path / "text.txt"), out, "--model", str(fixture_entry)], "not an image"),
        (["encode", str(tmp_path / "clear.png"), out, "--model", str(fixture_entry)], "transparent"),
        (["encode", str(tmp_path / "text.txt"), out, "--model", "nope", "--quality", "1"], "unknown architecture"),
        (["decode", str(stream), out], "bmshj2018-hyperprior"),  # its entry (q1 v0.1, local) is not released
    ]
    for args, message in cases:
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, (args, proc.stderr)
        # Answered promptly: timed in-process, so interpreter start-up does not count.
        t0 = time.perf_counter()
        assert main(args) == 2
        assert time.perf_counter() - t0 < 2, args


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buf, format="PNG")
    from zoo.errors import InputError

    with pytest.raises(InputError, match="over the limit"):
        read_image(buf.getvalue(), max_pixels=1000)


def test_header_bigger_than_pillow_allows_is_too_large_not_unreadable():
    """A PNG header declaring 20000x20000 trips Pillow's bomb guard inside open(): still 'too large'."""
    import struct as st
    import zlib

    from zoo.errors import ImageTooLarge

    def chunk(kind: bytes, body: bytes) -> bytes:
        return st.pack(">I", len(body)) + kind + body + st.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", st.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match="over the limit"):
        read_image(png)


def _stream_claiming(tmp_path, fixture_entry, entry) -> str:
    """A valid stream made by the fixture entry whose header names `entry` instead, in format 2 (format 3 names
    only architectures the writer knows, for it stores their streams without names)."""
    import dataclasses

    import zoo

    codec = zoo.load_local(fixture_entry)
    compressed = codec.compress(read_image(_crop(tmp_path))[0])
    compressed = dataclasses.replace(
        compressed, entry=entry, format_version=2, fingerprint=codec.fingerprint, tile_checksums=()
    )
    path = tmp_path / "claims.zoo"
    path.write_bytes(bitstream.dumps(compressed))
    return str(path)


def test_header_strings_never_become_paths(tmp_path, fixture_entry, capsys):
    """A header naming a folder (here the very entry that made it) is not loaded from that folder; a file
    made with a local entry says so and names --model, which decodes it."""
    from zoo.compressed import EntryId

    out = str(tmp_path / "out.png")
    folder_as_arch = _stream_claiming(tmp_path, fixture_entry, EntryId(str(fixture_entry), 1, "mse", "0.1"))
    assert main(["decode", folder_as_arch, out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown architecture" in err[0] and "--model" in err[0], err
    assert not (tmp_path / "out.png").exists()
    # format 3: the reader needs the architecture to name the streams, so the file is refused as it is read
    made = tmp_path / "made.zoo"
    assert main(["encode", str(_crop(tmp_path)), str(made), "--model", str(fixture_entry), "--quiet"]) == 0
    v3 = tmp_path / "claims-v3.zoo"
    v3.write_bytes(with_v3_arch(made.read_bytes(), "../entry"))
    assert main(["decode", str(v3), out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not know" in err[0], err
    assert not (tmp_path / "out.png").exists()

    local = tmp_path / "local.zoo"
    assert main(["encode", str(_crop(tmp_path)), str(local), "--model", str(fixture_entry), "--quiet"]) == 0
    assert main(["decode", str(local), out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a released entry" in err[0] and "--model FOLDER" in err[0], err
    assert main(["decode", str(local), out, "--model", str(fixture_entry), "--quiet"]) == 0


def test_output_that_is_the_input_is_refused(tmp_path, fixture_entry, monkeypatch, capsys):
    src = _crop(tmp_path, name="v")
    stream = tmp_path / "a.zoo"
    assert main(["encode", str(src), str(stream), "--model", str(fixture_entry), "--quiet"]) == 0
    image_bytes, stream_bytes = src.read_bytes(), stream.read_bytes()
    (tmp_path / "link.png").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    cases = [
        ["encode", str(src), str(src)],
        ["encode", str(src), "link.png"],
        ["encode", "v.png", f"../{tmp_path.name}/v.png"],
        ["decode", str(stream), str(stream)],
        ["decode", "a.zoo", "./a.zoo"],
    ]
    for args in cases:
        assert main([*args, "--model", str(fixture_entry)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the input" in err[0], (args, err)
    assert src.read_bytes() == image_bytes and stream.read_bytes() == stream_bytes


def test_a_failed_write_leaves_no_partial_file(tmp_path, fixture_entry):
    """A write that fails half-way (here the file-size limit, as a full disk would) leaves the previous
    output intact and no temporary file behind."""
    src = _crop(tmp_path)
    stream, png = tmp_path / "a.zoo", tmp_path / "a.png"
    assert main(["encode", str(src), str(stream), "--model", str(fixture_entry), "--quiet"]) == 0
    png.write_bytes(b"previous output")
    decode = ["decode", str(stream), str(png), "--model", str(fixture_entry)]
    encode = ["encode", str(src), str(tmp_path / "b.zoo"), "--model", str(fixture_entry)]
    code = (
        "import json, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "from zoo.cli import main\n"
        "sys.exit(max(main(args) for args in json.loads(sys.argv[1])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps([decode, encode])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("cannot write") == 2, proc.stderr
    assert png.read_bytes() == b"previous output" and not (tmp_path / "b.zoo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.zoo", "img.png"]


def test_decode_holds_no_float_copy_of_the_image(tmp_path, fixture_entry, monkeypatch):
    """`zoo decode` rounds each tile to 8 bits as it is decoded, into one preallocated 8-bit image, and writes
    the PNG straight to the file: no torch allocation comes near the image in float (at the 64-megapixel default
    limit that copy alone is 768 MB, and rounding it made two more). Here 12 tiles of 64 px: the image in float is
    576 KB, the largest allocation one tile's decode makes 128 KB."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import zoo

    h, w = 64, 768
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = (0.7 * torch.stack([yy, xx, (yy + xx) / 2]) + 0.3 * torch.rand(3, h, w, generator=torch.Generator())).clamp(
        0, 1
    )
    codec = zoo.load_local(fixture_entry, tile_size=64)
    c = codec.compress(x)
    assert len(c.tiles) == 12
    stream, png = tmp_path / "a.zoo", tmp_path / "a.png"
    stream.write_bytes(bitstream.dumps(c))
    from zoo.cli import codec_cmds

    monkeypatch.setattr(codec_cmds, "_resolve_codec", lambda *args: codec)  # loading weights is not decoding
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        assert main(["decode", str(stream), str(png), "--model", str(fixture_entry), "--quiet"]) == 0
    largest = max((e.self_cpu_memory_usage, e.name) for e in prof.events())
    assert largest[0] < h * w * 3 * 4 // 2, f"{largest} bytes allocated at once"
    from zoo.imageio import to_uint8

    assert np.array_equal(np.asarray(Image.open(png)), to_uint8(codec.decompress(c)))


VR_ENTRY = REPO / "model_store/entries/bmshj2018-hyperprior-vr/mse/v1.12"


def test_encode_with_effort_decodes_like_any_file(tmp_path, fixture_entry, capsys, one_thread):
    import zoo

    src, plain, refined = _crop(tmp_path), tmp_path / "plain.zoo", tmp_path / "refined.zoo"
    assert main(["encode", str(src), str(plain), "--model", str(fixture_entry), "--quiet"]) == 0
    assert main(["encode", str(src), str(refined), "--model", str(fixture_entry), "--effort", "1", "--quiet"]) == 0
    assert plain.read_bytes() != refined.read_bytes()
    png = tmp_path / "r.png"
    assert main(["decode", str(refined), str(png), "--model", str(fixture_entry), "--quiet"]) == 0
    codec = zoo.load_local(fixture_entry)
    expected = codec.decompress_uint8(bitstream.loads(refined.read_bytes()))
    assert np.array_equal(np.asarray(Image.open(png)), expected)
    again = tmp_path / "again.zoo"
    assert main(["encode", str(src), str(again), "--model", str(fixture_entry), "--effort", "1", "--quiet"]) == 0
    assert again.read_bytes() == refined.read_bytes()  # the default seed: repeatable


def test_encode_to_a_size_budget(tmp_path, capsys):
    """--max-bytes and --target-bpp on a variable-rate entry folder: the file fits and lands within 2 %."""
    src = _crop(tmp_path)  # 96x64
    for args, budget in ((["--max-bytes", "900"], 900), (["--target-bpp", "0.9"], int(0.9 * 96 * 64 / 8))):
        out = tmp_path / "sized.zoo"
        assert main(["encode", str(src), str(out), "--model", str(VR_ENTRY), "--quiet", *args]) == 0
        size = out.stat().st_size
        assert 0.98 * budget <= size <= budget, (args, size)
        assert main(["info", str(out), "--json"]) == 0
        level = json.loads(capsys.readouterr().out)["entry"]["level"]
        assert 1 < level < 8


def test_size_budget_errors_exit_2_with_one_line(tmp_path, capsys):
    src, out = _crop(tmp_path), str(tmp_path / "o.zoo")
    cases = [
        (["--max-bytes", "50"], "even the lowest setting"),
        (["--target-bpp", "0.01"], "even the lowest setting"),
        (["--max-bytes", "900", "--quality", "3"], "leave out --quality"),
        (["--max-bytes", "0"], "positive"),
    ]
    for extra, message in cases:
        assert main(["encode", str(src), out, "--model", str(VR_ENTRY), *extra]) == 2, extra
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, lines)
    proc = _run("encode", str(src), out, "--model", str(VR_ENTRY), "--max-bytes", "50")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(src), out, "--model", str(VR_ENTRY), "--quality", "2", "--effort", "7"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_special_files_as_inputs_are_refused_in_one_line(tmp_path, fixture_entry):
    """A FIFO (which would block the open forever), a directory and a device: exit 2, one line, no wait."""
    import os

    os.mkfifo(tmp_path / "pipe")
    out = str(tmp_path / "o")
    cases = [
        (["encode", str(tmp_path / "pipe"), out, "--model", str(fixture_entry)], "pipe is a FIFO (named pipe)"),
        (["decode", str(tmp_path / "pipe"), out, "--model", str(fixture_entry)], "pipe is a FIFO (named pipe)"),
        (["info", str(tmp_path / "pipe")], "pipe is a FIFO (named pipe)"),
        (["info", str(tmp_path)], "is a directory"),
        # a folder is a batch (zoo.cli.folders): its FIFO is passed over, never opened
        (["encode", str(tmp_path), out, "--model", str(fixture_entry)], "no images Pillow can open"),
        (["info", "/dev/zero"], "/dev/zero is a character device"),
    ]
    for args, message in cases:
        proc = _run(*args)  # with a timeout: a hang fails the test instead of stalling it
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
