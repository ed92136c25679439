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
