"""Fitting the referral tiers to clinical targets on out-of-fold predictions."""

import numpy as np
import pytest

from services import config
from services.errors import ConfigurationError
from services.modelling.datasets import DIAGNOSES
from services.modelling.triage import _tiers, fit_triage, threshold_for
from services.risk import Triage

TARGETS = {"malignant_seen": 0.97, "melanoma_urgent": 0.90}


def synthetic(n=3000, seed=0):
    """Out-of-fold-like outputs: malignant lesions get more malignant mass, with overlap."""
    rng = np.random.default_rng(seed)
    dx = rng.choice(len(DIAGNOSES), n, p=[0.6, 0.12, 0.06, 0.04, 0.12, 0.03, 0.03])
    logits = rng.normal(0, 1, (n, len(DIAGNOSES)))
    logits[np.arange(n), dx] += 2.0
    p_dx = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p_bcc = np.clip(p_dx[:, DIAGNOSES.index("bcc")] + rng.normal(0, 0.05, n), 0, 1)
    return p_bcc, p_dx, dx


def test_threshold_is_the_highest_that_keeps_the_share():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    t = threshold_for(p, 0.9)
    assert t == 0.2 and (p >= t).mean() >= 0.9 and (p > t).mean() < 0.9
    assert threshold_for(np.array([]), 0.9) == 1.0


def test_tiers_meet_the_targets_with_the_smallest_urgent_share():
    p_bcc, p_dx, dx = synthetic()
    section = fit_triage(p_bcc, p_dx, dx, TARGETS, seed=0)
    assert section["met"] == {"malignant_seen": True, "melanoma_urgent": True}
    served = Triage.from_card(section)
    p = np.array([served.probability(b, dict(zip(DIAGNOSES, row))) for b, row in zip(p_bcc, p_dx)])
    f = _tiers(p, dx, served.routine_at, served.urgent_at)
    assert f["urgent_sensitivity"]["mel"] >= 0.90 and f["seen_sensitivity"]["malignant"] >= 0.97
    # the threshold sits just under the last melanoma it must keep (floored as the card stores
    # it); moving it above that melanoma misses the target: no smaller urgent tier meets it
    mel = p[dx == DIAGNOSES.index("mel")]
    kept = np.sort(mel[mel >= served.urgent_at])
    assert (mel >= kept[1]).mean() < 0.90
    assert section["ordering_auc"]["malignancy_probability"] == section["ordering_auc"]["queue_neutral_answers"]
    lo, hi = section["ci95"]["share.urgent"]
    assert lo <= section["figures"]["share.urgent"] <= hi
    assert len(section["curve"]["points"]) == 101


def test_stricter_targets_make_a_larger_urgent_tier():
    p_bcc, p_dx, dx = synthetic()
    base = fit_triage(p_bcc, p_dx, dx, TARGETS, seed=0)
    strict = fit_triage(p_bcc, p_dx, dx, {"malignant_seen": 0.99, "melanoma_urgent": 0.97}, seed=0)
    assert strict["figures"]["share.urgent"] > base["figures"]["share.urgent"]
    assert strict["thresholds"]["routine"] <= base["thresholds"]["routine"]


def test_targets_come_from_the_configuration():
    assert config.triage_targets({}) == TARGETS
    assert config.triage_targets({"DERMATRIAGE_TRIAGE_MELANOMA_URGENT": "0.95"})["melanoma_urgent"] == 0.95
    for bad in ("high", "0", "1.5"):
        with pytest.raises(ConfigurationError, match="DERMATRIAGE_TRIAGE_MELANOMA_URGENT"):
            config.triage_targets({"DERMATRIAGE_TRIAGE_MELANOMA_URGENT": bad})
