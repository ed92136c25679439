"""From uploaded bytes to the model's input tensor, plus image-quality measures.

The version string is recorded with every result: any change to decoding, resizing, cropping
or normalisation must bump it, because predictions made under different preprocessing are
not comparable.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, asdict

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ValidationError

# dt-pre-2: JPEGs larger than DECODE_SIDE decoded at a reduced scale; 16-bit scaled by a shift.
PREPROCESSING_VERSION = "dt-pre-2"
# MPO (multi-picture JPEG, written by many phones) is read as its first picture, a JPEG.
ALLOWED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "MPO": "image/jpeg"}
# Larger photos are decoded at a reduced scale where the format allows (JPEG: 1/2, 1/4, 1/8),
# so a 24-megapixel phone picture costs a fraction of its full decode; the model reads 224 px.
DECODE_SIDE = 2048
MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000          # decompression-bomb guard (a 40-megapixel photo is fine)
MIN_SIDE = 64

# Quality thresholds, calibrated on HAM10000 images and their blurred / darkened copies
# (tests/diagnosis/test_preprocess.py checks them against real images).
SHARPNESS_MIN = 10.0
EXPOSURE_LOW = 0.18
EXPOSURE_HIGH = 0.88
CLIPPED_MAX = 0.25


class ImageDecodeError(ValidationError):
    """An upload that cannot be analysed; ``code`` is stable for API error bodies."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message, field)
        self.code = code


@dataclass(frozen=True)
class ImageQuality:
    """Simple, explainable measures so a GP can be asked for a retake.

    sharpness: variance of the Laplacian of the grey image at model input size, in grey
    levels squared (0-255 scale); blurred photos score low.
    brightness: mean luminance in [0, 1].
    dark_clipped / bright_clipped: share of pixels at the ends of the range (lost detail).
    """

    sharpness: float
    brightness: float
    dark_clipped: float
    bright_clipped: float

    @property
    def issues(self) -> list[str]:
        out = []
        if self.sharpness < SHARPNESS_MIN:
            out.append("blurred")
        if self.brightness < EXPOSURE_LOW or self.dark_clipped > CLIPPED_MAX:
            out.append("under_exposed")
        if self.brightness > EXPOSURE_HIGH or self.bright_clipped > CLIPPED_MAX:
            out.append("over_exposed")
        return out

    @property
    def acceptable(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict:
        return {**asdict(self), "issues": self.issues, "acceptable": self.acceptable}


@dataclass(frozen=True)
class PreparedImage:
    """One decoded upload: the model input, and what is needed to map results back."""

    tensor: torch.Tensor            # (3, S, S) float32 in [0, 1] (the network normalises)
    rgb: np.ndarray                 # (S, S, 3) uint8, the crop the model saw
    media_type: str
    width: int                      # after EXIF orientation
    height: int
    crop_box: tuple[int, int, int, int]   # (left, top, right, bottom) in oriented pixels
    quality: ImageQuality
    version: str = PREPROCESSING_VERSION


def decode_cost(data: bytes) -> tuple[int, int]:
    """(pixels, bytes) that decoding this image will take, read from its header alone (JPEG
    at its reduced decode scale); (0, 0) when the header cannot be read (decode says why)."""
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if img.format in ("JPEG", "MPO") and max(w, h) > DECODE_SIDE:
            scale = 1
            while scale < 8 and max(w, h) // (scale * 2) >= DECODE_SIDE:
                scale *= 2
            w, h = -(-w // scale), -(-h // scale)
        bands = len(img.getbands())
        depth = 2 if "16" in img.mode else 4 if img.mode in ("I", "F") else 1
        return w * h, w * h * bands * depth
    except Exception:  # anything unreadable is decode()'s to report, with its own message
        return 0, 0


def decode(data: bytes) -> tuple[Image.Image, str]:
    """Open JPEG/PNG bytes, apply EXIF orientation, return an RGB image and media type."""
    if not data:
        raise ImageDecodeError("empty", "the image is empty")
    if len(data) > MAX_BYTES:
        raise ImageDecodeError("too_large", f"the image is larger than {MAX_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise ImageDecodeError("unsupported_format",
                                       f"only JPEG and PNG are accepted, not {fmt or 'this format'}")
            if img.width * img.height > MAX_PIXELS:
                raise ImageDecodeError("too_many_pixels",
                                       f"the image has {img.width * img.height} pixels; "
                                       f"at most {MAX_PIXELS} are accepted")
            if fmt == "PNG":
                _verify_png(data)
            if fmt in ("JPEG", "MPO") and max(img.size) > DECODE_SIDE:
                img.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_many_pixels",
                               f"the image declares too many pixels; at most {MAX_PIXELS} "
                               "are accepted") from exc
    except UnidentifiedImageError as exc:
        # Pillow's own message names its internals (and the BytesIO object): not for users.
        raise ImageDecodeError("undecodable", "the file is not a readable JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt", "the image data is damaged or truncated") from exc
    if min(img.width, img.height) < MIN_SIDE:
        raise ImageDecodeError("too_small", f"the image is {img.width}x{img.height}; "
                               f"each side must be at least {MIN_SIDE} pixels")
    img = ImageOps.exif_transpose(img)
    return to_rgb(img), ALLOWED_FORMATS[fmt]


def _verify_png(data: bytes) -> None:
    """Every chunk's checksum and the end marker: Pillow decodes a PNG whose stream stops
    after the last pixel row (checksums and IEND cut off), so a file truncated in transit
    would be analysed as if whole. Reads the chunks without decompressing them."""
    try:
        # Pillow's verify checks every chunk's checksum but the end marker's own: look for the
        # whole IEND chunk (it is always these 12 bytes).
        if b"\x00\x00\x00\x00IEND\xaeB`\x82" not in data:
            raise SyntaxError("no IEND chunk")
        Image.open(io.BytesIO(data)).verify()
    except Exception as exc:  # Pillow raises SyntaxError, OSError or struct.error here
        raise ImageDecodeError("corrupt", "the PNG data is truncated or damaged (its checksums or "
                                          "its end marker are missing): send the file again") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled down, transparency flattened onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Integer arithmetic in place of a float64 copy (8 bytes a pixel): a 40-megapixel
        # 16-bit PNG would otherwise cost over a gigabyte here.
        arr = np.asarray(img)
        if arr.max() > 255:
            arr = np.clip(arr, 0, 65535) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Centre square crop of the shorter side, then resize: the lesion is photographed centred."""
    side = min(img.width, img.height)
    left = (img.width - side) // 2
    top = (img.height - side) // 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0), box


def measure_quality(rgb: np.ndarray) -> ImageQuality:
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = (-4.0 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1]
           + grey[1:-1, :-2] + grey[1:-1, 2:])
    g = grey / 255.0
    return ImageQuality(sharpness=round(float(lap.var()), 3),
                        brightness=round(float(g.mean()), 4),
                        dark_clipped=round(float((g < 0.02).mean()), 4),
                        bright_clipped=round(float((g > 0.98).mean()), 4))


def to_unit(rgb: np.ndarray) -> torch.Tensor:
    """(S, S, 3) or (N, S, S, 3) uint8 -> (3, S, S) / (N, 3, S, S) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
    return t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)


def prepare(data: bytes, size: int) -> PreparedImage:
    img, media_type = decode(data)
    crop, box = resize_and_crop(img, size)
    rgb = np.array(crop, dtype=np.uint8)
    return PreparedImage(tensor=to_unit(rgb), rgb=rgb, media_type=media_type,
                         width=img.width, height=img.height, crop_box=box,
                         quality=measure_quality(rgb))
