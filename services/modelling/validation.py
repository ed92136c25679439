"""Validation of a recipe: folds grouped by lesion, out-of-fold predictions, Platt
calibration, operating points and the figures with bootstrap intervals that go in the card.

The served model is fitted on every image after the folds; its figures are the folds'. Why
calibrate with a scale and a bias per class rather than a temperature: class-weighted training
shifts the logits by the class priors, which a temperature alone cannot undo.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..diagnosis.metrics import (auc_with_ci, balanced_accuracy, expected_calibration_error,
                                 sensitivity_specificity, threshold_for_sensitivity,
                                 youden_threshold)
from ..diagnosis.network import BCCPatternNet
from ..diagnosis.patterns import PATTERNS
from .cached_finetune import fit_model, one_solve, served_pooled
from .datasets import DIAGNOSES, Labels, Sample
from .features import Features
from .readouts import fit_heads_exact, fit_readouts, head_logits
from .recipe import RealTrainConfig


def grouped_folds(samples: list[Sample], k: int, seed: int) -> np.ndarray:
    """Fold of each sample: whole groups (lesions) per fold, each diagnosis spread evenly."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    strata: dict[str, list[str]] = {}
    for g, members in groups.items():
        key = f"{samples[members[0]].dx}|{samples[members[0]].AT}"
        strata.setdefault(key, []).append(g)
    fold = np.zeros(len(samples), int)
    offset = 0
    for key in sorted(strata):
        names = strata[key]
        rng.shuffle(names)
        for j, g in enumerate(names):
            fold[groups[g]] = (offset + j) % k
        offset += len(names)
    return fold


# --- calibration and operating points --------------------------------------------------------
def fit_calibration(logits: np.ndarray, target: np.ndarray, softmax: bool = False) -> dict:
    """Platt scaling (a scale and a bias, Platt 1999) fitted by maximum likelihood; for the
    softmax one scale and a bias per class ("vector scaling", Guo et al. 2017). A temperature
    alone cannot undo the prior shift that class-weighted training puts in the logits."""
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(target)
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[1] if softmax else (), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scale, bias], lr=0.5, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scaled = z * scale + bias
        loss = (F.cross_entropy(scaled, y) if softmax
                else F.binary_cross_entropy_with_logits(scaled, y.double()))
        loss.backward()
        return loss
    opt.step(closure)
    b = bias.detach().numpy()
    return {"scale": round(float(scale.detach()), 5),
            "bias": [round(float(v), 5) for v in b] if softmax else round(float(b), 5)}


