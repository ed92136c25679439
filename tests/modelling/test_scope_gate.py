"""The scope gate: how it is validated (whole collections held out on both sides), and the
served real-image model's gate on images it never trained on."""

import numpy as np
import pytest
import torch

from services import config
from services.diagnosis.engine import Engine
from services.modelling import scope_gate
from services.modelling.scope_gate import ClinicalPhoto, _balanced, _category_parts, off_scope_images

from tests.factories import encode


def photos(categories):
    return [ClinicalPhoto(path=None, label=c, lesion=True, category=c) for c in categories]


def test_atlas_categories_are_never_split_and_parts_are_balanced():
    cats = ["a"] * 30 + ["b"] * 25 + ["c"] * 20 + ["d"] * 18 + ["e"] * 10 + ["f"] * 5
    part = _category_parts(photos(cats), 3, seed=0)
    for c in set(cats):
        assert len(set(part[np.array(cats) == c])) == 1
    sizes = np.bincount(part)
    assert sizes.max() - sizes.min() <= 10


def test_every_collection_weighs_the_same_in_its_class():
    groups = ["big"] * 90 + ["small"] * 10 + ["clinical"] * 50
    y = np.r_[np.ones(100), np.zeros(50)]
    w = _balanced(groups, y).numpy()
    assert np.isclose(w[:90].sum(), w[90:100].sum())
    assert np.isclose(w[:100].sum(), w[100:].sum())


def test_held_out_scores_come_from_fits_without_them():
    """A collection unlike the others, held out, must not be scored by a fit that saw it: its
    held-out scores are worse than the in-fit ones."""
    rng = np.random.default_rng(0)
    d = 20
    zd = torch.from_numpy(np.r_[rng.normal(1, 1, (60, d)), rng.normal(1, 1, (60, d)),
                                rng.normal(-1, 1, (30, d))]).float()   # the third looks clinical
    zc = torch.from_numpy(rng.normal(-1, 1, (1, 40, d))).float()
    cols = ["a"] * 60 + ["b"] * 60 + ["odd"] * 30
    held = scope_gate.held_out(zd, zc, cols, photos([f"c{i % 5}" for i in range(40)]), seed=0)
    w, b = scope_gate.fit_logistic(*scope_gate._design(zd, zc, cols, np.ones(150, bool), np.ones(40, bool)))
    in_fit = (zd[120:] @ w + b).numpy()
    assert held.dermoscopic[120:].mean() < in_fit.mean() - 1


@pytest.fixture(scope="module")
def served():
    path = config.real_model_path()
    if not path.is_file():
        pytest.skip(f"no real-image model at {path} (make install builds it where the shared data is)")
    engine = Engine.load(path, "cpu")
    if not engine.card.scope:
        pytest.skip("the model in var/models predates the scope gate; rebuild it")
    return engine


def test_served_gate_refuses_every_generated_non_skin_image(served):
    # A seed the build's own figures did not use: images the gate never saw.
    images = off_scope_images(36, seed=2026)
    results = served.analyse([encode(rgb, "PNG") for _, rgb in images])
    refused = [r.scope.verdict != "dermoscopic" for r in results]
    assert all(refused), [k for (k, _), r in zip(images, refused) if not r]
    for r in results:
        assert r.patterns_present == [] and r.clinical.rule_reason == "not_applicable"


def test_served_gate_passes_real_dermoscopy(served, ham_jpegs):
    results = served.analyse(ham_jpegs)
    assert [r.scope.verdict for r in results] == ["dermoscopic"] * len(ham_jpegs)


def test_card_states_the_gate_figures_and_they_meet_the_targets(served):
    scope = served.card.scope
    t, f = scope["thresholds"], scope["figures"]
    assert {"dermoscopic", "lesion", "typicality", "dermoscopic_typicality"} <= set(t)
    assert "held" in scope["validation"] and "DermNet" in scope["limits"]
    passed = {c: v["passed"] for c, v in f["dermoscopy_passed"].items()}
    assert min(passed.values()) >= 0.98, passed
    assert f["clinical_refused"]["served (centre square)"]["refused"] >= 0.95, f["clinical_refused"]
    assert all(v["refused"] == 1.0 for v in f["off_scope_refused"].values()), f["off_scope_refused"]
