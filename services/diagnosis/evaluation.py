"""Evaluating a model on freshly generated synthetic cases: diagnosis, patterns, rule, maps.

Explanation alignment follows SCIENCE.md s.4. For every image and every pattern truly
present, the normalised Grad-CAM map of that pattern's target is compared with the
pattern's ground-truth mask SA (the whole image is DA):

mean_inside / mean_outside   mean normalised value on SA and off it (paper: 0.57 / 0.16)
pointing_game                share of maps whose maximum falls in SA
relevance_mass               sum of the map over SA / sum over the image
relevance_rank               share of the |SA| highest-valued pixels that lie in SA
density_overlap              overlap of the histograms of z on SA and on DA (1 = the map does
                             not distinguish the region at all)

bcc_map_lesion_share         for true BCCs, the share of the BCC target's map mass that lies on
                             the lesion (about 0.35 means no focus: the lesion's share of the image)
"""

from __future__ import annotations

import numpy as np
import torch

from .engine import Engine
from .patterns import PATTERNS, rule_says_bcc
from .preprocess import normalise_batch
from .synthetic import generate
from .training import f1


def alignment(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-map alignment figures for (M, S, S) maps in [0, 1] and (M, S, S) bool masks."""
    flat = maps.flatten(1).float()
    m = masks.flatten(1).float()
    n_in = m.sum(1).clamp_min(1)
    n_out = (1 - m).sum(1).clamp_min(1)
    inside = (flat * m).sum(1) / n_in
    outside = (flat * (1 - m)).sum(1) / n_out
    pointing = m.gather(1, flat.argmax(1, keepdim=True)).squeeze(1)
    mass = (flat * m).sum(1) / flat.sum(1).clamp_min(1e-12)
    order = flat.argsort(1, descending=True)
    ranked_in = m.gather(1, order)
    k = m.sum(1).long()
    positions = torch.arange(flat.shape[1])[None, :]
    rank = (ranked_in * (positions < k[:, None])).sum(1) / n_in
    bins = 20
    hist_in = torch.stack([torch.histc(f[mm > 0], bins, 0, 1) for f, mm in zip(flat, m)])
    hist_all = torch.stack([torch.histc(f, bins, 0, 1) for f in flat])
    overlap = torch.minimum(hist_in / hist_in.sum(1, keepdim=True).clamp_min(1),
                            hist_all / hist_all.sum(1, keepdim=True)).sum(1)
    return {"mean_inside": inside, "mean_outside": outside, "pointing_game": pointing,
            "relevance_mass": mass, "relevance_rank": rank, "density_overlap": overlap}


def evaluate(engine: Engine, n: int, seed: int, batch: int = 32) -> dict:
    size = engine.input_size
    data = generate(n, seed, size)
    probs, per_map, per_map_code, bcc_share = [], {}, [], []
    for i in range(0, n, batch):
        x = normalise_batch(data.images[i:i + batch])
        out = engine.explain_tensors(x)
        probs.append(out.probabilities.cpu())
        bcc_maps = out.normalised.cpu()[:, 0].flatten(1)
        lesion = torch.from_numpy(data.lesion_masks[i:i + batch]).flatten(1).float()
        share = (bcc_maps * lesion).sum(1) / bcc_maps.sum(1).clamp_min(1e-12)
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
