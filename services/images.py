"""Validating and cleaning uploaded images before anything is stored.

Validation decodes the image (the engine's decoder, so what passes intake can be analysed),
then re-encodes it without metadata: EXIF can carry GPS coordinates, device serials and
names, a JPEG comment a patient's name typed by the camera app, an ICC profile a device's
description; a referral needs none of them. Orientation is applied first, so dropping EXIF
does not turn the picture, and colours are converted to sRGB before the profile is dropped,
so dropping it does not change them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from .diagnosis.preprocess import ImageDecodeError, decode


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    sha256: str
    media_type: str
    width: int
    height: int

    @property
    def size(self) -> int:
        return len(self.data)


def to_srgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if not icc:
        return img
    try:
        from PIL import ImageCms
        return ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # an unreadable profile: keep the pixels as they are, without it
        return img


def clean(data: bytes) -> CleanImage:
    """Decoded, oriented, metadata-free copy; raises ImageDecodeError on bad input."""
    img, media_type = decode(data)
    img = to_srgb(img)
    img = Image.frombytes(img.mode, img.size, img.tobytes())   # pixels only: no info, no profile
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, "JPEG", quality=95, subsampling=0, optimize=True)
    else:
        img.save(buf, "PNG", optimize=False)
    out = buf.getvalue()
    return CleanImage(out, hashlib.sha256(out).hexdigest(), media_type, img.width, img.height)


__all__ = ["CleanImage", "ImageDecodeError", "clean"]
