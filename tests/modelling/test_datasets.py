import pytest

from services.errors import ValidationError
from services.modelling.datasets import load_dataset
from tests.factories import encode
import numpy as np


def test_labels_csv_layout(tmp_path):
    img = encode(np.zeros((80, 80, 3), np.uint8))
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(img)
    (tmp_path / "labels.csv").write_text("image,dx,PN,AT,group\na.jpg,mel,1,,L1\nb.jpg,,0,1,\n")
    a, b = load_dataset(tmp_path)
    assert (a.dx, a.bcc, a.PN, a.AT, a.group) == ("mel", 0, 1, None, "csv:L1")
    assert (b.dx, b.bcc, b.PN, b.AT, b.group) == (None, None, 0, 1, "csv:b.jpg")


@pytest.mark.parametrize("csv,field", [
    ("image,dx\na.jpg,melanoma\n", "dx"),
    ("image,PN\na.jpg,maybe\n", "PN"),
    ("dx\nmel\n", "image"),
    ("image,dx\nmissing.jpg,mel\n", "images"),
])
def test_bad_labels_are_named(tmp_path, csv, field):
    (tmp_path / "a.jpg").write_bytes(encode(np.zeros((80, 80, 3), np.uint8)))
    (tmp_path / "labels.csv").write_text(csv)
    with pytest.raises(ValidationError) as info:
        load_dataset(tmp_path)
    assert info.value.field == field


def test_shared_layouts(ham_dir):
    ham = load_dataset(ham_dir)
    assert len(ham) == 5984 and sum(s.bcc for s in ham) == 264
    d7 = load_dataset(ham_dir.parent / "derm7pt")
    assert len(d7) == 687 and sum(s.AT for s in d7) == 20 and all(s.PN in (0, 1) for s in d7)
