"""Intake: everything between uploaded bytes and an image the product may keep.

One place owns the three steps, in this order, for the form, the API and the GP's instant
check alike:

1. **decode**: JPEG, PNG, or a DICOM Part 10 photograph (``services/dicom.py``: pixel data
   through pydicom, header reduced to the few facts a referral keeps), within pixel and byte
   budgets, truncated or damaged files refused (Pillow happily decodes a PNG cut off after
   its last pixel row), EXIF orientation applied;
2. **checks**: image quality (sharpness, exposure) and the pixel screen (``screen``): is
   this a photograph of skin at all? Neither refuses the upload: a blurred or odd picture
   is still a referral, and the scope gate (``services/diagnosis/scope.py``) turns them into
   the image's verdict;
3. **clean**: re-encoded without metadata. EXIF can carry GPS coordinates, device serials
   and names, a JPEG comment a patient's name typed by the camera app, an ICC profile a
   device's description; a referral needs none of them. Colours are converted to sRGB
   before the profile is dropped, so dropping it does not change them.

Building the model's input from a decoded image (crop, resize, tensor) is preprocessing's
job (``services/diagnosis/preprocess.py``), not intake's.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import dicom
from .errors import ValidationError

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

# The pixel screen's thresholds. Every image of the shared dermoscopy (HAM10000, Derm7pt)
# and clinical photos (DermNet) passes them, and drawings, screenshots, documents and plain
# or two-tone images fail them (tests/services/test_intake.py checks both sides).
SKIN_SHARE_MIN = 0.02     # share of pixels whose colour skin (any tone, lit or shaded) can take
FLAT_STD_MAX = 2.5        # grey-level spread below which there is no picture to read
PALETTE_MIN = 48          # distinct colours (5 bits a channel) a photograph of skin shows at least
SOLID_SHARE_MAX = 0.40    # share of pixels in the commonest exact colour: fills, backgrounds


class ImageDecodeError(ValidationError):
    """An upload that cannot be analysed; ``code`` is stable for API error bodies."""

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 422):
        super().__init__(message, field)
        self.code = code
        self.status = status     # 415 for a DICOM encoding or class not read here


# ---------------------------------------------------------------------------------- decode

def decode_cost(data: bytes) -> tuple[int, int]:
    """(pixels, bytes) that decoding this image will take, read from its header alone (JPEG
    at its reduced decode scale); (0, 0) when the header cannot be read (decode says why)."""
    if dicom.is_dicom(data):
        return dicom.decode_cost(data)
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
    """Open JPEG/PNG bytes, apply EXIF orientation, return an RGB image (its ICC profile, if
    any, still in ``info`` for ``clean``) and the media type."""
    if not data:
        raise ImageDecodeError("empty", "the image is empty")
    if len(data) > MAX_BYTES:
        raise ImageDecodeError("too_large", f"the image is larger than {MAX_BYTES} bytes")
    if dicom.is_dicom(data):
        return _decode_dicom(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise ImageDecodeError("unsupported_format", "only JPEG, PNG and DICOM photographs are "
                                                             f"accepted, not {fmt or 'this format'}")
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
        raise ImageDecodeError("undecodable", "the file is not a readable JPEG, PNG or DICOM image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt", "the image data is damaged or truncated") from exc
    if min(img.width, img.height) < MIN_SIDE:
        raise ImageDecodeError("too_small", f"the image is {img.width}x{img.height}; "
                               f"each side must be at least {MIN_SIDE} pixels")
    img = ImageOps.exif_transpose(img)
    return to_rgb(img), ALLOWED_FORMATS[fmt]


def _decode_dicom(data: bytes) -> tuple[Image.Image, str]:
    """A DICOM photograph's first frame; stored as JPEG when it came as JPEG, else as PNG."""
    pixels, _ = dicom.decode_cost(data)
    if pixels > MAX_PIXELS:
        raise ImageDecodeError("too_many_pixels", f"the DICOM image has {pixels} pixels; at most "
                                                  f"{MAX_PIXELS} are accepted")
    try:
        img, _facts, was_jpeg = dicom.read(data)
    except dicom.DicomError as exc:
        raise ImageDecodeError(exc.code, exc.message, status=exc.status) from exc
    if min(img.width, img.height) < MIN_SIDE:
        raise ImageDecodeError("too_small", f"the image is {img.width}x{img.height}; "
                               f"each side must be at least {MIN_SIDE} pixels")
    return img, "image/jpeg" if was_jpeg else "image/png"


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


# ---------------------------------------------------------------------------------- checks

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


