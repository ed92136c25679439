"""Evaluating a model on freshly generated synthetic cases: diagnosis, patterns, rule, maps.

Explanation alignment follows SCIENCE.md s.4. For every image and every pattern truly
present, the normalised Grad-CAM map of that pattern's target is compared with the
pattern's ground-truth mask SA (the whole image is DA), with the measures defined in
``diagnosis/metrics.py`` (mean inside/outside, pointing game, relevance mass and rank,
density overlap), averaged over maps.

bcc_map_lesion_share         for true BCCs, the share of the BCC target's map mass that lies on
                             the lesion (about 0.35 means no focus: the lesion's share of the image)
"""

from __future__ import annotations

import numpy as np
import torch

from ..diagnosis.engine import Engine
from ..diagnosis.metrics import alignment, f1, region_stats
from ..diagnosis.patterns import PATTERNS, rule_says_bcc
from ..diagnosis.preprocess import to_unit
from .synthetic import generate


def evaluate(engine: Engine, n: int, seed: int, batch: int = 32) -> dict:
    size = engine.input_size
    data = generate(n, seed, size)
    probs, per_map, per_map_code, bcc_share = [], {}, [], []
    for i in range(0, n, batch):
        x = to_unit(data.images[i:i + batch])
        out = engine.explain_tensors(x)
        probs.append(out.probabilities.cpu())
        bcc_maps = out.normalised.cpu()[:, 0].flatten(1)
        lesion = torch.from_numpy(data.lesion_masks[i:i + batch]).flatten(1)
        share = region_stats(bcc_maps, lesion)["relevance_mass"]
        bcc_share.append(share[torch.from_numpy(data.bcc[i:i + batch])])
        present = torch.from_numpy(data.patterns[i:i + batch]).bool()
        img_idx, pat_idx = present.nonzero(as_tuple=True)
        if len(img_idx):
            maps = out.normalised.cpu()[img_idx, 1 + pat_idx]
            masks = torch.from_numpy(data.pattern_masks[i:i + batch])[img_idx, pat_idx]
            for key, value in alignment(maps, masks).items():
                per_map.setdefault(key, []).append(value)
            per_map_code += [PATTERNS[j] for j in pat_idx.tolist()]
    p = torch.cat(probs).numpy()
    thresholds = engine.thresholds
    pred_bcc = p[:, 0] >= engine.card.bcc_threshold
    truth = data.bcc
    pred_pat = np.stack([p[:, 1 + j] >= thresholds[c] for j, c in enumerate(PATTERNS)], 1)
    rule = np.array([rule_says_bcc({c for c, v in zip(PATTERNS, row) if v}) for row in pred_pat])
    supporting = pred_pat[:, 1:].any(1)
    tp = float(np.sum(pred_bcc & truth))
    result = {
        "n": n, "seed": seed,
        "model": engine.model_info,
        "bcc": {
            "accuracy": round(float(np.mean(pred_bcc == truth)), 4),
            "precision": round(tp / max(1.0, float(pred_bcc.sum())), 4),
            "recall": round(tp / max(1.0, float(truth.sum())), 4),
            "specificity": round(float(np.sum(~pred_bcc & ~truth)) / max(1.0, float((~truth).sum())), 4),
        },
        "patterns": {c: {"f1": round(f1(data.patterns[:, j], pred_pat[:, j]), 4),
                         "support": int(data.patterns[:, j].sum()),
                         "threshold": thresholds[c]}
                     for j, c in enumerate(PATTERNS)},
        "clinical_rule": {
            "head_rule_agreement": round(float(np.mean(rule == pred_bcc)), 4),
            "rule_accuracy": round(float(np.mean(rule == truth)), 4),
            "bcc_pattern_found_in_bcc": round(float(supporting[truth].mean()) if truth.any() else 0.0, 4),
            "pn_exclusion_in_non_bcc": round(float((~rule[~truth]).mean()) if (~truth).any() else 0.0, 4),
        },
        # Share of the BCC map's mass on the (true) lesion, over true BCCs: does the BCC
        # explanation point at the lesion rather than the skin around it?
        "bcc_map_lesion_share": round(float(torch.cat(bcc_share).mean()), 4) if truth.any() else None,
    }
    if per_map:
        stats = {k: torch.cat(v) for k, v in per_map.items()}
        codes = np.array(per_map_code)
        result["gradcam_alignment"] = {
            **{k: round(float(v.mean()), 4) for k, v in stats.items()},
            "maps": len(codes),
            "per_pattern": {c: {k: round(float(v[torch.from_numpy(codes == c)].mean()), 4)
                                for k, v in stats.items() if k in ("mean_inside", "mean_outside", "pointing_game")}
                            for c in PATTERNS if (codes == c).any()},
        }
    return result


