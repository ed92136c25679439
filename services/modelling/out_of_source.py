"""Leave-one-collection-out validation: the figures to plan with for a clinic the model never saw.

Random folds put images of every collection (camera, population, label mix) on both sides of
each split, so they measure the model on images like its training set. Here each collection
(HAM10000's four sources, Derm7pt) is held out whole in turn: the BCC and diagnosis read-outs
are refitted on the others, exactly as the build fits them, and the held-out images are read
with the served model's calibration and operating points, as the product would read a new
clinic's images. A lesion photographed in two collections is left out of the training side, so
no lesion is on both sides of a split.

Only the BCC and diagnosis read-outs are refitted: PN and AT are labelled in Derm7pt alone, so
holding Derm7pt out leaves them nothing to learn from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..diagnosis.metrics import auc_with_ci, sensitivity_specificity
from ..diagnosis.network import BCCPatternNet
from ..risk import MALIGNANT             # the classes the referral risk counts as malignant
from .datasets import DIAGNOSES, Labels, Sample
from .readouts import fit_readouts, head_logits
from .recipe import RealTrainConfig
from .validation import calibrated

MIN_CLASS = 10                           # images of each class a figure needs to be reported


@dataclass(frozen=True)
class Holdout:
    collection: str
    train: torch.Tensor      # (N,) bool: the other collections, less lesions also held out
    test: torch.Tensor       # (N,) bool: the held-out collection
    dropped: int             # training images left out because their lesion is in the test side


def holdouts(samples: list[Sample]) -> list[Holdout]:
    """One split per collection, in name order."""
    collection = np.array([s.collection for s in samples])
    group = np.array([s.group for s in samples])
    out = []
    for name in sorted(set(collection)):
        test = collection == name
        shared = np.isin(group, group[test]) & ~test
        out.append(Holdout(name, torch.from_numpy(~test & ~shared), torch.from_numpy(test), int(shared.sum())))
    return out


def _binary(truth: np.ndarray, prob: np.ndarray, threshold: float | None, seed: int) -> dict | None:
    positives = int(truth.sum())
    if positives < MIN_CLASS or len(truth) - positives < MIN_CLASS:
        return None
    entry = {**auc_with_ci(truth, prob, seed=seed), "positives": positives}
    if threshold is not None:
        entry.update(threshold=threshold, **sensitivity_specificity(truth, prob >= threshold))
    return entry


def figures(target_logits: np.ndarray, diagnosis_logits: np.ndarray, labels: Labels, prior: np.ndarray,
            result: dict, seed: int) -> dict:
    """One held-out collection's figures from its logits, read with the served model's
    calibration and operating points (``result``: ``validation.assess``'s output)."""
    cal, operating = result["calibration"], result["operating_points"]
    dx, bcc = labels.dx.numpy(), labels.bcc.numpy()
    out: dict = {"images": len(dx)}
    has = bcc >= 0
    p_bcc = calibrated(target_logits[:, 0], cal["BCC"])
    if (entry := _binary(bcc[has], p_bcc[has], result["bcc_threshold"], seed)) is not None:
        out["BCC"] = entry
    has = dx >= 0
    p_dx = calibrated(diagnosis_logits, cal["diagnosis"], softmax=True)[has]
    truth = dx[has]
    mel = DIAGNOSES.index("mel")
    if (entry := _binary(truth == mel, p_dx[:, mel], operating.get("mel"), seed)) is not None:
        out["melanoma"] = entry
    malignant = np.isin(truth, [DIAGNOSES.index(c) for c in MALIGNANT])
    p_malignant = p_dx[:, [DIAGNOSES.index(c) for c in MALIGNANT]].sum(1)
    if (entry := _binary(malignant, p_malignant, None, seed)) is not None:
        out["malignant"] = entry
    # Balanced accuracy over the classes the collection holds enough of, with the decision of
    # the served model (calibrated probability over the training set's class frequency).
    counts = np.bincount(truth, minlength=len(DIAGNOSES))
    present = [k for k in range(len(DIAGNOSES)) if counts[k] >= MIN_CLASS]
    if len(present) >= 2:
        keep = np.isin(truth, present)
        decision = (p_dx[keep] / np.maximum(prior, 1e-6)).argmax(1)
        recalls = [float((decision[truth[keep] == k] == k).mean()) for k in present]
        out["balanced_accuracy"] = round(float(np.mean(recalls)), 4)
        out["balanced_accuracy_classes"] = [DIAGNOSES[k] for k in present]
    return out


def validate(model: BCCPatternNet, real: torch.Tensor, samples: list[Sample], labels: Labels,
             cfg: RealTrainConfig, result: dict, progress: Callable[[int], None] = lambda n: None,
             out_of_fold: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The leave-one-collection-out figures of the recipe ``cfg`` on cached features ``real``
    ((views, N, C)); ``model`` is left untouched (a copy carries each split's read-outs).

    With ``out_of_fold`` (the random folds' target and diagnosis logits of every image), each
    collection also gets ``in_source``: the same images read by the random folds' models,
    which saw the rest of their collection. The pooled in-source figure mixes every
    collection's case mix (mostly naevi); this one compares like with like, so the difference
    to the held-out figure is what a new clinic costs on that case mix."""
    splits = holdouts(samples)
    readouts = fit_readouts(real, labels, [h.train for h in splits], cfg, progress)
    scratch = copy.deepcopy(model)
    # The random folds' models were trained on (nearly) every image: their class frequency.
    all_prior = _frequency(labels.dx)
    out = {}
    for split, readout in zip(splits, readouts):
        readout.install(scratch)
        targets, diagnoses = head_logits(scratch, real[0, split.test])
        test = labels.subset(split.test)
        out[split.collection] = {**figures(targets, diagnoses, test, _frequency(labels.dx[split.train]), result,
                                           cfg.seed),
                                 "training_images": int(split.train.sum()), "dropped_shared_lesions": split.dropped}
        if out_of_fold is not None:
            rows = split.test.numpy()
            out[split.collection]["in_source"] = figures(out_of_fold[0][rows], out_of_fold[1][rows], test,
                                                         all_prior, result, cfg.seed)
    return {"scheme": "leave one collection out: the BCC and diagnosis read-outs refitted on the other "
                      "collections, the held-out one read with the served model's calibration and "
                      "operating points; 95% bootstrap intervals; a figure needs "
                      f"{MIN_CLASS} images of each class",
            "collections": out, "plan_with": plan_with(out)}


def _frequency(dx: torch.Tensor) -> np.ndarray:
    """Each diagnosis's share of the labelled images (-1: none), the decision's prior."""
    known = dx[dx >= 0].numpy()
    return np.bincount(known, minlength=len(DIAGNOSES)) / len(known)


def plan_with(collections: dict) -> dict:
    """The lowest held-out figure of each target, and the collection that gave it."""
    out = {}
    for target in ("BCC", "melanoma", "malignant"):
        held = [(c[target]["auc"], name) for name, c in collections.items() if target in c]
        if held:
            auc, name = min(held)
            out[target] = {"auc": auc, "collection": name}
    held = [(c["balanced_accuracy"], name) for name, c in collections.items() if "balanced_accuracy" in c]
    if held:
        ba, name = min(held)
        out["balanced_accuracy"] = {"value": ba, "collection": name}
    return out
