"""The views of an image that the build caches: view 0 as the engine serves it, the others
a symmetry, a symmetry under another camera's colour, or the seed's augmentation (the build:
view 1 a symmetry, view 2 a recoloured symmetry), each drawn from (seed, image, view) alone so
that a build is a function of its seed.

Why symmetries and not the seed's augmentation: on a frozen backbone each cached view is one
fixed sample, and colour jitter and resampling blur move it off the image (docs/experiments.md,
"Views"). Another camera's colour makes the read-outs' invariance between views cover white
balance and exposure too, what a clinic's dermatoscope changes. As view 1 in place of the plain
symmetry it cost in-source balanced accuracy; as a third view that pulls a quarter as hard, it
gains on the one foreign camera (Derm7pt) and costs no held-out collection anything the
resampling can tell from zero (docs/experiments.md, "Collections" and "Camera colour as a third view").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..diagnosis.preprocess import resize_and_crop
from ..intake import decode
from .recipe import RealTrainConfig, for_view

_SYMMETRIES = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
               Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
               Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)


def dihedral(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One of the square's 7 symmetries other than the identity, drawn by ``rng``: a
    dermoscopic image has no up and no left, and these moves lose no pixel (no
    interpolation, no padding, colours untouched)."""
    return img.transpose(_SYMMETRIES[int(rng.integers(len(_SYMMETRIES)))])


# Log-normal spread of the camera's channel gains, exposure and gamma: 0.1 cost more in source
# than 0.05 for the same gain on Derm7pt (docs/experiments.md, "Collections").
CAMERA_SPREAD = 0.05


def camera(img: Image.Image, rng: np.random.Generator, spread: float = CAMERA_SPREAD) -> Image.Image:
    """The image as another dermatoscope would render it: a white balance (per-channel gains
    with their geometric mean 1), an exposure and a gamma. Geometry untouched."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    gains = np.exp(rng.normal(0, spread, 3))
    gains /= np.exp(np.log(gains).mean())
    exposure, gamma = np.exp(rng.normal(0, spread, 2))
    a = np.clip(a * (gains * exposure), 0, 1) ** gamma
    return Image.fromarray((a * 255 + 0.5).astype(np.uint8))


def dihedral_camera(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return camera(dihedral(img, rng), rng)


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotation, flips, blur, perspective and colour, as dermoscopy varies between shots
    (the seed's augmentation)."""
    size = img.size[0]
    pad = size // 4
    arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    big = Image.fromarray(arr).rotate(float(rng.uniform(0, 360)), Image.Resampling.BILINEAR)
    # Perspective: move each corner of the crop by up to 6% of the side.
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], float) + pad
    moved = corners + rng.uniform(-0.06, 0.06, corners.shape) * size
    img = big.transform((size, size), Image.Transform.PERSPECTIVE,
                        _perspective_coeffs(corners - pad, moved), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.85, 1.15)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.85, 1.15)))
    return img


AUGMENTATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "dihedral+camera": dihedral_camera, "dihedral": dihedral, "full": augment}


@lru_cache(maxsize=8)        # parsed once, not for every view of every image
def per_view(spec: str) -> tuple[str, ...]:
    """The augmentation of views 1, 2, ... from ``RealTrainConfig.augmentation``: names
    separated by commas, the last one repeated for the views beyond. ValueError names an
    unknown one."""
    names = tuple(name.strip() for name in spec.split(","))
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}: one of {', '.join(AUGMENTATIONS)}, "
                             "or several separated by commas, one per view")
    return names


def view_of(img: Image.Image, i: int, view: int, cfg: RealTrainConfig) -> Image.Image:
    """View ``view`` of image ``i`` as the build caches it: view 0 is the image as served,
    the others their ``cfg.augmentation`` drawn from (seed, image, view) alone."""
    if view == 0:
        return img
    augmentation = AUGMENTATIONS[for_view(per_view(cfg.augmentation), view)]
    return augmentation(img, np.random.default_rng([cfg.seed, i, view]))


def _perspective_coeffs(target: np.ndarray, source: np.ndarray) -> tuple:
    """PIL's 8 coefficients mapping output (target) corners to input (source) corners."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(rows, float), source.reshape(-1))
    return tuple(float(c) for c in coeffs)


def load_image(path: Path, size: int, aspect: float | None = None) -> Image.Image:
    """The image as the engine would crop it; ``aspect`` (width / height) first stretches a copy
    that was squashed to a square back to the shape it was photographed in (HAM10000's copies:
    600 x 450 squashed to 224 x 224), so the crop sees the lesion as a GP's photo shows it."""
    img, _ = decode(path.read_bytes())
    if aspect:
        img = img.resize((round(img.height * aspect), img.height), Image.Resampling.BICUBIC)
    return resize_and_crop(img, size)[0]


def aspect_of(sample, cfg: RealTrainConfig) -> float | None:
    """The photographed aspect of a sample's image where its copy was squashed."""
    return cfg.ham_aspect if sample.source == "ham10000" else None
