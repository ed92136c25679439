import numpy as np

from services.diagnosis.patterns import PATTERNS, rule_says_bcc
from services.modelling.synthetic import KINDS, generate, generate_case


def test_same_seed_same_images_other_seed_other_images():
    a = generate(6, seed=7, size=96)
    b = generate(6, seed=7, size=96)
    c = generate(6, seed=8, size=96)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.pattern_masks, b.pattern_masks)
    assert not np.array_equal(a.images, c.images)


def test_any_slice_regenerates_exactly():
    whole = generate(8, seed=3, size=64)
    part = generate(3, seed=3, size=64, start=4)
    assert np.array_equal(whole.images[4:7], part.images)
    assert np.array_equal(generate_case(3, 5, 64).image, whole.images[5])


def test_labels_follow_the_rule_and_masks_are_consistent():
    data = generate(120, seed=11, size=96)
    for i in range(len(data)):
        present = {c for c, v in zip(PATTERNS, data.patterns[i]) if v}
        assert data.bcc[i] == rule_says_bcc(present)
        for j, code in enumerate(PATTERNS):
            mask = data.pattern_masks[i, j]
            assert mask.any() == bool(data.patterns[i, j]), (i, code)
            assert not (mask & ~data.lesion_masks[i]).any(), "pattern outside the lesion"
    assert {k for k in data.kinds} == set(KINDS)
    assert data.patterns.sum(0).min() > 0, "every pattern must occur"
    assert 0.35 < data.bcc.mean() < 0.65


def test_hard_cases_faint_bcc_and_mimics():
    data = generate(200, seed=5, size=96)
    kinds = np.array(data.kinds)
    assert data.bcc[kinds == "bcc_faint"].all()
    assert not data.bcc[kinds == "mimic"].any()
    assert data.patterns[kinds == "mimic"].sum() == 0
    # Conflicting evidence exists (PN with a BCC pattern) and is labelled non-BCC.
    conflict = (data.patterns[:, 0] == 1) & (data.patterns[:, 1:].sum(1) > 0)
    assert conflict.any() and not data.bcc[conflict].any()


def test_patterns_are_drawn_where_their_masks_are():
    """Inside each pattern's mask the picture differs from the bare lesion it sits on."""
    data = generate(60, seed=2, size=128)
    for i in range(len(data)):
        img = data.images[i].astype(float)
        lesion_only = data.lesion_masks[i] & ~data.pattern_masks[i].any(0)
        if lesion_only.sum() < 50:
            continue
        base = img[lesion_only].mean(0)
        for j in np.flatnonzero(data.patterns[i]):
            inside = img[data.pattern_masks[i, j]]
            assert np.abs(inside - base).max(1).mean() > 8, (i, PATTERNS[j])
