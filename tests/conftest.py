from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services import config


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    d = config.shared_data_dir() / "ham10000-224"
    if not (d / "images").is_dir():
        pytest.skip(f"real HAM10000 images not found at {d} (shared data absent)")
    return d


@pytest.fixture(scope="session")
def ham_jpegs(ham_dir) -> list[bytes]:
    """A few real dermoscopic JPEGs, the first BCCs and non-BCCs of the metadata."""
    import csv

    rows = list(csv.DictReader(open(ham_dir / "metadata.csv")))
    pick = [r for r in rows if r["dx"] == "bcc"][:4] + [r for r in rows if r["dx"] == "nv"][:4]
    return [(ham_dir / "images" / f"{r['image_id']}.jpg").read_bytes() for r in pick]


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()
