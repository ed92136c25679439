"""Numbers for each Grad-CAM map, so a clinician reads figures, not only colours.

numGrad-CAM (Marmolejo-Saucedo & Kose 2022) adds numerical feedback to Grad-CAM but its
formulas are not published; these are ours. All positions are fractions of the analysed
(square, centred) crop, x to the right and y downwards, so they can be drawn on the image.

peak            highest value of the map before normalisation (absolute strength: a peak of
                0.01 with a 0.99 normalised map is a weak signal; compare across images of
                the same model version only).
peak_x, peak_y  where that peak is.
lesion_share    share of all positive map mass that lies on the lesion (0-1). Near 1: the
                model looked at the lesion; low: it looked at skin, hair or the frame.
mean_in_lesion, mean_out_lesion
                mean normalised value on and off the lesion (SCIENCE.md s.4 compares such
                means against expert regions: 0.57 inside vs 0.16 outside).
hot_area        share of the image where the normalised map is at least ``HOT_LEVEL``: how
                focused the explanation is (small = a precise spot, large = diffuse).
hot_area_in_lesion
                share of that hot area that is on the lesion.
score           the summary: target probability x lesion_share. High only when the model
                believes the finding AND grounds it on the lesion; a high probability with
                a low score means "look again, the evidence sits off the lesion".
"""

from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
from torch import Tensor

from .metrics import region_stats

HOT_LEVEL = 0.5


@dataclass(frozen=True)
class MapNumbers:
    peak: float
    peak_x: float
    peak_y: float
    lesion_share: float
    mean_in_lesion: float
    mean_out_lesion: float
    hot_area: float
    hot_area_in_lesion: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def map_numbers(normalised: Tensor, peak_raw: Tensor, probabilities: Tensor,
                lesion: Tensor) -> Tensor:
    """Batched numbers: (B,T,S,S) maps, (B,T) peaks and probabilities, (B,S,S) lesion masks.

    Returns a (B, T, 9) tensor in ``MapNumbers`` field order; ``as_records`` makes objects.
    """
    b, t, s, _ = normalised.shape
    flat = normalised.flatten(2)                         # (B,T,N)
    les = lesion.flatten(1).float()[:, None, :]         # (B,1,N)
    on_lesion = region_stats(flat, les)
    lesion_share = on_lesion["relevance_mass"]
    arg = flat.argmax(-1)
    peak_x = ((arg % s).float() + 0.5) / s
    peak_y = ((arg // s).float() + 0.5) / s
    hot = (flat >= HOT_LEVEL).float()
    hot_n = hot.sum(-1)
    hot_in = torch.where(hot_n > 0, (hot * les).sum(-1) / hot_n.clamp_min(1.0), torch.zeros_like(hot_n))
    out = torch.stack([
        peak_raw.float(), peak_x, peak_y, lesion_share,
        on_lesion["mean_inside"], on_lesion["mean_outside"],
        hot_n / (s * s), hot_in, probabilities.float() * lesion_share,
    ], dim=-1)
    return out


def as_records(numbers: Tensor) -> list[list[MapNumbers]]:
    rows = numbers.tolist()
    return [[MapNumbers(*(round(v, 4) for v in target)) for target in image] for image in rows]
