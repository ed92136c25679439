"""Leave-one-collection-out validation: the splits it makes and the figures it reports."""

from pathlib import Path

import numpy as np
import torch

from services.modelling import out_of_source
from services.modelling.datasets import DIAGNOSES, Labels, Sample


def sample(collection: str, lesion: str, dx: str = "nv") -> Sample:
    return Sample(Path(f"{collection}/{lesion}.jpg"), lesion, "csv", dx, int(dx == "bcc"), collection=collection)


def test_each_collection_is_held_out_once_and_no_lesion_is_on_both_sides():
    samples = [sample("a", "l1"), sample("a", "l2"), sample("b", "l3"), sample("b", "l1"),   # l1 in a and b
               sample("c", "l4"), sample("c", "l5"), sample("c", "l2")]                       # l2 in a and c
    splits = out_of_source.holdouts(samples)
    assert [h.collection for h in splits] == ["a", "b", "c"]
    for h in splits:
        test_groups = {samples[i].group for i in np.flatnonzero(h.test.numpy())}
        train_groups = {samples[i].group for i in np.flatnonzero(h.train.numpy())}
        assert not test_groups & train_groups
        assert all(samples[i].collection == h.collection for i in np.flatnonzero(h.test.numpy()))
        assert not (h.train & h.test).any()
    a, b, c = splits
    assert a.dropped == 2 and b.dropped == 1 and c.dropped == 1     # the other sides' copies of l1, l2
    assert a.train.sum() == 3 and b.train.sum() == 4


def test_figures_use_the_served_calibration_and_need_enough_of_each_class():
    rng = np.random.default_rng(0)
    dx = np.array([DIAGNOSES.index("mel")] * 30 + [DIAGNOSES.index("nv")] * 60 + [DIAGNOSES.index("bcc")] * 5)
    labels = Labels(torch.from_numpy(dx), torch.from_numpy((dx == DIAGNOSES.index("bcc")).astype(np.int64)),
                    torch.full((len(dx), 7), -1))
    diagnosis_logits = rng.normal(0, 0.1, (len(dx), len(DIAGNOSES)))
    diagnosis_logits[np.arange(len(dx)), dx] += 3            # a model that reads every image right
    target_logits = np.zeros((len(dx), 8))
    identity = {"scale": 1.0, "bias": 0.0}
    result = {"calibration": {"BCC": identity, "diagnosis": {"scale": 1.0, "bias": [0.0] * 7}},
              "operating_points": {"mel": 0.5}, "bcc_threshold": 0.5}
    prior = np.full(len(DIAGNOSES), 1 / len(DIAGNOSES))
    out = out_of_source.figures(target_logits, diagnosis_logits, labels, prior, result, seed=0)
    assert out["images"] == 95
    assert "BCC" not in out                                  # 5 BCCs: too few to report
    assert out["melanoma"]["auc"] == 1.0 and out["melanoma"]["sensitivity"] == 1.0
    assert out["malignant"]["auc"] == 1.0 and out["malignant"]["positives"] == 35
    assert out["balanced_accuracy"] == 1.0 and out["balanced_accuracy_classes"] == ["nv", "mel"]
    no_melanoma = {"scale": 1.0, "bias": [0, -9, 0, 0, 0, 0, 0]}      # a calibration that shrinks it
    worse = {**result, "calibration": {**result["calibration"], "diagnosis": no_melanoma}}
    shifted = out_of_source.figures(target_logits, diagnosis_logits, labels, prior, worse, seed=0)
    assert shifted["melanoma"]["auc"] == 1.0 and shifted["melanoma"]["sensitivity"] < 0.5   # threshold, not ranking


def test_plan_with_is_the_lowest_held_out_figure():
    collections = {"a": {"BCC": {"auc": 0.9}, "balanced_accuracy": 0.6},
                   "b": {"BCC": {"auc": 0.8}, "melanoma": {"auc": 0.7}, "balanced_accuracy": 0.7}}
    assert out_of_source.plan_with(collections) == {
        "BCC": {"auc": 0.8, "collection": "b"}, "melanoma": {"auc": 0.7, "collection": "b"},
        "balanced_accuracy": {"value": 0.6, "collection": "a"}}