def calibrated(logits: np.ndarray, cal: dict, softmax: bool = False) -> np.ndarray:
    z = logits * cal["scale"] + np.asarray(cal["bias"])
    return _softmax(z) if softmax else _sigmoid(z)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def out_of_fold(model: BCCPatternNet, feats: Features, labels: Labels, folds: np.ndarray,
                cfg: RealTrainConfig, progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold logits of every image (each fold's model fitted on the other folds); the
    model is left fitted on every image. With the frozen backbone and the exact fits, the BCC
    and diagnosis read-outs of the folds and of all images are one solve (``fit_readouts``);
    ``progress`` then counts its L-BFGS evaluations (``cfg.max_iter`` at most, about), else folds."""
    n = feats.real.shape[1]
    targets = np.zeros((n, 1 + len(PATTERNS)), np.float32)
    diagnoses = np.zeros((n, len(DIAGNOSES)), np.float32)
    if not one_solve(cfg, feats):
        imagenet = {k: v.clone() for k, v in model.features.state_dict().items()}
        for k in range(cfg.folds):
            train, test = torch.from_numpy(folds != k), torch.from_numpy(folds == k)
            model.features.load_state_dict(imagenet)     # every fold starts from ImageNet
            fit_model(model, feats, train, labels.subset(train), cfg, cfg.seed + 101 * (k + 1))
            t, d = head_logits(model, served_pooled(model, feats, test, cfg))
            targets[test.numpy()], diagnoses[test.numpy()] = t, d
            progress(1)
        model.features.load_state_dict(imagenet)
        fit_model(model, feats, None, labels, cfg, cfg.seed)
        return targets, diagnoses
    sets = [torch.from_numpy(folds != k) for k in range(cfg.folds)] + [torch.ones(n, dtype=torch.bool)]
    readouts = fit_readouts(feats.real, labels, sets, cfg, progress)
    patterned = (labels.patterns >= 0).any(1)
    for rows, readout in zip(sets, readouts):
        # The pattern heads are small fits of their own, on the rows with pattern labels
        # (Derm7pt's) and the drawings: only those rows are copied and standardised.
        readout.install(model)
        fit_rows = rows & patterned
        fit_heads_exact(model, feats.real[:, fit_rows], labels.subset(fit_rows), feats.synthetic,
                        feats.synthetic_patterns, cfg, readouts=False)
        if rows is not sets[-1]:
            test = ~rows
            targets[test.numpy()], diagnoses[test.numpy()] = head_logits(model, feats.real[0, test])
    model.eval()
    return targets, diagnoses


def assess(target_logits: np.ndarray, diagnosis_logits: np.ndarray, labels: Labels,
           cfg: RealTrainConfig) -> dict:
    """Temperatures, thresholds and figures from out-of-fold logits."""
    dx = labels.dx.numpy()
    bcc = labels.bcc.numpy()
    pat = labels.patterns.numpy()
    has_dx, has_bcc = dx >= 0, bcc >= 0
    temps = {"BCC": fit_calibration(target_logits[has_bcc, 0], bcc[has_bcc]),
             "diagnosis": fit_calibration(diagnosis_logits[has_dx], dx[has_dx], softmax=True)}
    p_bcc = calibrated(target_logits[:, 0], temps["BCC"])
    p_dx = calibrated(diagnosis_logits, temps["diagnosis"], softmax=True)
    bcc_t = threshold_for_sensitivity(bcc[has_bcc], p_bcc[has_bcc], cfg.bcc_sensitivity)
    figures = {"BCC": {**auc_with_ci(bcc[has_bcc], p_bcc[has_bcc], seed=cfg.seed),
                       "threshold": round(bcc_t, 4),
                       **sensitivity_specificity(bcc[has_bcc], p_bcc[has_bcc] >= bcc_t),
                       **{k: v for k, v in expected_calibration_error(bcc[has_bcc], p_bcc[has_bcc]).items()
                          if k == "ece"}}}
    thresholds = {c: 0.5 for c in PATTERNS}
    for code in labels.labelled:
        j = PATTERNS.index(code)
        has = pat[:, j] >= 0
        temps[code] = fit_calibration(target_logits[has, 1 + j], pat[has, j])
        p = calibrated(target_logits[has, 1 + j], temps[code])
        thresholds[code] = round(youden_threshold(pat[has, j], p), 4)
        figures[code] = {**auc_with_ci(pat[has, j], p, seed=cfg.seed), "threshold": thresholds[code],
                         **sensitivity_specificity(pat[has, j], p >= thresholds[code]),
                         "ece": expected_calibration_error(pat[has, j], p)["ece"]}
    operating = {}
    for code, sens in (("mel", cfg.mel_sensitivity), ("akiec", cfg.akiec_sensitivity)):
        c = DIAGNOSES.index(code)
        operating[code] = round(threshold_for_sensitivity(dx[has_dx] == c, p_dx[has_dx, c], sens), 4)
    per_dx = {}
    for c, code in enumerate(DIAGNOSES):
        per_dx[code] = auc_with_ci(dx[has_dx] == c, p_dx[has_dx, c], seed=cfg.seed)
        if code in operating:
            per_dx[code].update(threshold=operating[code],
                                **sensitivity_specificity(dx[has_dx] == c, p_dx[has_dx, c] >= operating[code]))
    figures["diagnoses"] = per_dx
    # Balanced accuracy is the mean recall over classes, so its Bayes decision is the class
    # with the highest p(class | image) / p(class): calibrated probabilities over the class
    # frequencies of the training data (nothing tuned on the folds).
    prior = np.bincount(dx[has_dx], minlength=len(DIAGNOSES)) / has_dx.sum()
    figures["balanced_accuracy_7"] = round(balanced_accuracy(
        dx[has_dx], (p_dx[has_dx] / np.maximum(prior, 1e-6)).argmax(1), len(DIAGNOSES)), 4)
    figures["class_prior"] = {c: round(float(v), 4) for c, v in zip(DIAGNOSES, prior)}
    figures["diagnosis_ece_top1"] = expected_calibration_error(
        p_dx[has_dx].argmax(1) == dx[has_dx], p_dx[has_dx].max(1))["ece"]
    return {"calibration": temps, "thresholds": thresholds, "bcc_threshold": round(bcc_t, 4),
            "operating_points": operating, "figures": figures}
