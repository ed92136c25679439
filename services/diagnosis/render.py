"""Heat-map overlays of Grad-CAM maps, as PNG bytes for storage and display."""

from __future__ import annotations

import io
import zipfile

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


def heat_layer_png(normalised: np.ndarray) -> bytes:
    """The map alone as an RGBA layer (transparent where the map is weak), for a viewer that
    lays it over the analysed crop with an opacity of the reader's choosing."""
    v = np.clip(normalised, 0, 1)
    rgba = np.concatenate([colormap(v), (v * 255).astype(np.uint8)[..., None]], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def rgb_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


# All normalised maps of one prediction travel as one object: a uint8 array (targets, S, S)
# in NumPy's .npz format (a zip of one .npy), which np.load with allow_pickle=False reads back
# without executing anything stored in it. Written with zlib level 1 rather than
# np.savez_compressed's default 6: the maps are smooth, so it is ~20% larger (about 50 KB
# for 8 maps at 224 px) and half the CPU on the worker's hot path (4 ms against 9 per image).
def encode_map_array(normalised: list[np.ndarray]) -> bytes:
    stack = np.stack([np.round(np.clip(m, 0, 1) * 255) for m in normalised]).astype(np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("maps.npy", "w") as member:
            np.lib.format.write_array(member, stack, allow_pickle=False)
    return buf.getvalue()


def decode_map_array(data: bytes) -> np.ndarray:
    """(targets, S, S) float32 in [0, 1]."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["maps"].astype(np.float32) / 255.0
