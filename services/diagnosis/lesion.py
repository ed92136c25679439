"""Where the lesion is, so map numbers can say how much attention falls on it.

Dermoscopic lesions are darker than the skin around them, so Otsu's threshold on a smoothed
grey image separates them well enough to split attention into inside / outside. It is
batched in torch because it runs on every analysed image next to the network. Images with
no clear split (threshold leaves under 2% or over 95% of the image) fall back to a centred
disc covering half the image, the framing dermoscopy enforces; the method used is reported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def otsu_thresholds(grey: Tensor, bins: int = 64) -> Tensor:
    """Per-image Otsu threshold for a (B, N) tensor of values in [0, 1]."""
    b = grey.shape[0]
    idx = (grey * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(b, bins, device=grey.device).scatter_add_(1, idx, torch.ones_like(grey))
    p = hist / hist.sum(dim=1, keepdim=True)
    levels = torch.arange(bins, device=grey.device, dtype=grey.dtype) / (bins - 1)
    w0 = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-9)
    return levels[between.argmax(dim=1)]


def lesion_masks(rgb01: Tensor, work_size: int = 64) -> tuple[Tensor, list[str]]:
    """(B, 3, S, S) in [0, 1] -> (B, S, S) bool masks and the method used for each."""
    b, _, s, _ = rgb01.shape
    small = F.interpolate(rgb01, size=(work_size, work_size), mode="area")
    grey = (0.299 * small[:, 0] + 0.587 * small[:, 1] + 0.114 * small[:, 2])
    grey = F.avg_pool2d(grey.unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False).squeeze(1)
    flat = grey.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-6)
    thr = otsu_thresholds(scaled)
    mask = (scaled <= thr[:, None]).view(b, 1, work_size, work_size).float()
    mask = F.interpolate(mask, size=(s, s), mode="nearest").squeeze(1) > 0.5
    share = mask.flatten(1).float().mean(1)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disc = ((yy - (s - 1) / 2) ** 2 + (xx - (s - 1) / 2) ** 2) <= (s * 0.4) ** 2
    methods = []
    for i in range(b):
        if 0.02 <= share[i] <= 0.95:
            methods.append("otsu")
        else:
            mask[i] = disc
            methods.append("centre_disc")
    return mask, methods


def lesion_cells(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, S, S) lesion masks -> (B, 1, h, w): the share of each cell of an h x w grid (the
    network's map) that lies on the lesion, for pooling the map over the lesion."""
    return F.adaptive_avg_pool2d(mask.float().unsqueeze(1), size)
