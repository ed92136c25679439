"""One reference label from several readers: Dawid-Skene EM (SCIENCE.md s.2).

Each reader r has a confusion matrix pi[r, true, given]; each item a true class. EM
alternates the posterior of every item's class given the readers' labels (E) and the
readers' confusion matrices and class priors given those posteriors (M), starting from
majority voting. A reader who is reliably wrong (an adversary who flips labels) is as
informative as a reliable one once their matrix is learnt; a near-random reader's labels
are weighed towards nothing. Majority voting counts them all alike.

Written here in NumPy (about 40 lines) rather than taken from crowd-kit: that library pulls
in pandas, scikit-learn and more for the same few array operations. The tests check the
recovery of simulated readers; crowd-kit is the oracle for a manual cross-check only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MISSING = -1


@dataclass(frozen=True)
class Consensus:
    posterior: np.ndarray      # (items, classes) P(true class | all labels)
    confusion: np.ndarray      # (readers, classes, classes) P(given | true)
    prior: np.ndarray          # (classes,)
    iterations: int

    @property
    def reference(self) -> np.ndarray:
        return self.posterior.argmax(1)


def majority_vote(labels: np.ndarray, classes: int) -> np.ndarray:
    """(items, readers) labels with MISSING -> (items,) most frequent label (ties: lowest
    class; items nobody labelled: MISSING)."""
    counts = _counts(labels, classes)
    out = counts.argmax(1)
    out[counts.sum(1) == 0] = MISSING
    return out


def _counts(labels: np.ndarray, classes: int) -> np.ndarray:
    onehot = (labels[:, :, None] == np.arange(classes)[None, None, :])     # (I, R, K)
    return onehot.sum(1).astype(float)


def dawid_skene(labels: np.ndarray, classes: int, max_iter: int = 200, tol: float = 1e-6,
                smoothing: float = 0.01) -> Consensus:
    """Dawid and Skene (1979), with a little additive smoothing of the confusion counts so a
    reader who never used a class does not get probability exactly zero for it."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError("labels must be (items, readers)")
    onehot = (labels[:, :, None] == np.arange(classes)[None, None, :]).astype(float)   # (I, R, K)
    counts = onehot.sum(1)
    seen = counts.sum(1) > 0
    # start from the (soft) majority vote
    post = np.where(seen[:, None], counts / np.maximum(counts.sum(1, keepdims=True), 1), 1 / classes)
    for it in range(1, max_iter + 1):
        # M: priors and confusion matrices from the current posteriors
        prior = (post[seen].sum(0) + smoothing) / (seen.sum() + smoothing * classes)
        confusion = np.einsum("ik,irl->rkl", post, onehot) + smoothing
        confusion /= confusion.sum(2, keepdims=True)
        # E: log P(true = k | labels) up to a constant
        log_post = np.log(prior)[None, :] + np.einsum("irl,rkl->ik", onehot, np.log(confusion))
        log_post -= log_post.max(1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(1, keepdims=True)
        new[~seen] = prior
        delta = np.abs(new - post).max()
        post = new
        if delta < tol:
            break
    return Consensus(post, confusion, prior, it)


def reader_figures(confusion: np.ndarray) -> list[dict]:
    """Per reader, for a binary task (class 1 = present): sensitivity and specificity."""
    return [{"sensitivity": round(float(c[1, 1]), 4), "specificity": round(float(c[0, 0]), 4)}
            for c in confusion]
