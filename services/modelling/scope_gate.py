"""The scope gate's read-out: trained and validated with whole collections held out.

Positives are the shared dermoscopy (four HAM10000 collections and Derm7pt), negatives the
DermNet clinical photographs, as the engine would see them (the centre square of the photo)
and as close-ups (central and off-centre crops of a half and a third of the side: a GP's
phone close-up frames the lesion more tightly than an atlas photo).

Why whole collections out: a read-out trained on all of it learns the collections (framing,
watermarks, cameras), not the modality: it catches every DermNet photo out of fold and yet
refuses dermoscopy from a clinic it never saw (issue 21 measured 24%). So each fold holds out
one dermoscopy collection AND one part of the clinical photos (whole atlas categories: the
clinical side has one collection, so categories are the coarsest groups it has), every
collection weighs the same in the fit whatever its size, and the threshold is chosen on the
held-out scores: the dermoscopic pass rate on a collection never seen is what it is chosen
for. Figures and thresholds go into the card (``scope``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..diagnosis.network import BCCPatternNet
from ..diagnosis.preprocess import resize_and_crop, to_unit
from ..diagnosis.scope import DERMOSCOPIC, GateThresholds, judge
from ..intake import decode, measure_quality, screen
from .datasets import Sample

CLINICAL_FOLDER = "dermnet-clinical"
# Views of each clinical photo: the served view, then close-ups (side fraction, centre offset
# as a share of the free margin, -1..1).
CLOSE_UPS = ((0.5, (0.0, 0.0)), (0.34, (-0.6, 0.5)))
TARGET_PASS = 0.985         # of held-out dermoscopy the read-out passes, in every collection
L2 = 1e-3                   # on the standardised pooled vector (experiments.md, "Scope gate")
MAX_ITER = 200
TYPICALITY_MARGIN = 1.5     # x the highest typicality of the training images (see scope.py)
OFF_SCOPE_IMAGES = 60       # generated non-skin images the card's figures are measured on


@dataclass(frozen=True)
class ClinicalPhoto:
    path: Path
    label: str        # bcc, mel, nv, ... or the rash's name
    lesion: bool      # group == "lesion"
    category: str     # the atlas category: held out whole


def load_clinical(folder: Path) -> list[ClinicalPhoto]:
    with open(folder / "labels.csv", newline="") as f:
        return [ClinicalPhoto(folder / r["image"], r["label"], r["group"] == "lesion", r["atlas_category"])
                for r in csv.DictReader(f)]


def _spread(photos: list[ClinicalPhoto], limit: int | None) -> list[ClinicalPhoto]:
    """All photos, or ``limit`` of them taken evenly across the (category-sorted) list, so a
    small build still has lesions and rashes."""
    if not limit or limit >= len(photos):
        return photos
    step = len(photos) / limit
    return [photos[int(i * step)] for i in range(limit)]


def clinical_views(img: Image.Image, size: int) -> list[np.ndarray]:
    """The served view (centre square) and the close-ups, each ``size`` px square."""
    out = [np.asarray(resize_and_crop(img, size)[0], np.uint8)]
    for frac, (dx, dy) in CLOSE_UPS:
        side = int(min(img.size) * frac)
        free_x, free_y = img.width - side, img.height - side
        left = int(free_x / 2 * (1 + dx))
        top = int(free_y / 2 * (1 + dy))
        box = (left, top, left + side, top + side)
        out.append(np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box,
                                         reducing_gap=2.0), np.uint8))
    return out


def clinical_features(model: BCCPatternNet, photos: list[ClinicalPhoto], batch: int,
                      progress: Callable[[int], None]) -> tuple[torch.Tensor, list[dict]]:
    """(views, N, C) pooled vectors and, per photo, intake's checks of its served view."""
    size = model.arch.input_size
    views: list[list[torch.Tensor]] = [[] for _ in range(1 + len(CLOSE_UPS))]
    checks, pending = [], []

    def flush():
        for v in range(len(views)):
            x = to_unit(np.stack([p[v] for p in pending])).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                views[v].append(model.pooled(x).float())
        progress(len(pending))
        pending.clear()

    for i, photo in enumerate(photos):
        img, _ = decode(photo.path.read_bytes())
        v = clinical_views(img, size)
        checks.append({"screen": screen(v[0]), "quality": measure_quality(v[0])})
        pending.append(v)
        if len(pending) == batch or i == len(photos) - 1:
            flush()
    return torch.stack([torch.cat(v) for v in views]), checks


