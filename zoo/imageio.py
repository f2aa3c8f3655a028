"""Images in and out: anything Pillow opens becomes a float RGB tensor; reconstructions become 8-bit PNGs.

Choices: grayscale, palette, CMYK, LAB and 16-bit images are converted to 8-bit RGB with a notice that
says so; of an animation or a multi-page file only the first frame is coded, with a notice; EXIF orientation
is applied; RGBA is accepted only when fully opaque (alpha is dropped) — zoo codes RGB, so an image with real
transparency is refused rather than silently flattened onto a colour we would have to guess. Floating-point
images (mode F) are taken as [0, 1]: NaN or infinite pixels are refused, finite values outside are clipped
with a notice.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.errors import ImageTooLarge, InputError
from zoo.untrusted import open_regular

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # images read, coded and decoded: the codec's default limit too


def read_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, list[str]]:
    """Decode an image to a float (3, H, W) tensor in [0, 1], plus notices about conversions made.

    The pixel limit is checked from the header, before any pixel is decoded."""
    notices: list[str] = []
    name = "the input" if isinstance(source, bytes | bytearray) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open_regular(source, InputError)
    except OSError as exc:
        raise InputError(f"cannot open {name}: {exc.strerror or exc}") from None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"{name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                notices.append(f"{name} has {frames} frames (animation or pages); only the first was coded")
            sixteen = any(";16" in str(t[3]) for t in getattr(img, "tile", ()) or ())
            img = ImageOps.exif_transpose(img) or img
            arr = _to_rgb8(img, notices)
            if sixteen and img.mode in ("RGB", "RGBA"):
                # Pillow reduces 16-bit RGB(A) to 8 bits while decoding: say so, as for 16-bit grayscale
                notices.append("16-bit image converted to 8 bits per channel")
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's own guard fires in open() for very large headers, before our check can
            raise ImageTooLarge(
                f"{name} has more pixels than Pillow will open, over the limit of {max_pixels}"
            ) from None
        except UnidentifiedImageError as exc:
            raise InputError(f"{name} is not an image Pillow can read ({type(exc).__name__})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{name} could not be decoded: {exc}") from None
    tensor = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)
    return tensor.contiguous(), notices


def _to_rgb8(img: Image.Image, notices: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            if not np.isfinite(a).all():
                raise InputError("floating-point image has NaN or infinite pixels")
            if a.size and (a.min() < 0 or a.max() > 1):
                notices.append(f"floating-point pixels outside [0, 1] (from {a.min():.4g} to {a.max():.4g}) clipped")
            notices.append("floating-point image converted to 8 bits per channel")
            scale = 255.0
        else:
            notices.append(f"{mode} image converted to 8 bits per channel")
            scale = 255.0 / 65535.0
        a = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() < 255:
            raise InputError("image has transparent pixels; zoo codes RGB only (flatten it onto a background first)")
        notices.append("opaque alpha channel dropped")
        return np.asarray(rgba.convert("RGB"))
    if mode != "RGB":
        notices.append(f"{mode} image converted to RGB")
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:  # 16-bit RGB ("RGB;16") variants
        notices.append("16-bit image converted to 8 bits per channel")
        arr = np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return arr


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounding to nearest."""
    if x.dim() == 4:
        x = x[0]
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """An 8-bit (H, W, 3) array as is (what `Codec.decompress_uint8` gives), or a float tensor via `to_uint8`."""
    return Image.fromarray(image if isinstance(image, np.ndarray) else to_uint8(image))


def write_png(image: torch.Tensor | np.ndarray, path: str | Path | BinaryIO) -> None:
    """Save as PNG to a path or an open binary file (written in chunks as it is compressed)."""
    _pil(image).save(path, format="PNG")


def png_bytes(image: torch.Tensor | np.ndarray) -> bytes:
    buf = io.BytesIO()
    write_png(image, buf)
    return buf.getvalue()