def measure_quality(rgb: np.ndarray) -> ImageQuality:
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = (-4.0 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1]
           + grey[1:-1, :-2] + grey[1:-1, 2:])
    g = grey / 255.0
    return ImageQuality(sharpness=round(float(lap.var()), 3),
                        brightness=round(float(g.mean()), 4),
                        dark_clipped=round(float((g < 0.02).mean()), 4),
                        bright_clipped=round(float((g > 0.98).mean()), 4))


@dataclass(frozen=True)
class Screen:
    """What the pixels alone say, before any model: is there a photograph of skin here?

    skin_share: share of pixels in the colour range skin takes (any tone, in light or
    shade; lesions' browns, pinks and blue-greys included, white, saturated greens and
    blues and pure greys not). grey_std: the grey levels' spread. palette: distinct colours
    at 5 bits a channel. solid_share: share of pixels in the single commonest exact colour
    (see ``screen`` for when it is an upper bound).
    Photographs have thousands of colours and no large exact fill; drawings, screenshots,
    documents and generated images have a few, or large exact fills.
    """

    skin_share: float
    grey_std: float
    palette: int
    solid_share: float

    @property
    def issues(self) -> list[str]:
        out = []
        if self.grey_std < FLAT_STD_MAX:
            out.append("blank")
        if self.palette < PALETTE_MIN or self.solid_share > SOLID_SHARE_MAX:
            out.append("not_a_photograph")
        if self.skin_share < SKIN_SHARE_MIN:
            out.append("little_skin")
        return out

    @property
    def skin(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict:
        return {**asdict(self), "issues": self.issues}


def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels whose colour skin or a skin lesion can take. Deliberately wide (all Fitzpatrick
    tones, shadows, pigment, erythema, dermoscopy's blue-grey veils): it is there to catch
    what is plainly not skin (white pages, green and blue fills, grey interfaces), and must
    never be what refuses a photograph of skin. In YCbCr, where skin clusters by chroma
    whatever its brightness (Chai and Ngan 1999), widened for the darker and bluish tones of
    lesions."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    chroma = (cr >= 128) & (cr <= 185) & (cb >= 85) & (cb <= 140)
    shade = (y >= 8) & (y <= 250)
    # Near-white and near-black stay out however their chroma falls: paper and frames.
    return chroma & shade & ~((y > 235) & (np.abs(cr - 128) < 6))


def screen(rgb: np.ndarray) -> Screen:
    """The pixel screen of an (H, W, 3) uint8 image (any size; the engine's 224-px crop).

    Histograms rather than sorting (``np.unique`` over every pixel cost more than the rest of
    the gate together): the 5-bit histogram gives the palette, and only a 5-bit bin holding
    more than ``SOLID_SHARE_MAX`` of the pixels can hold an exact fill that large, so exact
    colours are counted in such bins alone. Where none does, ``solid_share`` is the largest
    bin's share, an upper bound of the commonest exact colour's."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    r, g, b = (rgb[..., i].ravel().astype(np.int32) for i in range(3))
    coarse = ((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3)
    hist = np.bincount(coarse, minlength=1 << 15)
    n = coarse.size
    solid = hist.max() / n
    crowded = np.flatnonzero(hist > SOLID_SHARE_MAX * n)
    if crowded.size:
        exact = (r << 16) | (g << 8) | b
        solid = max(np.unique(exact[coarse == c], return_counts=True)[1].max() for c in crowded) / n
    return Screen(skin_share=round(float(skin_mask(rgb).mean()), 4),
                  grey_std=round(float(grey.std()), 3),
                  palette=int(np.count_nonzero(hist)),
                  solid_share=round(float(solid), 4))


# ----------------------------------------------------------------------------------- clean

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


def clean_image(img: Image.Image, media_type: str) -> CleanImage:
    """A decoded image re-encoded in sRGB without metadata (see the module's note)."""
    img = to_srgb(img)
    img = Image.frombytes(img.mode, img.size, img.tobytes())   # pixels only: no info, no profile
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, "JPEG", quality=95, subsampling=0, optimize=True)
    else:
        img.save(buf, "PNG", optimize=False)
    out = buf.getvalue()
    return CleanImage(out, hashlib.sha256(out).hexdigest(), media_type, img.width, img.height)


def clean(data: bytes) -> CleanImage:
    """Decoded, oriented, metadata-free copy; raises ImageDecodeError on bad input."""
    img, media_type = decode(data)
    return clean_image(img, media_type)


__all__ = ["CleanImage", "ImageDecodeError", "ImageQuality", "Screen", "clean", "clean_image",
           "decode", "decode_cost", "measure_quality", "screen", "skin_mask"]
