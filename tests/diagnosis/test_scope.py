"""The scope gate's verdict logic (the read-out's thresholds come from the card)."""

import numpy as np

from services.diagnosis.scope import (CLINICAL, DERMOSCOPIC, NOT_A_LESION, NOT_SKIN, UNUSABLE,
                                      GateThresholds, judge)
from services.intake import ImageQuality, Screen

GOOD_SCREEN = Screen(skin_share=0.9, grey_std=30.0, palette=900, solid_share=0.01)
GOOD_QUALITY = ImageQuality(sharpness=120.0, brightness=0.6, dark_clipped=0.0, bright_clipped=0.0)
GATE = GateThresholds(dermoscopic=0.0, lesion=0.0, typicality=10.0)


def test_dermoscopic_only_when_every_check_passes():
    v = judge(GOOD_SCREEN, GOOD_QUALITY, GATE, 2.0, 1.0, 1.2)
    assert v.verdict == DERMOSCOPIC and v.applicable and not v.hint
    assert v.measures["modality_logit"] == 2.0


def test_photographs_without_a_dermatoscope():
    v = judge(GOOD_SCREEN, GOOD_QUALITY, GATE, -1.0, 2.0, 1.2)
    assert v.verdict == CLINICAL and not v.applicable and "dermatoscope" in v.hint
    v = judge(GOOD_SCREEN, GOOD_QUALITY, GATE, -1.0, -2.0, 1.2)
    assert v.verdict == NOT_A_LESION and "rash" in v.reason


def test_not_skin_before_modality():
    drawing = Screen(skin_share=0.0, grey_std=40.0, palette=6, solid_share=0.9)
    v = judge(drawing, GOOD_QUALITY, GATE, 5.0, 5.0, 1.0)
    assert v.verdict == NOT_SKIN and "drawn" in v.reason
    v = judge(GOOD_SCREEN, GOOD_QUALITY, GATE, 5.0, 5.0, 50.0)
    assert v.verdict == NOT_SKIN and "typicality" in v.reason
    grain = ImageQuality(sharpness=90000.0, brightness=0.5, dark_clipped=0.0, bright_clipped=0.0)
    assert judge(GOOD_SCREEN, grain, GATE, 5.0, 5.0, 1.0).verdict == NOT_SKIN


def test_unusable_only_when_unreadable():
    blank = Screen(skin_share=1.0, grey_std=0.5, palette=2, solid_share=1.0)
    assert judge(blank, GOOD_QUALITY, GATE, 5.0, 5.0, 1.0).verdict == UNUSABLE
    soft = ImageQuality(sharpness=8.0, brightness=0.6, dark_clipped=0.0, bright_clipped=0.0)
    assert judge(GOOD_SCREEN, soft, GATE, 5.0, 5.0, 1.0).verdict == DERMOSCOPIC   # flagged, still read
    mush = ImageQuality(sharpness=1.0, brightness=0.6, dark_clipped=0.0, bright_clipped=0.0)
    v = judge(GOOD_SCREEN, mush, GATE, 5.0, 5.0, 1.0)
    assert v.verdict == UNUSABLE and "blurred" in v.reason and "refocus" in v.hint
    dark = ImageQuality(sharpness=50.0, brightness=0.03, dark_clipped=0.9, bright_clipped=0.0)
    assert judge(GOOD_SCREEN, dark, GATE, 5.0, 5.0, 1.0).verdict == UNUSABLE


def test_without_a_gate_modality_is_not_assessed():
    v = judge(GOOD_SCREEN, GOOD_QUALITY)
    assert v.verdict == DERMOSCOPIC and not v.assessed and "not assessed" in v.reason
    assert np.isclose(GATE.dermoscopic, 0.0)
    assert GateThresholds.from_card({}) is None
    assert GateThresholds.from_card({"thresholds": {"dermoscopic": 1, "lesion": 2, "typicality": 3}}).lesion == 2
