"""From a decoded image to the model's input tensor.

Decoding, the quality measures and the pixel screen belong to intake (``services/intake.py``),
which the form, the API and the engine share, so that what intake accepts the engine can
read. The version string is recorded with every result: any change to decoding, resizing,
cropping or normalisation must bump it, because predictions made under different
preprocessing are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..intake import ImageDecodeError, ImageQuality, Screen, decode, measure_quality, screen

# dt-pre-2: JPEGs larger than DECODE_SIDE decoded at a reduced scale; 16-bit scaled by a shift.
PREPROCESSING_VERSION = "dt-pre-2"
__all__ = ["PREPROCESSING_VERSION", "ImageDecodeError", "PreparedImage", "prepare", "resize_and_crop",
           "to_unit"]


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
    screen: Screen | None           # intake's pixel screen (None when not asked for)
    version: str = PREPROCESSING_VERSION


def resize_and_crop(img: Image.Image, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Centre square crop of the shorter side, then resize: the lesion is photographed centred."""
    side = min(img.width, img.height)
    left = (img.width - side) // 2
    top = (img.height - side) // 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0), box


def to_unit(rgb: np.ndarray) -> torch.Tensor:
    """(S, S, 3) or (N, S, S, 3) uint8 -> (3, S, S) / (N, 3, S, S) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
    return t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)


def prepare(data: bytes, size: int, checks: bool = True) -> PreparedImage:
    img, media_type = decode(data)
    crop, box = resize_and_crop(img, size)
    rgb = np.array(crop, dtype=np.uint8)
    return PreparedImage(tensor=to_unit(rgb), rgb=rgb, media_type=media_type,
                         width=img.width, height=img.height, crop_box=box,
                         quality=measure_quality(rgb), screen=screen(rgb) if checks else None)