# --- real images -------------------------------------------------------------------------------
def evaluate_dataset(engine: Engine, samples, batch: int = 32, plots_dir=None, seed: int = 0,
                     progress=None) -> dict:
    """Figures on a labelled image folder (``datasets.load_dataset``), as the engine serves:
    AUC with a 95% bootstrap interval per target, sensitivity/specificity at the card's
    operating points, balanced accuracy over the diagnoses, calibration (ECE, reliability
    bins), and how much of each map lies on the lesion (Otsu segmentation, map_numbers)."""
    from ..diagnosis.metrics import (auc_with_ci, balanced_accuracy, expected_calibration_error,
                                     sensitivity_specificity)
    card = engine.card
    rows = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        results = engine.analyse([s.path.read_bytes() for s in chunk])
        rows += list(zip(chunk, results))
        if progress:
            progress(len(chunk))
    out: dict = {"images": len(rows), "model": engine.model_info,
                 "validation": card.validation or {"all": "synthetic demo: not validated on real images"},
                 "targets": {}}
    curves = {}

    def binary(name: str, truth, prob, threshold):
        truth, prob = np.asarray(truth), np.asarray(prob)
        if len(truth) == 0:
            return
        entry = auc_with_ci(truth, prob, seed=seed)
        if threshold is not None:
            entry.update(threshold=threshold, **sensitivity_specificity(truth, prob >= threshold))
        cal = expected_calibration_error(truth, prob)
        entry.update(ece=cal["ece"], reliability=cal["bins"])
        out["targets"][name] = entry
        curves[name] = (truth, prob)

    labelled = [(s, r) for s, r in rows if s.bcc is not None]
    binary("BCC", [s.bcc for s, _ in labelled], [r.bcc_probability for _, r in labelled],
           card.bcc_threshold)
    for code in PATTERNS:      # every pattern the folder labels (Derm7pt: PN, AT; exports: any)
        labelled = [(s, r) for s, r in rows if getattr(s, code) is not None]
        if not labelled:
            continue
        binary(code, [getattr(s, code) for s, _ in labelled],
               [r.pattern_probabilities[code] for _, r in labelled], card.thresholds[code])
    with_dx = [(s, r) for s, r in rows if s.dx and r.diagnosis_probabilities]
    if with_dx and card.diagnoses:
        classes = list(card.diagnoses)
        truth = np.array([classes.index(s.dx) for s, _ in with_dx])
        prob = np.array([[r.diagnosis_probabilities[c] for c in classes] for _, r in with_dx])
        for k, c in enumerate(classes):
            if (truth == k).any() and (truth != k).any():
                binary(f"dx:{c}", truth == k, prob[:, k], card.operating_points.get(c))
        # The card's training class frequencies give the balanced decision (see validation.assess).
        prior = (card.metrics.get("out_of_fold") or {}).get("class_prior")
        decision = prob / np.maximum([prior[c] for c in classes], 1e-6) if prior else prob
        out["balanced_accuracy"] = round(balanced_accuracy(truth, decision.argmax(1), len(classes)), 4)
        out["diagnosis_classes_present"] = sorted({classes[k] for k in set(truth.tolist())})
    collections = sorted({s.collection for s, _ in rows if s.collection})
    if len(collections) > 1:
        out["by_collection"] = {c: by_collection([(s, r) for s, r in rows if s.collection == c], card, seed)
                                for c in collections}
    # Share of each validated target's map mass on the lesion (mean over images).
    shares: dict[str, list[float]] = {"BCC": [], "PN": [], "AT": []}
    for _, r in rows:
        for m in r.maps:
            if m.target in shares:
                shares[m.target].append(m.numbers.lesion_share)
    out["lesion_share"] = {t: round(float(np.mean(v)), 4) for t, v in shares.items()}
    # The scope gate's verdicts: how many of the folder's images it would read at all.
    out["scope_verdicts"] = {v: sum(r.scope is not None and r.scope.verdict == v for _, r in rows)
                             for v in sorted({r.scope.verdict for _, r in rows if r.scope is not None})}
    out["lesion_mask_methods"] = {m: sum(r.lesion_mask_method == m for _, r in rows)
                                  for m in sorted({r.lesion_mask_method for _, r in rows})}
    if plots_dir is not None:
        out["plots"] = write_plots(curves, out["targets"], plots_dir)
    return out


def by_collection(rows, card, seed: int) -> dict:
    """One collection's AUCs (BCC, melanoma, malignant) where it holds both classes: the
    figures that say whether a model travels (``labels.csv``'s ``source`` column, HAM10000's
    sources.csv)."""
    from ..diagnosis.metrics import auc_with_ci
    from ..risk import MALIGNANT
    out: dict = {"images": len(rows)}
    bcc = [(s.bcc, r.bcc_probability) for s, r in rows if s.bcc is not None]
    if bcc and 0 < sum(t for t, _ in bcc) < len(bcc):
        out["BCC"] = auc_with_ci(np.array([t for t, _ in bcc]), np.array([p for _, p in bcc]), seed=seed)
    with_dx = [(s, r) for s, r in rows if s.dx and r.diagnosis_probabilities]
    if with_dx and card.diagnoses:
        for name, classes in (("melanoma", ("mel",)), ("malignant", MALIGNANT)):
            truth = np.array([s.dx in classes for s, _ in with_dx])
            if 0 < truth.sum() < len(truth):
                prob = np.array([sum(r.diagnosis_probabilities[c] for c in classes) for _, r in with_dx])
                out[name] = auc_with_ci(truth, prob, seed=seed)
    return out


def write_plots(curves: dict, targets: dict, folder) -> dict:
    """ROC curves and reliability diagrams as PNG files; returns their paths."""
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..diagnosis.metrics import roc_curve
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def chart(lines, xlabel: str, ylabel: str, title: str, legend: str, path: Path) -> str:
        fig, ax = plt.subplots(figsize=(5, 5))
        for xs, ys, style, label in lines:
            ax.plot(xs, ys, label=label, **style)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.legend(fontsize=7, loc=legend)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return str(path)

    rocs = [(*roc_curve(truth, prob), {}, f"{name} (AUC {targets[name]['auc']})")
            for name, (truth, prob) in curves.items()]
    bins = {name: targets[name]["reliability"] for name in curves}
    reliability = [([b["confidence"] for b in bins[name]], [b["observed"] for b in bins[name]],
                    {"marker": "o"}, f"{name} (ECE {targets[name]['ece']})") for name in curves]
    return {"roc": chart(rocs, "1 - specificity", "sensitivity", "ROC", "lower right",
                         folder / "roc.png"),
            "reliability": chart(reliability, "predicted probability", "observed frequency",
                                 "Reliability", "upper left", folder / "reliability.png")}
