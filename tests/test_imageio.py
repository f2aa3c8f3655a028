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
