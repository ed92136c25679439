"""Validating and cleaning uploaded images before anything is stored.

Validation decodes the image (the engine's decoder, so what passes intake can be analysed),
then re-encodes it without metadata: EXIF can carry GPS coordinates, device serials and
names, none of which a referral needs. Orientation is applied first, so dropping EXIF does
not turn the picture.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

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


def clean(data: bytes) -> CleanImage:
    """Decoded, oriented, metadata-free copy; raises ImageDecodeError on bad input."""
    img, media_type = decode(data)
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, "JPEG", quality=95, subsampling=0, optimize=True)
    else:
        img.save(buf, "PNG", optimize=False)
    out = buf.getvalue()
    return CleanImage(out, hashlib.sha256(out).hexdigest(), media_type, img.width, img.height)


__all__ = ["CleanImage", "ImageDecodeError", "clean"]
