"""Image I/O at the API level: conversions, refusals as InputError, and 8-bit PNG output that round-trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.errors import InputError
from zoo.imageio import png_bytes, read_image, to_uint8, write_png


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_bytes_input_gives_exact_pixels_and_no_notice():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 3
    x, notices = read_image(_png(Image.fromarray(rgb)))
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32 and notices == []
    assert np.array_equal(to_uint8(x), rgb)


def test_opaque_alpha_is_dropped_with_a_notice_and_transparency_is_refused():
    x, notices = read_image(_png(Image.new("RGBA", (6, 3), (10, 20, 30, 255))))
    assert x.shape == (3, 3, 6) and any("alpha" in n for n in notices)
    assert np.all(to_uint8(x) == [10, 20, 30])
    half = Image.new("RGBA", (6, 3), (10, 20, 30, 255))
    half.putpixel((0, 0), (0, 0, 0, 128))
    with pytest.raises(InputError, match="transparent"):
        read_image(_png(half))
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255])
    with pytest.raises(InputError, match="transparent"):
        read_image(_png(pal, transparency=0))


def test_grayscale_becomes_three_equal_channels():
    x, notices = read_image(_png(Image.new("L", (3, 2), 77)))
    assert x.shape == (3, 2, 3) and notices and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


@pytest.mark.parametrize(
    "data,message",
    [(b"", "not an image"), (b"not an image at all", "not an image"), (None, "could not be decoded")],
)
def test_bad_bytes_raise_input_error(data, message):
    if data is None:  # a real PNG cut short: the header parses, the pixels do not
        data = _png(Image.effect_noise((64, 64), 50).convert("RGB"))[:200]
    with pytest.raises(InputError, match=message):
        read_image(data)


def test_missing_file_and_decompression_bomb(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="cannot open"):
        read_image(tmp_path / "nope.png")
    data = _png(Image.new("RGB", (200, 200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own guard fires under our larger limit
    with pytest.raises(InputError):
        read_image(data, max_pixels=10**6)


def test_write_png_rounds_to_nearest_8_bit(tmp_path):
    x = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.7, -0.3]).view(1, 1, 2, 3).expand(1, 3, 2, 3)
    write_png(x, tmp_path / "o.png")
    got = np.asarray(Image.open(tmp_path / "o.png"))
    assert got.shape == (2, 3, 3) and got[..., 0].ravel().tolist() == [0, 51, 128, 255, 255, 0]
    assert Image.open(io.BytesIO(png_bytes(x))).mode == "RGB"
    back, _ = read_image(tmp_path / "o.png")
    assert np.array_equal(to_uint8(back), got)


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_what_was_changed_about_an_input_is_said():
    """16-bit RGB, animations and multi-page files, and modes other than RGB each get the right notice."""
    a = (np.arange(6 * 7 * 3).reshape(6, 7, 3) * 1000 % 65535).astype(np.uint16)
    x, notices = read_image(_png16_rgb(a))
    assert x.shape == (3, 6, 7) and notices == ["16-bit image converted to 8 bits per channel"]

    frames = [Image.new("RGB", (8, 8), (40 * i, 10, 10)) for i in range(3)]
    for fmt in ("GIF", "WEBP", "TIFF"):
        buf = io.BytesIO()
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
        x, notices = read_image(buf.getvalue())
        assert any("3 frames" in n and "first" in n for n in notices), (fmt, notices)

    lab = io.BytesIO()
    Image.new("LAB", (5, 4), (50, 128, 128)).save(lab, format="TIFF")
    x, notices = read_image(lab.getvalue())
    assert x.shape == (3, 4, 5) and notices == ["LAB image converted to RGB"]


def test_float_images_refuse_nan_and_clip_out_of_range_with_a_notice():
    def tiff(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.float32), mode="F").save(buf, format="TIFF")
        return buf.getvalue()

    a = np.full((4, 4), 0.5, np.float32)
    a[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        read_image(tiff(a))
    a[0, 0] = 3.0
    x, notices = read_image(tiff(a))
    assert x.max().item() == 1.0 and any("clipped" in n for n in notices)
