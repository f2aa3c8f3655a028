"""Classical codecs through Pillow (JPEG, WebP, AVIF, JPEG 2000), measured like the learned ones."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

from zoo.errors import EntryNotFound


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    pillow_format: str
    qualities: tuple[int, ...]  # the sweep; for jpeg2000 these are target PSNRs in dB

    def save_kwargs(self, quality: int) -> dict:
        if self.name == "jpeg2000":
            return {"quality_mode": "dB", "quality_layers": [float(quality)], "irreversible": True}
        if self.name == "jpeg":
            return {"quality": quality, "subsampling": "4:2:0"}
        return {"quality": quality}

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=self.pillow_format, **self.save_kwargs(quality))
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


CLASSICAL = {
    c.name: c
    for c in (
        # Low qualities included so that the low-rate end of learned codecs' curves overlaps these.
        ClassicalCodec("jpeg", "JPEG", (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
        ClassicalCodec("webp", "WEBP", (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
        ClassicalCodec("avif", "AVIF", (10, 20, 30, 40, 50, 60, 70, 80, 90)),
        ClassicalCodec("jpeg2000", "JPEG2000", (24, 26, 28, 30, 32, 34, 36, 38, 40)),
    )
}


def get_classical(name: str) -> ClassicalCodec:
    try:
        codec = CLASSICAL[name]
    except KeyError:
        raise EntryNotFound(f"unknown classical codec {name!r}; codecs are {', '.join(CLASSICAL)}") from None
    feature = {"webp": "webp", "avif": "avif", "jpeg2000": "jpg_2000", "jpeg": "jpg"}[name]
    if not features.check(feature):
        raise EntryNotFound(f"this Pillow build has no {name} support")
    return codec
