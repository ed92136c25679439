"""How well a map agrees with a region, and how well labels are predicted: one module.

The served numbers (``map_numbers.py``: how much of a map lies on the lesion) and the
evaluation of a model (``modelling/evaluation.py``: how well maps point at expert-marked
pattern regions, SCIENCE.md s.4) are the same measures on different regions, so both call
``region_stats``/``alignment`` here.

mean_inside / mean_outside   mean map value on the region and off it (paper: 0.57 / 0.16)
relevance_mass               share of the map's total mass that lies on the region
pointing_game                1 when the map's maximum falls on the region
relevance_rank               share of the |region| highest-valued pixels that lie on it
density_overlap              overlap of the histograms of the map on the region and on the
                             whole image (1 = the map does not distinguish the region at all)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def region_stats(flat: Tensor, region: Tensor) -> dict[str, Tensor]:
    """Means on/off a region and the share of mass on it.

    ``flat``: (..., N) non-negative maps; ``region``: (..., N) 0/1 masks, broadcastable to
    ``flat``. Empty regions count as one pixel (no division by zero); a map with no mass has
    relevance_mass 0."""
    region = region.float()
    n_in = region.sum(-1).clamp_min(1.0)
    n_out = (1 - region).sum(-1).clamp_min(1.0)
    mass = flat.sum(-1)
    mass_in = (flat * region).sum(-1)
    share = torch.where(mass > 0, mass_in / mass.clamp_min(1e-12), torch.zeros_like(mass))
    return {"mean_inside": mass_in / n_in, "mean_outside": (mass - mass_in) / n_out,
            "relevance_mass": share}


def alignment(maps: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per-map alignment figures for (M, S, S) maps in [0, 1] and (M, S, S) bool masks."""
    flat = maps.flatten(1).float()
    m = masks.flatten(1).float()
    out = region_stats(flat, m)
    n_in = m.sum(1).clamp_min(1)
    out["pointing_game"] = m.gather(1, flat.argmax(1, keepdim=True)).squeeze(1)
    order = flat.argsort(1, descending=True)
    ranked_in = m.gather(1, order)
    k = m.sum(1).long()
    positions = torch.arange(flat.shape[1])[None, :]
    out["relevance_rank"] = (ranked_in * (positions < k[:, None])).sum(1) / n_in
    bins = 20
    hist_in = torch.stack([torch.histc(f[mm > 0], bins, 0, 1) for f, mm in zip(flat, m)])
    hist_all = torch.stack([torch.histc(f, bins, 0, 1) for f in flat])
    out["density_overlap"] = torch.minimum(hist_in / hist_in.sum(1, keepdim=True).clamp_min(1),
                                           hist_all / hist_all.sum(1, keepdim=True)).sum(1)
    return out


def f1(truth: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum(truth.astype(bool) & pred))
    fp = float(np.sum(~truth.astype(bool) & pred))
    fn = float(np.sum(truth.astype(bool) & ~pred))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


# --- classification --------------------------------------------------------------------------
def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); nan without both classes."""
    truth = np.asarray(truth).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2)[inverse]          # 1-based ranks, ties averaged
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_with_ci(truth: np.ndarray, score: np.ndarray, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> dict:
    """AUC with a percentile bootstrap interval (resampling images, stratified by class so
    every resample has both)."""
    truth = np.asarray(truth).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    point = auc(truth, score)
    if len(pos) == 0 or len(neg) == 0:
        return {"auc": None, "ci95": None, "positives": len(pos), "negatives": len(neg)}
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots.append(auc(truth[idx], score[idx]))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"auc": round(point, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "positives": len(pos), "negatives": len(neg)}


def sensitivity_specificity(truth: np.ndarray, predicted: np.ndarray) -> dict:
    truth = np.asarray(truth).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    tp, fn = int((truth & predicted).sum()), int((truth & ~predicted).sum())
    tn, fp = int((~truth & ~predicted).sum()), int((~truth & predicted).sum())
    return {"sensitivity": round(tp / max(1, tp + fn), 4), "specificity": round(tn / max(1, tn + fp), 4),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def threshold_for_sensitivity(truth: np.ndarray, score: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least the one asked for."""
    positives = np.sort(np.asarray(score)[np.asarray(truth).astype(bool)])
    if len(positives) == 0:
        return 0.5
    k = int(np.floor((1 - sensitivity) * len(positives)))
    return float(positives[min(k, len(positives) - 1)])


def youden_threshold(truth: np.ndarray, score: np.ndarray) -> float:
    """The threshold that maximises sensitivity + specificity - 1."""
    truth = np.asarray(truth).astype(bool)
    best, best_t = -1.0, 0.5
    for t in np.unique(np.asarray(score)):
        pred = np.asarray(score) >= t
        j = (pred & truth).sum() / max(1, truth.sum()) + (~pred & ~truth).sum() / max(1, (~truth).sum()) - 1
        if j > best:
            best, best_t = j, float(t)
    return best_t


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    recalls = [float((predicted[truth == c] == c).mean()) for c in range(classes) if (truth == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def expected_calibration_error(truth: np.ndarray, probability: np.ndarray, bins: int = 10) -> dict:
    """ECE over equal-width bins, and the bins themselves for a reliability plot."""
    truth = np.asarray(truth).astype(float)
    p = np.asarray(probability, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, acc = float(p[sel].mean()), float(truth[sel].mean())
            ece += sel.mean() * abs(conf - acc)
            rows.append({"bin": b, "count": int(sel.sum()), "confidence": round(conf, 4),
                         "observed": round(acc, 4)})
    return {"ece": round(float(ece), 4), "bins": rows}


def roc_curve(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth).astype(bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    t = truth[order]
    tpr = np.concatenate([[0], np.cumsum(t) / max(1, t.sum())])
    fpr = np.concatenate([[0], np.cumsum(~t) / max(1, (~t).sum())])
    return fpr, tpr