def fit_logistic(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, l2: float = L2,
                 max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted binary logistic regression, mean loss + l2 |w|^2, by L-BFGS. The matmul's
    gradient is taken by hand for the reason ``readouts._logistic`` gives."""
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    weight = weight / weight.sum()
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_change=1e-8, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        zw = (z @ w.detach()).requires_grad_()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(zw + b, y, reduction="none")
                * weight).sum()
        loss.backward()
        with torch.no_grad():
            w.grad = zw.grad @ z + 2 * l2 * w
            return loss + l2 * (w * w).sum()
    opt.step(closure)
    return w.detach(), b.detach()


def _balanced(groups: list[str], y: np.ndarray) -> torch.Tensor:
    """Each group (collection) the same total weight within its class; classes equal."""
    out = np.zeros(len(groups))
    for cls in (0, 1):
        members = [g for g, t in zip(groups, y) if t == cls]
        names = sorted(set(members))
        for g in names:
            idx = [i for i, (h, t) in enumerate(zip(groups, y)) if h == g and t == cls]
            out[idx] = 1.0 / (len(names) * len(idx))
    return torch.from_numpy(out).float()


def _interval(k: int, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, k / n, 2000) / n if n else np.zeros(1)
    return [round(float(np.quantile(draws, 0.025)), 4), round(float(np.quantile(draws, 0.975)), 4)]


def _category_parts(photos: list[ClinicalPhoto], k: int, seed: int) -> np.ndarray:
    """Each atlas category in one of k parts, parts of about equal size."""
    rng = np.random.default_rng(seed)
    cats = sorted({p.category for p in photos})
    rng.shuffle(cats)
    sizes = {c: sum(p.category == c for p in photos) for c in cats}
    load = np.zeros(k)
    part = {}
    for c in sorted(cats, key=lambda c: -sizes[c]):
        part[c] = int(load.argmin())
        load[part[c]] += sizes[c]
    return np.array([part[p.category] for p in photos])


@dataclass
class HeldOut:
    """Read-out scores of images held out of the fit that scored them (``held_out``)."""

    dermoscopic: np.ndarray      # (N,) modality logit of each dermoscopic sample
    clinical: np.ndarray         # (views, M) modality logit of each clinical photo's views
    lesion: np.ndarray           # (M,) lesion logit of each clinical photo (served view)
    collections: list[str]       # (N,) the dermoscopic samples' collections


def held_out(zd: torch.Tensor, zc: torch.Tensor, collections: list[str], photos: list[ClinicalPhoto],
             seed: int, progress: Callable[[int], None] = lambda _n: None) -> HeldOut:
    """Fold k holds out dermoscopy collection k and clinical part k (whole atlas categories);
    each is scored by read-outs fitted without it."""
    names = sorted(set(collections))
    parts = _category_parts(photos, len(names), seed)
    lesion = np.array([p.lesion for p in photos])
    n_views = zc.shape[0]
    out = HeldOut(np.zeros(len(collections)), np.zeros((n_views, len(photos))), np.zeros(len(photos)),
                  collections)
    for k, name in enumerate(names):
        d_out = np.array([c == name for c in collections])
        c_out = parts == k
        w, b = fit_logistic(*_design(zd, zc, collections, ~d_out, ~c_out))
        out.dermoscopic[d_out] = (zd[d_out] @ w + b).numpy()
        for v in range(n_views):
            out.clinical[v, c_out] = (zc[v][c_out] @ w + b).numpy()
        lw, lb = _lesion_readout(zc[0][~c_out], lesion[~c_out])
        out.lesion[c_out] = (zc[0][c_out] @ lw + lb).numpy()
        progress(0)
    return out


def _design(zd, zc, collections, derm_rows: np.ndarray, clin_rows: np.ndarray):
    """Rows, targets and weights of one fit: every collection weighs the same in its class."""
    n_views = zc.shape[0]
    x = torch.cat([zd[derm_rows]] + [zc[v][clin_rows] for v in range(n_views)])
    y = np.r_[np.ones(derm_rows.sum()), np.zeros(clin_rows.sum() * n_views)]
    groups = ([collections[i] for i in np.flatnonzero(derm_rows)]
              + ["clinical"] * int(clin_rows.sum()) * n_views)
    return x, torch.from_numpy(y).float(), _balanced(groups, y)


def sample_checks(samples: list[Sample], size: int) -> list[dict]:
    """Intake's checks of each dermoscopic sample as the engine would serve it."""
    out = []
    for s in samples:
        img, _ = decode(s.path.read_bytes())
        rgb = np.asarray(resize_and_crop(img, size)[0], np.uint8)
        out.append({"screen": screen(rgb), "quality": measure_quality(rgb)})
    return out


def build_gate(model: BCCPatternNet, derm: torch.Tensor, samples: list[Sample], clinical_dir: Path,
               batch: int, seed: int, progress: Callable[[int], None] = lambda _n: None,
               limit: int | None = None) -> dict:
    """Fit the gate into ``model.scope_head`` and return the card's ``scope`` section.

    ``derm``: (N, C) pooled vectors of the dermoscopic ``samples`` (the build's view 0)."""
    photos = _spread(load_clinical(clinical_dir), limit)
    clin, checks = clinical_features(model, photos, batch, progress)
    derm_checks = sample_checks(samples, model.arch.input_size)
    zd, zc = model.standardise(derm), model.standardise(clin)
    collections = [s.collection or s.source for s in samples]
    names = sorted(set(collections))
    lesion = np.array([p.lesion for p in photos])
    held = held_out(zd, zc, collections, photos, seed, progress)
    # The threshold: TARGET_PASS of the held-out dermoscopy of every collection passes.
    threshold = float(min(np.quantile(held.dermoscopic[np.array(collections) == n], 1 - TARGET_PASS)
                          for n in names))
    lesion_threshold = _lesion_threshold(held.lesion, lesion)
    # The final read-outs, on everything.
    w, b = fit_logistic(*_design(zd, zc, collections, np.ones(len(samples), bool), np.ones(len(photos), bool)))
    lw, lb = _lesion_readout(zc[0], lesion)
    with torch.no_grad():
        model.scope_head.weight.copy_(torch.stack([w, lw]))
        model.scope_head.bias.copy_(torch.cat([b, lb]))
    typ_d, typ_c = zd.square().mean(1), zc.square().mean(2)
    gate = GateThresholds(dermoscopic=round(threshold, 4), lesion=round(lesion_threshold, 4),
                          typicality=round(float(torch.cat([typ_d, typ_c.flatten()]).max()) * TYPICALITY_MARGIN, 3),
                          dermoscopic_typicality=round(float(typ_d.max()) * TYPICALITY_MARGIN, 3))

    def verdicts(rows_checks, modality, lesion_logits, typicality) -> list[str]:
        return [judge(c["screen"], c["quality"], gate, float(m), float(le), float(t)).verdict
                for c, m, le, t in zip(rows_checks, modality, lesion_logits, typicality)]

    derm_verdicts = np.array(verdicts(derm_checks, held.dermoscopic, np.full(len(samples), 9.0), typ_d))
    figures = {"dermoscopy_passed": {}, "clinical_refused": {}}
    for i, name in enumerate(names):
        v = derm_verdicts[np.array(collections) == name]
        k = int((v == DERMOSCOPIC).sum())
        figures["dermoscopy_passed"][name] = {"n": len(v), "passed": round(k / len(v), 4),
                                              "ci95": _interval(k, len(v), seed + i)}
    k = int((derm_verdicts == DERMOSCOPIC).sum())
    figures["dermoscopy_passed"]["all"] = {"n": len(samples), "passed": round(k / len(samples), 4),
                                           "ci95": _interval(k, len(samples), seed + 9)}
    figures["dermoscopy_verdicts"] = {v: int((derm_verdicts == v).sum()) for v in sorted(set(derm_verdicts))}
    view_names = ["served (centre square)"] + [f"close-up {f:.0%} of the side" for f, _ in CLOSE_UPS]
    served_verdicts = None
    for v, vname in enumerate(view_names):
        # Close-ups are judged with the served view's pixel checks (the crops share its camera).
        said = np.array(verdicts(checks, held.clinical[v], held.lesion, typ_c[v]))
        served_verdicts = said if v == 0 else served_verdicts
        k = int((said != DERMOSCOPIC).sum())
        figures["clinical_refused"][vname] = {"n": len(photos), "refused": round(k / len(photos), 4),
                                              "ci95": _interval(k, len(photos), seed + 10 + v)}
    figures["clinical_verdicts"] = {v: int((served_verdicts == v).sum()) for v in sorted(set(served_verdicts))}
    says_lesion = held.lesion >= lesion_threshold
    figures["lesion_readout"] = {
        "photos_with_a_lesion_called_lesion": round(float(says_lesion[lesion].mean()), 4),
        "photos_without_called_not_a_lesion": round(float((~says_lesion[~lesion]).mean()), 4)}
    off = off_scope_images(OFF_SCOPE_IMAGES, seed + 99, model.arch.input_size)
    figures["off_scope_refused"] = _off_scope(model, gate, off)
    return {
        "thresholds": asdict(gate),
        "figures": figures,
        "validation": (f"{len(names)} folds, each holding out one dermoscopy collection "
                       f"({', '.join(names)}) and whole DermNet atlas categories; collections weighted "
                       f"equally; threshold: {TARGET_PASS:.0%} of every held-out collection's dermoscopy "
                       "passes the read-out; figures are the whole gate's verdicts (intake's checks, "
                       "typicality, read-out) on held-out scores; 95% binomial bootstrap intervals"),
        "training_data": {"dermoscopic": f"{len(samples)} images ({', '.join(names)})",
                          "clinical": f"DermNet clinical photographs ({len(photos)}: "
                                      f"{int(lesion.sum())} lesions, {int((~lesion).sum())} not a lesion), "
                                      f"{clin.shape[0]} views each (served, close-ups)"},
        "limits": "the clinical side is one collection (DermNet): how often another clinic's "
                  "phone photos are refused is not measured here; the generated non-skin images "
                  "are drawn by the build, not collected",
    }


def _off_scope(model: BCCPatternNet, gate: GateThresholds, images: list[tuple[str, np.ndarray]]) -> dict:
    """The whole gate (final read-out) on generated non-skin images: share refused per kind."""
    x = to_unit(np.stack([rgb for _, rgb in images])).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits, typ = model.scope_readout(model.pooled(x))
    out: dict[str, list[bool]] = {}
    for (kind, rgb), lg, t in zip(images, logits, typ):
        v = judge(screen(rgb), measure_quality(rgb), gate, float(lg[0]), float(lg[1]), float(t))
        out.setdefault(kind, []).append(v.verdict != DERMOSCOPIC)
    return {k: {"n": len(v), "refused": round(float(np.mean(v)), 4)} for k, v in out.items()}


def _lesion_readout(z: torch.Tensor, lesion: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.from_numpy(lesion.astype(np.float32))
    weight = torch.where(y > 0, 1.0 / max(lesion.sum(), 1), 1.0 / max((~lesion).sum(), 1))
    w, b = fit_logistic(z, y, weight)
    return w, b


def _lesion_threshold(scores: np.ndarray, lesion: np.ndarray) -> float:
    """The balanced-accuracy-optimal cut of the held-out lesion read-out."""
    best, cut = -1.0, 0.0
    for t in np.unique(scores):
        ba = 0.5 * ((scores[lesion] >= t).mean() + (scores[~lesion] < t).mean())
        if ba > best:
            best, cut = ba, float(t)
    return cut if math.isfinite(cut) else 0.0


def off_scope_images(n: int, seed: int, size: int = 224) -> list[tuple[str, np.ndarray]]:
    """Generated images that are not skin, for the card's figures and the tests: plain fills
    (skin tones among them), gradients, line drawings, document and interface screenshots,
    and noise. Never trained on."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    skin_tones = [(224, 172, 150), (198, 134, 110), (141, 85, 36), (255, 219, 172), (90, 56, 37)]
    out = []
    for i in range(n):
        kind = ("plain", "gradient", "drawing", "document", "interface", "noise")[i % 6]
        if kind == "plain":
            colour = (skin_tones[i // 6 % len(skin_tones)] if i % 12 < 6
                      else tuple(int(c) for c in rng.integers(0, 256, 3)))
            img = Image.new("RGB", (size, size), colour)
        elif kind == "gradient":
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, size)[:, None, None]
            img = Image.fromarray(np.broadcast_to(a + (b - a) * t, (size, size, 3)).astype(np.uint8))
        elif kind == "drawing":
            img = Image.new("RGB", (size, size), (255, 255, 255))
            d = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(3, 12))):
                x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
                colour = tuple(int(c) for c in rng.integers(0, 200, 3))
                shape = rng.integers(0, 3)
                box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
                if shape == 0:
                    d.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 5)))
                elif shape == 1:
                    d.ellipse(box, outline=colour, width=2, fill=None if rng.random() < 0.5 else colour)
                else:
                    d.rectangle(box, outline=colour, width=2)
        elif kind == "document":
            img = Image.new("RGB", (size, size), (250, 250, 247))
            d = ImageDraw.Draw(img)
            for row in range(8, size - 8, 14):
                d.text((8, row), "".join(chr(int(c)) for c in rng.integers(97, 123, 30)), fill=(20, 20, 20))
        elif kind == "interface":
            img = Image.new("RGB", (size, size), (236, 239, 244))
            d = ImageDraw.Draw(img)
            d.rectangle((0, 0, size, 28), fill=(33, 90, 160))
            for row in range(40, size - 20, 36):
                d.rounded_rectangle((12, row, size - 12, row + 26), 6, fill=(255, 255, 255), outline=(200, 200, 210))
                d.text((20, row + 8), f"Item {row}", fill=(40, 40, 40))
        else:
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        out.append((kind, np.asarray(img, np.uint8)))
    return out
