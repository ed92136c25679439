"""Heat-map overlays of Grad-CAM maps, as PNG bytes for storage and display."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A perceptually ordered ramp (dark blue -> red -> yellow), close to matplotlib's "inferno"
# at a few anchor points; matplotlib itself is too heavy a dependency for eight colours.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
                     [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]], float)


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 RGB via the ramp above."""
    x = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (x - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def overlay_png(rgb: np.ndarray, normalised: np.ndarray, alpha: float = 0.5) -> bytes:
    """The analysed crop with the map blended in where the map is strong."""
    heat = colormap(normalised).astype(float)
    weight = (alpha * np.clip(normalised, 0, 1))[..., None]
    blended = (rgb.astype(float) * (1 - weight) + heat * weight).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, "PNG")
    return buf.getvalue()
