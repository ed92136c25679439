import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from services.diagnosis.preprocess import PREPROCESSING_VERSION, prepare
from services.intake import ImageDecodeError, measure_quality

from tests.factories import encode


def gradient(w=120, h=80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1).astype(np.uint8)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with a tiny body: the classic decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_jpeg_and_png_give_normalised_tensor_and_version():
    for fmt, media in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        p = prepare(encode(gradient(), fmt), 96)
        assert p.tensor.shape == (3, 96, 96)
        assert p.media_type == media
        assert p.version == PREPROCESSING_VERSION
        assert (p.width, p.height) == (120, 80)
        assert p.crop_box == (20, 0, 100, 80)
        assert -3 < float(p.tensor.min()) and float(p.tensor.max()) < 3


def test_exif_orientation_is_applied():
    img = Image.fromarray(gradient(120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6          # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    p = prepare(buf.getvalue(), 64)
    assert (p.width, p.height) == (80, 120)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    base = Image.fromarray(gradient())
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))
        fmt = "PNG"
    else:
        img = base.convert(mode)
        fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    p = prepare(buf.getvalue(), 64)
    assert p.rgb.shape == (64, 64, 3) and p.rgb.dtype == np.uint8
    assert p.rgb.std() > 10, "conversion lost the picture"


@pytest.mark.parametrize("data,code", [
    (b"", "empty"),
    (b"this is not an image at all" * 10, "undecodable"),
    (encode(gradient(), "GIF"), "unsupported_format"),
    (encode(gradient(), "BMP"), "unsupported_format"),
    (encode(gradient(), "JPEG")[:300], "corrupt"),
    (encode(gradient(), "PNG")[:-1], "corrupt"),      # the end marker's checksum cut off
    (encode(gradient(), "PNG")[:-12], "corrupt"),     # every pixel there, no end marker
    (encode(gradient(), "PNG")[:-20], "corrupt"),     # the data stream's own checksums cut
    (encode(gradient(40, 30), "PNG"), "too_small"),
    (png_with_header(20_000, 20_000), "too_many_pixels"),
])
def test_malformed_input_raises_typed_error(data, code):
    with pytest.raises(ImageDecodeError) as info:
        prepare(data, 64)
    assert info.value.code == code
    assert info.value.message


def test_a_24_megapixel_photo_is_accepted_and_prepared():
    # A phone or dermatoscope photo must pass the decompression-bomb guard.
    rgb = np.zeros((4000, 6000, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :]
    p = prepare(encode(rgb, "JPEG", quality=50), 64)
    assert (p.width, p.height) == (6000, 4000) and p.rgb.shape == (64, 64, 3)


def test_quality_flags_blur_and_exposure_on_real_images(ham_jpegs):
    for data in ham_jpegs[:4]:
        sharp = prepare(data, 160)
        assert "blurred" not in sharp.quality.issues
        img = Image.open(io.BytesIO(data)).convert("RGB")
        blurred = prepare(encode(np.asarray(img.filter(ImageFilter.GaussianBlur(4)))), 160)
        assert "blurred" in blurred.quality.issues
        assert blurred.quality.sharpness < sharp.quality.sharpness / 3
        dark = prepare(encode((np.asarray(img) * 0.15).astype(np.uint8)), 160)
        assert "under_exposed" in dark.quality.issues
        bright = prepare(encode(np.clip(np.asarray(img, float) * 2.2 + 60, 0, 255).astype(np.uint8)), 160)
        assert "over_exposed" in bright.quality.issues


def test_quality_measures_are_explainable_numbers():
    flat = np.full((64, 64, 3), 128, np.uint8)
    q = measure_quality(flat)
    assert q.sharpness == 0 and abs(q.brightness - 0.502) < 0.01
    assert q.to_dict()["issues"] == ["blurred"]
