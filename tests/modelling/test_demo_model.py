"""The demo model built by `make install` meets the issue's targets on unseen seeds."""

import pytest

from services.modelling.evaluation import evaluate


@pytest.mark.demo_model
@pytest.mark.parametrize("seed", [20261121, 7])
def test_demo_model_meets_targets_on_fresh_synthetic_images(demo_engine, seed):
    r = evaluate(demo_engine, 400, seed)
    assert r["bcc"]["accuracy"] >= 0.95
    assert r["gradcam_alignment"]["mean_inside"] >= 0.57
    assert r["gradcam_alignment"]["mean_outside"] <= 0.16


@pytest.mark.demo_model
def test_demo_card_is_honest(demo_engine):
    card = demo_engine.card
    assert card.clinical_use is False and "Not for clinical use" in card.intended_use
    assert card.training_data["real_patient_images"] == 0
