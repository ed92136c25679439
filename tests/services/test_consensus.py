"""Dawid-Skene recovers simulated readers of known reliability and beats majority voting."""

import numpy as np
import pytest

from services.consensus import MISSING, dawid_skene, majority_vote, reader_figures

# sensitivity, specificity of five readers: three good, one adversarial, one near-random
READERS = [(0.90, 0.92), (0.85, 0.88), (0.80, 0.90), (0.10, 0.15), (0.55, 0.50)]


def simulate(n: int, prevalence: float, readers, seed: int, missing: float = 0.0):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < prevalence).astype(int)
    labels = np.empty((n, len(readers)), int)
    for j, (sens, spec) in enumerate(readers):
        p_one = np.where(truth == 1, sens, 1 - spec)
        labels[:, j] = (rng.random(n) < p_one).astype(int)
    labels[rng.random(labels.shape) < missing] = MISSING
    return truth, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_readers_are_recovered_and_majority_vote_is_beaten(seed):
    truth, labels = simulate(600, 0.3, READERS, seed)
    ds = dawid_skene(labels, 2)
    figures = reader_figures(ds.confusion)
    for (sens, spec), got in zip(READERS, figures):
        assert got["sensitivity"] == pytest.approx(sens, abs=0.08)
        assert got["specificity"] == pytest.approx(spec, abs=0.08)
    assert ds.prior[1] == pytest.approx(0.3, abs=0.05)
    ds_acc = (ds.reference == truth).mean()
    mv_acc = (majority_vote(labels, 2) == truth).mean()
    best = (oracle(labels, 0.3, READERS) == truth).mean()
    # as good as knowing every reader's true reliability; the adversary's flipped labels
    # count against the truth in a vote and for it under DS
    assert ds_acc >= best - 0.01 and ds_acc > mv_acc + 0.05, (ds_acc, best, mv_acc)


def oracle(labels, prevalence, readers):
    """The Bayes decision with the readers' true sensitivity and specificity."""
    log1 = np.full(len(labels), np.log(prevalence))
    log0 = np.full(len(labels), np.log(1 - prevalence))
    for j, (sens, spec) in enumerate(readers):
        y = labels[:, j]
        seen = y != MISSING
        log1 += seen * np.where(y == 1, np.log(sens), np.log(1 - sens))
        log0 += seen * np.where(y == 1, np.log(1 - spec), np.log(spec))
    return (log1 > log0).astype(int)


def test_missing_labels_and_unlabelled_items():
    readers = READERS[:3] + READERS[4:]
    truth, labels = simulate(2000, 0.4, readers, seed=5, missing=0.3)
    labels[:10] = MISSING
    ds = dawid_skene(labels, 2)
    assert np.allclose(ds.posterior[:10], ds.prior)               # nobody labelled them
    seen = (labels != MISSING).any(1)
    best = (oracle(labels, 0.4, readers)[seen] == truth[seen]).mean()
    # two good readers who disagree are a near tie: small estimation errors flip some of those
    assert (ds.reference[seen] == truth[seen]).mean() >= best - 0.02
    assert (ds.reference[seen] == truth[seen]).mean() > (majority_vote(labels, 2)[seen] == truth[seen]).mean()
    assert (majority_vote(labels, 2)[:10] == MISSING).all()


def test_multiclass_diagnosis_with_a_confused_reader():
    rng = np.random.default_rng(3)
    n, k = 800, 8
    truth = rng.choice(k, n, p=[.4, .12, .15, .08, .1, .05, .05, .05])
    labels = np.empty((n, 4), int)
    for j, acc in enumerate([0.85, 0.8, 0.75]):
        wrong = rng.random(n) > acc
        labels[:, j] = np.where(wrong, rng.integers(0, k, n), truth)
    labels[:, 3] = (truth + 1) % k                                   # systematically shifted reader
    ds = dawid_skene(labels, k)
    assert (ds.reference == truth).mean() >= 0.95
    assert (majority_vote(labels, k) == truth).mean() < (ds.reference == truth).mean()
    assert ds.confusion[3, np.arange(k), (np.arange(k) + 1) % k].mean() > 0.9
    assert np.allclose(ds.posterior.sum(1), 1)


def test_agrees_with_the_closed_form_for_perfect_readers():
    labels = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    ds = dawid_skene(labels, 2)
    assert list(ds.reference) == [1, 0, 1, 0]
    assert (ds.posterior.max(1) > 0.99).all()
