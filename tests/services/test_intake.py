"""Intake's checks: the pixel screen passes real photographs of skin (dermoscopic and
clinical) and stops what is plainly not one; decode, checks and clean stay one path."""

import numpy as np
import pytest
from PIL import Image

from services import config, intake
from services.diagnosis.preprocess import prepare
from services.modelling.scope_gate import load_clinical, off_scope_images

from tests.factories import encode


@pytest.fixture(scope="module")
def clinical_dir():
    d = config.shared_data_dir() / "dermnet-clinical"
    if not (d / "labels.csv").is_file():
        pytest.skip(f"DermNet clinical photographs not found at {d} (shared data absent)")
    return d


def test_real_dermoscopy_passes_the_screen(ham_jpegs):
    for data in ham_jpegs:
        assert prepare(data, 224).screen.skin


def test_real_clinical_photos_pass_the_screen(clinical_dir):
    photos = load_clinical(clinical_dir)[::15]
    passed = [prepare(p.path.read_bytes(), 224).screen.skin for p in photos]
    assert np.mean(passed) >= 0.98


@pytest.mark.parametrize("kind", ["plain", "drawing", "document", "interface", "noise"])
def test_generated_non_skin_images_fail_the_screen(kind):
    images = [rgb for k, rgb in off_scope_images(60, seed=3) if k == kind]
    assert images
    for rgb in images:
        s = intake.screen(rgb)
        assert not s.skin or kind == "noise", (kind, s)
    if kind == "noise":   # grain passes the colour checks; the scope gate's grain check stops it
        assert all(intake.measure_quality(rgb).sharpness > 20000 for rgb in images)


def test_screen_numbers_are_explainable():
    flat = np.full((64, 64, 3), (200, 150, 120), np.uint8)
    s = intake.screen(flat)
    assert s.solid_share == 1.0 and s.palette == 1 and s.grey_std == 0
    assert set(s.issues) == {"blank", "not_a_photograph"}
    assert s.to_dict()["issues"] == s.issues


def test_clean_strips_metadata_after_the_same_decode():
    rgb = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x010F] = "Camera maker with a serial"
    import io
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    cleaned = intake.clean(buf.getvalue())
    assert b"Camera maker" not in cleaned.data
    assert (cleaned.width, cleaned.height) == (100, 80)
    with pytest.raises(intake.ImageDecodeError) as info:
        intake.clean(encode(rgb, "PNG")[:-20])
    assert info.value.code == "corrupt"
