"""Training the real-image model on a 2-core CPU: ImageNet features, cached views, heads.

Recipe (SCIENCE.md s.1 where it fits, measured where it does not):
- Backbone: Keras's ImageNet MobileNet-V2 (the shared TFLite file, ``imagenet.py``).
  The heads read a hypercolumn (``network.py``): blocks 3-18 pooled to the 7x7 grid, with
  their squares. Measured with 5-fold CV on HAM10000 (logistic probe, one view): the last
  layer alone gives BCC AUC 0.933 / melanoma 0.829 / balanced accuracy 0.55; blocks 13-18
  0.958 / 0.875 / 0.59; blocks 3-18 0.967 / 0.895 / 0.64.
- Pooling (``centre=3``): the BCC and diagnosis heads read the map's global mean and the
  mean of its central 3x3 window (dermoscopy centres the lesion: the window is the lesion
  with less surrounding skin); the pattern heads read the global mean alone. Measured on
  the build's folds and views (2026-12-04, diagnoses head; BA = balanced accuracy):
  global mean 0.673, + central 3x3 0.685 (melanoma 0.901 -> 0.908, BCC 0.961 -> 0.971),
  + central 5x5 instead 0.676, + both 0.682, central 3x3 alone 0.674, max instead of mean
  0.647, signed square root of the mean 0.669. PN and AT lose with the window (0.871 ->
  0.864, 0.930 -> 0.924), hence global only for them. Balance-tuned class offsets chosen
  on the other folds' predictions lose to the calibrated p/prior rule (0.665 vs 0.673).
- Lesion pooling (``lesion=True``): the BCC and diagnosis heads also read the map's mean
  weighted by the lesion's share of each map cell, from the engine's own Otsu mask of the
  image (``lesion.py``; a centred disc where Otsu finds no clear split), so the lesion is
  found rather than assumed at the centre. Measured on the build's views, diagnoses head
  (2026-12-04): folds of seed 0 global + centre 0.685 -> + lesion 0.697 (BCC 0.971 ->
  0.971, melanoma 0.908 -> 0.907); folds of seed 1 0.6925 -> 0.703 (BCC 0.972 -> 0.971,
  melanoma 0.907 -> 0.907). Global + lesion instead of the centre 0.686 (BCC 0.967), with
  the mean outside the lesion as a fourth part 0.690, L2 0.2 instead of 0.1 0.694 (0.05:
  0.6945), inverse-frequency class weights to the power 0.5 instead of 1 0.695. It became
  the default once the folds' read-outs were one solve (below): alone, its wider read-out
  took the build to 861-908 s where the build without it took 645-758 s.
- Stages: the seed's stage 2 is here (``finetune_from=14``, ``--finetune-from 14``) but the
  build leaves it out. Stage 1 fits the heads on the frozen features (exactly, below; 100
  L-BFGS iterations when stage 2 follows, as stage 2 moves those heads anyway); stage 2
  trains blocks 14-18 with the BCC and diagnosis heads, AdamW at 1e-4, one-cycle schedule,
  2 epochs, on cached block-13 activations of every view (blocks 14-18 are a third of the
  network's compute: ~60 s per fold on 2 cores); stage 3 refits the pattern heads exactly on
  the tuned features (PN and AT have 687 labelled images, too few to steer the blocks; the
  synthetic drawings must not). The backbone stays in eval mode: the TFLite reader folds
  BatchNorm into the convolutions and leaves identity BatchNorm layers, which train mode
  would turn into batch normalisation; an earlier trial of this stage did that and looked
  useless (0.93 / 0.86 on the last layer alone). Measured before the centre window, 5 folds,
  seed 0, 2026-12-04:
  BCC 0.966 (frozen 0.961), melanoma 0.898 (0.901), balanced accuracy 0.678 (0.673), PN 0.866
  (0.871), AT 0.898 (0.930), in 1048 s instead of 578. Fold 0 alone had promised 0.705:
  a lesson in per-fold noise. Also on fold 0: 1 epoch gains nothing, a rate of 3e-4 less
  than 1e-4. PN and AT fall under their floors and the build under its 15 minutes does not
  fit, so the build stays frozen; on a GPU, with image-space augmentation instead of two
  cached views, this stage is where the diagnoses should gain: ``--device cuda``
  (``image_finetune.py``, ``out_of_fold_images``) fine-tunes the blocks from ``image_from``
  (0: all) on freshly augmented images at every step. It has run only on the CPU, on a tiny
  subset, in the tests: no GPU was lent to measure it, so it has no figures yet.
- Heads: one linear read-out each (``hidden=()``), fitted exactly: an L2-regularised
  logistic (softmax for the 7 diagnoses) minimised with L-BFGS on the cached vectors. The
  BCC and diagnosis read-outs of the 5 folds and of all images are one L-BFGS solve
  (``fit_readouts``): on 2 cores each fit was bound by passes over the (views * N, C) matrix,
  which the sets can share; with the lesion pooling 229 s for the 5 folds against ~100 s
  per fold fitted alone (balanced accuracy 0.6958, against 0.697 fitted alone). L2
  strengths were chosen per head on a small grid on the same folds (BCC and the diagnoses
  0.01-1: 0.1; PN and AT 0.001-3: 1.0), a small optimistic bias in the figures. Measured
  out of fold (frozen backbone) against the seed's AdamW heads with dropout 0.3
  (``solver="adamw"``, stages 1 and 3, no stage 2): BCC 0.961 vs 0.952, melanoma 0.901 vs
  0.883, PN 0.871 vs 0.846, AT 0.930 vs 0.855, balanced accuracy 0.673 vs 0.651. A shared
  minibatch loop sees Derm7pt's 687 images (PN, AT) a few times per epoch among 13,000 rows
  and stops far from each head's optimum. On the frozen features a read-out with more
  capacity does not help: a 512-unit hidden layer (AdamW, dropout 0.5) 0.660, a 64-unit one
  fitted exactly 0.673, 4 views instead of 2 0.674, and (README) squares on each block's own
  grid, age/sex/site, mirror averaging, 288 px, Shades-of-Grey colour constancy (0.657) or
  per-block weighting of the L2 penalty (0.60-0.65) no better. The seed's three-layer
  classifier costs ~8 minutes per fold here.
- Views: ``views`` versions of every image go through the frozen backbone once and their
  pooled vectors are cached; heads train on the cache. View 0 is the image as served; the
  others (``augmentation="dihedral"``) are one of the square's 7 other symmetries (rotations
  by quarter turns, flips, transposes), drawn per (seed, image, view). The seed's image-space
  augmentation (rotation by any angle, flips, Gaussian blur, perspective, colour;
  ``augmentation="full"``) is the other choice. Measured out of fold, 2026-12-05 (seed-0
  folds; BA / melanoma / BCC): the seed's view 0.697 / 0.907 / 0.971; a random symmetry
  0.702 / 0.912 / 0.973; a quarter turn for every image 0.708 (0.716 with the invariance
  below; no orientation is special, and the gap to the random symmetry is within the folds'
  noise); a random symmetry plus the seed's colour jitter 0.693; the seed's view without
  colour 0.696. On a frozen backbone a
  cached view is one fixed sample, not fresh augmentation at every step: colour (a cue
  between naevus, melanoma and keratosis) and resampling blur move it off the image, while a
  symmetry shows the same lesion as the camera could have.
- Invariance (``invariance=0.1``): every exact read-out also pays, per image, the squared
  distance between its logits in view 0 and in the other views (``_disagreement``), a
  Tikhonov penalty along what changes between an image's views. With the symmetric views:
  BA 0.702 -> 0.7105, melanoma 0.912 -> 0.918, BCC 0.973 -> 0.976, PN 0.879 -> 0.884, AT
  0.908 -> 0.935; with the seed's views 0.697 -> 0.699. The weight was chosen on the seed-0
  folds (0.01-1 with the seed's views: 0.1; with symmetric views 0.05 gives 0.7095 and 1.0
  lifts PN/AT to 0.885/0.942), a small optimistic bias. On the folds of seeds 1 and 2 the
  build before this (the seed's views, no invariance) gives 0.700 and 0.690, this recipe
  0.712 and 0.709. Averaging the served image's logits with its quarter turn and mirror
  image at test time added 0.01-0.02 in the probes, at 3 backbone passes per image in the
  worker and in the build (every image's extra views for its fold's figures): not taken.
- Multi-task on one backbone: BCC (sigmoid), the 7 HAM10000 diagnoses (softmax), PN and AT
  from Derm7pt's expert labels. UL, BO, MG, ML, SW have no real labels: their heads learn
  from ``synthetic`` drawn images (the demo generator) and are marked "not validated on real
  images" in the card; the explanation never uses them as evidence.
- Class imbalance: ``loss="weighted"`` (inverse-frequency class weights, positive weights)
  or ``"focal"`` (gamma 2); the README gives both sets of figures.
- Reported figures: stratified k-fold grouped by lesion, out of fold, on view 0 (the
  unaugmented image, as served). Temperatures (calibration) and operating thresholds are
  chosen on those out-of-fold predictions (Platt scaling per output); the served model is
  then trained on everything.

Everything depends only on the seed: augmentation, fold assignment, initialisation and batch
order use their own seeded generators, and torch runs deterministic single-process kernels.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

from .. import config
from ..diagnosis import artifact
from ..diagnosis.metrics import (auc_with_ci, balanced_accuracy, expected_calibration_error,
                                 sensitivity_specificity, threshold_for_sensitivity,
                                 youden_threshold)
from ..diagnosis.network import Architecture, BCCPatternNet, _out_channels
from ..diagnosis.patterns import PATTERNS
from ..diagnosis.preprocess import PREPROCESSING_VERSION, decode, resize_and_crop, to_unit
from ..errors import ValidationError
from . import reproducible
from .datasets import DIAGNOSES, Sample, load_dataset, load_derm7pt, load_ham10000
from .imagenet import IMAGENET_ARCH, SHARED_FILE, read_tflite

MODEL_NAME = "dermatriage-real"
MODEL_VERSION = "2.3.0"
VALIDATED = "validated on real images"
NOT_VALIDATED = "not validated on real images"
INTENDED_USE = (
    "Research and evaluation of teledermatology triage: ranks referrals and explains its "
    "reading to a clinician. Not a medical device and not for diagnosis: every case is read "
    "by a dermatologist. Trained on public dermoscopic data sets (HAM10000, Derm7pt), so "
    "performance on other cameras, populations and skin types is unknown.")


@dataclass(frozen=True)
class RealTrainConfig:
    seed: int = 0
    views: int = 2                   # cached versions of each image: view 0 unaugmented
    # How views 1.. are drawn: "dihedral" (one of the square's 7 other symmetries, lossless)
    # or "full" (the seed's rotation, flips, blur, perspective and colour). See the module
    # notes for why the build uses the first.
    augmentation: str = "dihedral"
    # Weight of the views' agreement in the BCC and diagnosis read-outs' objective: the mean
    # squared difference of each image's logits between its views (module notes).
    invariance: float = 0.1
    folds: int = 5
    epochs: int = 8                  # stage 1: heads at lr
    low_epochs: int = 2              # stage 3: heads at low_lr
    batch_size: int = 128
    lr: float = 1e-3
    low_lr: float = 1e-4
    weight_decay: float = 5e-2
    dropout: float = 0.3
    hidden: tuple[int, ...] = ()     # linear read-out (see the module notes)
    solver: str = "exact"            # L-BFGS logistic fits; "adamw": the seed's staged heads
    l2_diagnosis: float = 0.1        # per-head L2 strength of the exact fits (README)
    l2_bcc: float = 0.1
    l2_patterns: float = 1.0
    max_iter: int = 300
    loss: str = "weighted"           # or "focal"
    focal_gamma: float = 2.0
    synthetic: int = 600             # drawn images teaching the 5 unvalidated pattern heads
    # Stage 2: blocks from ``finetune_from`` on (and the heads) fine-tuned at ``finetune_lr`` on
    # cached activations of the block before; 0 (the build) leaves the backbone frozen: on
    # this data stage 2 gains no point and costs 8 minutes (module notes).
    finetune_from: int = 0
    finetune_epochs: int = 2
    finetune_lr: float = 1e-4
    finetune_batch: int = 64
    stage1_iter: int = 100           # L-BFGS iterations of stage 1 when stage 2 follows
    # Stage 2 on images instead (``image_finetune.py``; ``--device cuda``): blocks from
    # ``image_from`` on, fresh image-space augmentation at every step, on ``device``.
    image_finetune: bool = False
    device: str = "cpu"
    image_from: int = 0
    image_epochs: int = 8
    image_lr: float = 1e-4
    image_batch: int = 64
    image_workers: int = 0           # DataLoader processes augmenting images
    taps: tuple[int, ...] = tuple(range(3, 19))
    centre: int = 3                  # the central 3x3 of the 7x7 map read beside its mean
    # Also the map's mean over the lesion (the engine's mask): +0.011 balanced accuracy
    # (module notes); ``--no-lesion`` leaves it out.
    lesion: bool = True
    bcc_sensitivity: float = 0.95    # the BCC operating point
    mel_sensitivity: float = 0.90    # "suspected melanoma" in the referral risk
    akiec_sensitivity: float = 0.80  # "suspected SCC / precancer"
    limit: int | None = None         # first N images of each data set only (tests)
    threads: int = 2
    # Images per forward pass of the extraction. Small on purpose: at 32 the 224-px activations
    # (up to 150 MB) are fresh mmap'd memory on every pass (glibc maps blocks over 32 MB) and
    # page faults took a third of the CPU; 4 keeps them in the heap (2 cores, 2026-12-04:
    # 45-53 images/s at 4, 21-26 at 32, 33-43 at 8, 30 at 1).
    extract_batch: int = 4
    feature_cache: str | None = None  # file to keep extracted features in, reused if it matches
    # More labelled folders (labels.csv layout), e.g. `dermatriage labels export` of the
    # product's own reviewed cases: their pattern labels train and validate those heads.
    extra_datasets: tuple[str, ...] = ()
    min_pattern_labels: int = 10     # real positives and negatives a pattern needs to be validated

    def architecture(self) -> Architecture:
        return replace(IMAGENET_ARCH, diagnoses=DIAGNOSES, taps=self.taps, squares=True,
                       centre=self.centre, lesion=self.lesion, hidden=self.hidden, dropout=self.dropout)


@dataclass
class Features:
    """Cached pooled maps: (views, N, C) for the real images, (M, C) for synthetic ones."""

    real: torch.Tensor
    synthetic: torch.Tensor
    synthetic_patterns: np.ndarray       # (M, 7)
    seconds: float = 0.0
    # Stage 2's input: the output of block ``finetune_from - 1``, half precision,
    # (views, N, C, H, W) and (M, C, H, W); empty when the backbone stays frozen.
    inner: torch.Tensor | None = None
    synthetic_inner: torch.Tensor | None = None
    # With stage 2 and the lesion pooling: the lesion's share of each map cell,
    # (views, N, 1, h, w) and (M, 1, h, w), which the tail's pooling needs again.
    cells: torch.Tensor | None = None
    synthetic_cells: torch.Tensor | None = None


@dataclass
class Labels:
    dx: torch.Tensor          # (N,) class index or -1
    bcc: torch.Tensor         # (N,) 0/1 or -1
    patterns: torch.Tensor    # (N, 7) 0/1 or -1
    labelled: tuple[str, ...] = ("PN", "AT")   # patterns with enough real labels (validated)

    @classmethod
    def of(cls, samples: list[Sample], min_labels: int = 10) -> "Labels":
        dx = torch.tensor([DIAGNOSES.index(s.dx) if s.dx else -1 for s in samples])
        bcc = torch.tensor([-1 if s.bcc is None else s.bcc for s in samples])
        pat = torch.full((len(samples), len(PATTERNS)), -1)
        for i, s in enumerate(samples):
            for j, code in enumerate(PATTERNS):
                value = getattr(s, code)
                if value is not None:
                    pat[i, j] = value
        labelled = tuple(code for j, code in enumerate(PATTERNS)
                         if (pat[:, j] == 1).sum() >= min_labels and (pat[:, j] == 0).sum() >= min_labels)
        for j, code in enumerate(PATTERNS):
            if code not in labelled:
                pat[:, j] = -1      # too few real labels to fit or validate a head on
        return cls(dx, bcc, pat, labelled)

    def subset(self, rows) -> "Labels":
        return Labels(self.dx[rows], self.bcc[rows], self.patterns[rows], self.labelled)


# --- data --------------------------------------------------------------------------------------
def shared_samples(limit: int | None = None) -> list[Sample]:
    root = config.shared_data_dir()
    ham, d7 = root / "ham10000-224", root / "derm7pt"
    if not (ham / "metadata.csv").is_file() or not (d7 / "meta.csv").is_file():
        raise ValidationError(f"real training data not found under {root} (ham10000-224/, derm7pt/)",
                              "data")
    a, b = load_ham10000(ham), load_derm7pt(d7)
    if limit:
        # Keep both classes of every label in a small subset: interleave by diagnosis.
        a = _spread(a, limit)
        b = _spread(b, max(8, limit // 4))
    return a + b


def _spread(samples: list[Sample], n: int) -> list[Sample]:
    by: dict = {}
    for s in samples:
        by.setdefault((s.dx, s.AT), []).append(s)
    out, i = [], 0
    while len(out) < min(n, len(samples)):
        for group in by.values():
            if i < len(group) and len(out) < n:
                out.append(group[i])
        i += 1
    return out


_SYMMETRIES = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
               Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
               Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)


def dihedral(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One of the square's 7 symmetries other than the identity, drawn by ``rng``: a
    dermoscopic image has no up and no left, and these moves lose no pixel (no
    interpolation, no padding, colours untouched)."""
    return img.transpose(_SYMMETRIES[int(rng.integers(len(_SYMMETRIES)))])


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotation, flips, blur, perspective and colour, as dermoscopy varies between shots
    (the seed's augmentation)."""
    size = img.size[0]
    pad = size // 4
    arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    big = Image.fromarray(arr).rotate(float(rng.uniform(0, 360)), Image.Resampling.BILINEAR)
    # Perspective: move each corner of the crop by up to 6% of the side.
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], float) + pad
    moved = corners + rng.uniform(-0.06, 0.06, corners.shape) * size
    img = big.transform((size, size), Image.Transform.PERSPECTIVE,
                        _perspective_coeffs(corners - pad, moved), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5))))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.85, 1.15)))
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.85, 1.15)))
    return img


AUGMENTATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "dihedral": dihedral, "full": augment}


def view_of(img: Image.Image, i: int, view: int, cfg: "RealTrainConfig") -> Image.Image:
    """View ``view`` of image ``i`` as the build caches it: view 0 is the image as served,
    the others ``cfg.augmentation`` drawn from (seed, image, view) alone."""
    if view == 0:
        return img
    return AUGMENTATIONS[cfg.augmentation](img, np.random.default_rng([cfg.seed, i, view]))


def _perspective_coeffs(target: np.ndarray, source: np.ndarray) -> tuple:
    """PIL's 8 coefficients mapping output (target) corners to input (source) corners."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(rows, float), source.reshape(-1))
    return tuple(float(c) for c in coeffs)


def load_image(path: Path, size: int) -> Image.Image:
    img, _ = decode(path.read_bytes())
    return resize_and_crop(img, size)[0]


def extract(model: BCCPatternNet, samples: list[Sample], cfg: RealTrainConfig,
            progress: Callable[[int], None]) -> Features:
    from .synthetic import generate

    started = time.perf_counter()
    size = model.arch.input_size
    model.eval()
    kept: list[torch.Tensor] = []
    kept_cells: list[torch.Tensor] = []
    hook = (model.features[cfg.finetune_from - 1].register_forward_hook(
        lambda _m, _i, out: kept.append(out.half().contiguous())) if cfg.finetune_from else None)

    def pooled(batch) -> torch.Tensor:
        x = to_unit(np.stack(batch)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            features = model.embed(x)
            cells = model.lesion_cells(x, features)
            if hook is not None and cells is not None:
                kept_cells.append(cells)
            return model.pool(features, cells).float()

    def inner() -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if hook is None:
            return None, None
        out, cells = torch.cat(kept), (torch.cat(kept_cells) if kept_cells else None)
        kept.clear()
        kept_cells.clear()
        return out, cells

    views, inners, cells = [], [], []
    for view in range(cfg.views):
        out, batch = [], []
        for i, s in enumerate(samples):
            batch.append(np.asarray(view_of(load_image(s.path, size), i, view, cfg), dtype=np.uint8))
            if len(batch) == cfg.extract_batch or i == len(samples) - 1:
                out.append(pooled(batch))
                progress(len(batch))
                batch = []
        views.append(torch.cat(out))
        kept_inner, kept_cells_of_view = inner()
        inners.append(kept_inner)
        cells.append(kept_cells_of_view)
    synthetic = torch.zeros(0, views[0].shape[1])
    synthetic_inner = synthetic_cells = None
    patterns = np.zeros((0, len(PATTERNS)), np.uint8)
    if cfg.synthetic:
        drawn = generate(cfg.synthetic, cfg.seed + 7, size)
        synthetic = torch.cat([pooled(list(drawn.images[i:i + cfg.extract_batch]))
                               for i in range(0, cfg.synthetic, cfg.extract_batch)])
        synthetic_inner, synthetic_cells = inner()
        patterns = drawn.patterns
        progress(cfg.synthetic)
    if hook is not None:
        hook.remove()
    return Features(torch.stack(views), synthetic, patterns, time.perf_counter() - started,
                    torch.stack(inners) if hook is not None else None, synthetic_inner,
                    torch.stack(cells) if hook is not None and model.arch.lesion else None, synthetic_cells)


def _cache_key(samples: list[Sample], cfg: RealTrainConfig) -> str:
    import hashlib
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}|{s.path.stat().st_size}\n".encode())
    h.update(repr((cfg.seed, cfg.views, cfg.augmentation, cfg.synthetic, cfg.taps, cfg.centre, cfg.lesion, cfg.finetune_from,
                   PREPROCESSING_VERSION)).encode())
    return h.hexdigest()


def _load_cached(path: str | None, key: str) -> Features | None:
    if not path or not Path(path).is_file():
        return None
    stored = torch.load(path, weights_only=True)
    if stored.get("key") != key:
        return None
    return Features(stored["real"], stored["synthetic"], stored["synthetic_patterns"].numpy(),
                    float(stored["seconds"]), stored.get("inner"), stored.get("synthetic_inner"),
                    stored.get("cells"), stored.get("synthetic_cells"))


def _save_cached(path: str | None, key: str, feats: Features) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "real": feats.real, "synthetic": feats.synthetic,
                    "synthetic_patterns": torch.from_numpy(np.asarray(feats.synthetic_patterns)),
                    "seconds": feats.seconds, "inner": feats.inner,
                    "synthetic_inner": feats.synthetic_inner, "cells": feats.cells,
                    "synthetic_cells": feats.synthetic_cells}, path)


# --- folds -------------------------------------------------------------------------------------
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


# --- heads -------------------------------------------------------------------------------------
def _class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels[labels >= 0], minlength=classes).float().clamp_min(1)
    w = counts.sum() / (classes * counts)
    return w / w.mean()


def _focal(logits: torch.Tensor, target: torch.Tensor, gamma: float, weight=None) -> torch.Tensor:
    logp = F.log_softmax(logits, 1)
    pt = logp.gather(1, target[:, None]).squeeze(1).exp()
    ce = F.nll_loss(logp, target, weight=weight, reduction="none")
    return ((1 - pt) ** gamma * ce).mean()


def _binary(logits: torch.Tensor, target: torch.Tensor, cfg: RealTrainConfig, pos_weight) -> torch.Tensor:
    if cfg.loss == "focal":
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pt = p * target + (1 - p) * (1 - target)
        return ((1 - pt) ** cfg.focal_gamma * ce).mean() * 4
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def train_heads(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                synthetic_patterns: np.ndarray, cfg: RealTrainConfig, seed: int,
                max_iter: int | None = None, patterns: bool = True) -> None:
    """Fit the heads on cached pooled vectors: x is (views, N, C) of the training images."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    model.pooled_mean.copy_(flat.mean(0))
    model.pooled_std.copy_(flat.std(0).clamp_min(1e-4))
    if cfg.solver == "adamw":
        _train_heads_adamw(model, x, labels, synthetic, synthetic_patterns, cfg, seed)
    else:
        _fit_heads_exact(model, x, labels, synthetic, synthetic_patterns, cfg, max_iter=max_iter,
                         patterns=patterns)
    model.eval()


def _fit_heads_exact(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                     synthetic_patterns: np.ndarray, cfg: RealTrainConfig, readouts: bool = True,
                     patterns: bool = True, max_iter: int | None = None) -> None:
    """Each head is its own L2-regularised logistic (softmax for the diagnoses) fitted to
    convergence with L-BFGS on the whole training set. Why not the seed's AdamW: a shared
    minibatch loop serves the 687 Derm7pt rows (PN, AT) a few times per epoch among 13,000
    others and stops far from the optimum of each head; the exact fits lift out-of-fold AT
    from 0.86 to 0.93 and PN from 0.84 to 0.87 (README). Deterministic: no sampling."""
    views, n, c = x.shape
    z = model._standardise(x.reshape(views * n, c))
    dx, bcc, pat = labels.dx.repeat(views), labels.bcc.repeat(views), labels.patterns.repeat(views, 1)
    if readouts:
        has = dx >= 0
        w, b = _logistic(z[has], dx[has], cfg.l2_diagnosis, cfg, weight=_class_weights(dx, len(DIAGNOSES)),
                         max_iter=max_iter, views=views)
        _set_linear(model.diagnosis_head, slice(None), w, b)
        has = bcc >= 0
        w, b = _logistic(z[has], bcc[has], cfg.l2_bcc, cfg, pos_weight=_pos_weight(bcc[has]),
                         max_iter=max_iter, views=views)
        _set_linear(model.bcc_head, slice(None), w, b)
    zs = model._standardise(synthetic) if len(synthetic) else None
    # The pattern heads read the global mean only (zero weights on the centre window): with
    # it, PN fell from 0.871 to 0.864 and AT from 0.930 to 0.924 out of fold (687 Derm7pt
    # images are too few for twice the inputs), while BCC rose from 0.961 to 0.971.
    cols = model.map_channels          # the global mean's part of the pooled vector
    for j, code in enumerate(PATTERNS if patterns else ()):
        if code in labels.labelled:
            has = pat[:, j] >= 0
            zj, yj, blocks = z[has], pat[has, j], views
        elif zs is not None:
            # Synthetic drawings teach only the patterns no real label covers.
            zj, yj, blocks = zs, torch.from_numpy(synthetic_patterns[:, j].astype(np.int64)), 1
        else:
            continue
        if len(yj.unique()) < 2:
            continue
        w, b = _logistic(zj[:, :cols], yj, cfg.l2_patterns, cfg, pos_weight=_pos_weight(yj), views=blocks)
        _set_linear(model.pattern_head, slice(j, j + 1), F.pad(w, (0, z.shape[1] - cols)), b)


def _disagreement(per_view: torch.Tensor) -> torch.Tensor:
    """Mean over images of the squared distance between their logits in view 0 and in
    each other view: (views, images, outputs) -> scalar. Added to the read-outs' objective
    with weight ``invariance``, it is a Tikhonov penalty on the weights along directions in
    which the views of one image differ, so the read-outs lean on what an image's
    symmetries leave unchanged (measured gain in the module notes)."""
    return (per_view[1:] - per_view[:1]).square().sum(-1).mean()


def _pos_weight(y: torch.Tensor) -> torch.Tensor:
    return ((y == 0).sum().clamp_min(1) / (y == 1).sum().clamp_min(1)).float()


def _logistic(z: torch.Tensor, y: torch.Tensor, l2: float, cfg: RealTrainConfig, weight=None,
              pos_weight=None, max_iter: int | None = None,
              views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean loss + l2 * |w|^2 (softmax when ``weight`` is given, else binary), plus
    ``cfg.invariance`` times the views' disagreement when z's rows are ``views`` blocks of
    the same images."""
    classes = 1 if weight is None else len(weight)
    w = torch.zeros(z.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter or cfg.max_iter, tolerance_change=1e-7,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # The gradient of z @ w is z.T @ g; autograd computes exactly that product, and
        # on some hosts' BLAS that transposed product with a handful of columns takes a
        # slow path: 660 ms against 40 ms for the same numbers as (g.T @ z).T (2 cores,
        # 10,700 x 5,488 floats, 7 columns). So the matmul's gradient is taken by hand;
        # the loss's own gradient (small) comes from autograd.
        zw = (z @ w.detach()).requires_grad_()
        logits = zw + b
        if classes > 1:
            loss = (_focal(logits, y, cfg.focal_gamma, weight) if cfg.loss == "focal"
                    else F.cross_entropy(logits, y, weight=weight))
        else:
            loss = _binary(logits[:, 0], y.float(), cfg, pos_weight)
        if cfg.invariance and views > 1:
            loss = loss + cfg.invariance * _disagreement(zw.view(views, -1, classes))
        loss.backward()
        with torch.no_grad():
            w.grad = (zw.grad.T @ z).T.contiguous() + 2 * l2 * w
            return loss + l2 * (w * w).sum()
    opt.step(closure)
    return w.detach().T, b.detach()


def _set_linear(head: torch.nn.Sequential, rows: slice, w: torch.Tensor, b: torch.Tensor) -> None:
    linear = [m for m in head if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight[rows] = w
        linear.bias[rows] = b


# --- the BCC and diagnosis read-outs of every fold in one solve --------------------------------
@dataclass
class Readout:
    """A fitted BCC and diagnosis read-out and the standardisation it was fitted in."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor      # (C, 7 + 1): the diagnoses' columns, then BCC's
    bias: torch.Tensor

    def install(self, model: BCCPatternNet) -> None:
        model.pooled_mean.copy_(self.mean)
        model.pooled_std.copy_(self.std)
        k = len(DIAGNOSES)
        _set_linear(model.diagnosis_head, slice(None), self.weight[:, :k].T, self.bias[:k])
        _set_linear(model.bcc_head, slice(None), self.weight[:, k:].T, self.bias[k:])


def _in_every_view(images: torch.Tensor, views: int, n: int) -> torch.Tensor:
    """Rows of ``images`` in the (views * n) stacked views, view by view."""
    return (images[None] + n * torch.arange(views)[:, None]).flatten()


def fit_readouts(x: torch.Tensor, labels: Labels, sets: list[torch.Tensor], cfg: RealTrainConfig,
                 progress: Callable[[int], None] = lambda n: None) -> list[Readout]:
    """The BCC and diagnosis logistics of several training sets (``sets``: (N,) masks over the
    images of x, (views, N, C); the folds and all images) minimised together with L-BFGS.

    Why together: on 2 cores these fits are bound by the two products of the (views * N, C)
    matrix with a few columns per closure, so solving every set in one pass of the matrix
    costs about what one set costs alone (measured, lesion pooling: 229 s for the 5 folds'
    read-outs against 98 s per fold). The objective is the sum of the sets' own objectives,
    which share nothing, so its minimum is each one's minimum. Like the separate fits, the
    solve stops at ``cfg.max_iter`` iterations, which the build's 6 sets use in full: the
    folds' figures moved in the fourth decimal (balanced accuracy 0.697 fitted alone,
    0.6958 for the 5 folds in one solve, 0.6967 with the final set in it too).

    Each set keeps its own standardisation, as ``train_heads`` sets it: with x standardised
    once over all rows (Z), a set's z = (x - m) / s = Z * a + c, where a = s_all / s and
    c = (m_all - m) / s, so its logits are Z @ (a * w) + c @ w + b and the matmul's gradient
    is a * (Z.T @ g): one product of Z for all sets, forwards and backwards. The views'
    disagreement (``cfg.invariance``) is read off the same product: a set's logits differ
    between an image's views only through it."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-4)
    z = (flat - mean) / std
    k, q = len(sets), len(DIAGNOSES) + 1
    dx, bcc = labels.dx.repeat(views), labels.bcc.repeat(views)
    stats, problems = [], []
    for rows in sets:
        r = rows.repeat(views)
        sub = flat[r]
        stats.append((sub.mean(0), sub.std(0).clamp_min(1e-4)))
        del sub
        d_images = torch.nonzero(rows & (labels.dx >= 0))[:, 0]
        b_images = torch.nonzero(rows & (labels.bcc >= 0))[:, 0]
        d_rows, b_rows = _in_every_view(d_images, views, n), _in_every_view(b_images, views, n)
        problems.append((d_rows, dx[d_rows], _class_weights(dx[r], len(DIAGNOSES)),
                         b_rows, bcc[b_rows].float(), _pos_weight(bcc[b_rows]), d_images, b_images))
    scale = torch.stack([std / s for _, s in stats])                 # (k, C): a
    shift = torch.stack([(mean - m) / s for m, s in stats])          # (k, C): c
    w = torch.zeros(k, c, q, requires_grad=True)
    b = torch.zeros(k, q, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=cfg.max_iter, tolerance_change=1e-7, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # As in ``_logistic``, the big products are taken by hand (one each way); autograd
        # only sees the logits and the small terms.
        zv = (z @ (scale[:, :, None] * w.detach()).permute(1, 0, 2).reshape(c, k * q)).requires_grad_()
        logits = zv.view(-1, k, q) + (torch.einsum("kc,kcq->kq", shift, w) + b)[None]
        loss = cfg.l2_diagnosis * w[:, :, :-1].square().sum() + cfg.l2_bcc * w[:, :, -1].square().sum()
        for i, (d_rows, d_y, d_weight, b_rows, b_y, b_pos, d_images, b_images) in enumerate(problems):
            out = logits[d_rows, i, :-1]
            loss = loss + (_focal(out, d_y, cfg.focal_gamma, d_weight) if cfg.loss == "focal"
                           else F.cross_entropy(out, d_y, weight=d_weight))
            loss = loss + _binary(logits[b_rows, i, -1], b_y, cfg, b_pos)
            if cfg.invariance and views > 1:
                # A set's logits differ between views only through zv (its shift and bias
                # are the same for every view of an image). Over the images each read-out
                # is fitted on, as ``_logistic`` does.
                per_view = zv.view(views, n, k, q)
                loss = loss + cfg.invariance * (_disagreement(per_view[:, d_images, i, :-1])
                                                + _disagreement(per_view[:, b_images, i, -1:]))
        loss.backward()
        with torch.no_grad():
            w.grad += scale[:, :, None] * (zv.grad.T @ z).T.reshape(c, k, q).permute(1, 0, 2)
        progress(1)
        return loss
    opt.step(closure)
    return [Readout(m, s, w[i].detach().clone(), b[i].detach().clone()) for i, (m, s) in enumerate(stats)]


def _train_heads_adamw(model: BCCPatternNet, x: torch.Tensor, labels: Labels, synthetic: torch.Tensor,
                synthetic_patterns: np.ndarray, cfg: RealTrainConfig, seed: int) -> None:
    """The seed's stages 1 and 3 (heads at ``lr``, then at ``low_lr``) with AdamW and dropout."""
    views, n, c = x.shape
    flat = x.reshape(views * n, c)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for head in (model.bcc_head, model.pattern_head, model.diagnosis_head):
        for layer in head:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    dx = labels.dx.repeat(views)
    bcc = labels.bcc.repeat(views)
    pat = labels.patterns.repeat(views, 1)
    if len(synthetic):
        flat = torch.cat([flat, synthetic])
        dx = torch.cat([dx, torch.full((len(synthetic),), -1)])
        bcc = torch.cat([bcc, torch.full((len(synthetic),), -1)])
        syn = torch.from_numpy(synthetic_patterns.astype(np.int64))
        # Synthetic images teach only the patterns no real label covers.
        for code in labels.labelled:
            syn[:, PATTERNS.index(code)] = -1
        pat = torch.cat([pat, syn])
    dx_weight = _class_weights(labels.dx, len(DIAGNOSES))
    bcc_pos = (bcc == 0).sum().clamp_min(1) / (bcc == 1).sum().clamp_min(1)
    pat_pos = ((pat == 0).sum(0).clamp_min(1) / (pat == 1).sum(0).clamp_min(1)).float()
    params = [p for h in (model.bcc_head, model.pattern_head, model.diagnosis_head) for p in h.parameters()]
    for lr, epochs in ((cfg.lr, cfg.epochs), (cfg.low_lr, cfg.low_epochs)):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        steps = max(1, math.ceil(len(flat) / cfg.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * epochs)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(flat), generator=gen)
            for s in range(steps):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                z = model._standardise(flat[idx])
                out_bcc = model.bcc_head(z)[:, 0]
                out_pat = model.pattern_head(z)
                out_dx = model.diagnosis_head(z)
                loss = torch.zeros(())
                has = dx[idx] >= 0
                if has.any():
                    loss = loss + (_focal(out_dx[has], dx[idx][has], cfg.focal_gamma, dx_weight)
                                   if cfg.loss == "focal" else
                                   F.cross_entropy(out_dx[has], dx[idx][has], weight=dx_weight))
                has = bcc[idx] >= 0
                if has.any():
                    loss = loss + _binary(out_bcc[has], bcc[idx][has].float(), cfg, bcc_pos)
                for j in range(len(PATTERNS)):
                    has = pat[idx, j] >= 0
                    if has.any():
                        loss = loss + 0.5 * _binary(out_pat[has, j], pat[idx, j][has].float(), cfg,
                                                    pat_pos[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


# --- stage 2: the last blocks ------------------------------------------------------------------
def fit_model(model: BCCPatternNet, feats: Features, rows: torch.Tensor | None, labels: Labels,
              cfg: RealTrainConfig, seed: int) -> None:
    """The seed's three stages on the training rows (``rows``; None: every image): heads on
    the frozen features (stage 1), then the blocks from ``finetune_from`` on and the BCC and
    diagnosis heads together at a low rate (stage 2), then the pattern heads refitted on the
    fine-tuned features (stage 3: their labels are too few to steer the blocks, and the
    synthetic drawings must not)."""
    x = feats.real if rows is None else feats.real[:, rows]
    tuned = _stage_two(cfg, feats)
    # Stage 2 moves the heads again, so stage 1 only needs to bring them near their optimum.
    train_heads(model, x, labels, feats.synthetic, feats.synthetic_patterns, cfg, seed,
                max_iter=cfg.stage1_iter if tuned else None, patterns=not tuned)
    if not tuned:
        return
    inner = feats.inner if rows is None else feats.inner[:, rows]
    cells = feats.cells if rows is None or feats.cells is None else feats.cells[:, rows]
    finetune(model, inner, x, labels, cfg, seed, cells)
    pooled = tail_pooled(model, inner, x, cfg.finetune_from, cells)
    synthetic = (tail_pooled(model, feats.synthetic_inner[None], feats.synthetic[None], cfg.finetune_from,
                             None if feats.synthetic_cells is None else feats.synthetic_cells[None])[0]
                 if feats.synthetic_inner is not None and len(feats.synthetic) else feats.synthetic)
    _fit_heads_exact(model, pooled, labels, synthetic, feats.synthetic_patterns, cfg, readouts=False)
    model.eval()


def _stage_two(cfg: RealTrainConfig, feats: Features) -> bool:
    # The seed-style AdamW heads (``solver="adamw"``) are the frozen recipe's comparison only.
    return bool(cfg.finetune_from) and feats.inner is not None and cfg.solver == "exact"


def _one_solve(cfg: RealTrainConfig, feats: Features) -> bool:
    """Whether the folds' read-outs are one solve (``fit_readouts``): the exact fits on the
    frozen backbone; stage 2 and the AdamW heads go fold by fold."""
    return not _stage_two(cfg, feats) and cfg.solver == "exact"


def served_pooled(model: BCCPatternNet, feats: Features, rows: torch.Tensor, cfg: RealTrainConfig) -> torch.Tensor:
    """View 0 of ``rows`` as the (possibly fine-tuned) model pools it."""
    if not _stage_two(cfg, feats):
        return feats.real[0, rows]
    cells = None if feats.cells is None else feats.cells[:1, rows]
    return tail_pooled(model, feats.inner[:1, rows], feats.real[:1, rows], cfg.finetune_from, cells)[0]


def _tail(model: BCCPatternNet, x: torch.Tensor, start: int, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Blocks ``start``.. on cached activations: the pooled vector of their taps alone,
    computed by the served network's own ``Hypercolumn`` and ``pool`` (``cells``: the
    images' lesion cells, for the lesion pooling)."""
    taps = []
    for i in range(start, len(model.features)):
        x = model.features[i](x)
        if i in model.arch.taps:
            taps.append(x)
    return model.pool(model.hypercolumn(*taps), cells)


def _assemble(model: BCCPatternNet, frozen: torch.Tensor, tail: torch.Tensor, start: int) -> torch.Tensor:
    """The pooled vector with the tail's part replaced. It is a run of equal segments (per
    pooling region, the global mean, the centre window, the lesion: means, then squares),
    each holding every tap's channels in block order; the tail's taps end each segment."""
    split = sum(_out_channels(model.features[i]) for i in model.arch.taps if i < start)
    segments = model.pooled_parts * (2 if model.arch.squares else 1)
    f, t = frozen.unflatten(1, (segments, -1)), tail.unflatten(1, (segments, -1))
    return torch.cat([f[:, :, :split], t], 2).flatten(1)


def _flat_cells(cells: torch.Tensor | None) -> torch.Tensor | None:
    return None if cells is None else cells.reshape(-1, *cells.shape[2:])


def tail_pooled(model: BCCPatternNet, inner: torch.Tensor, pooled: torch.Tensor, start: int,
                cells: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """(views, n, C) pooled vectors recomputed through the current tail blocks."""
    views, n = inner.shape[:2]
    flat_inner, flat = inner.reshape(views * n, *inner.shape[2:]), pooled.reshape(views * n, -1)
    flat_cells = _flat_cells(cells)
    out = []
    with torch.inference_mode():
        for i in range(0, len(flat), batch):
            x = flat_inner[i:i + batch].float().contiguous(memory_format=torch.channels_last)
            c = None if flat_cells is None else flat_cells[i:i + batch]
            out.append(_assemble(model, flat[i:i + batch], _tail(model, x, start, c), start))
    return torch.cat(out).reshape(views, n, -1)


def readout_loss(z: torch.Tensor, dx: torch.Tensor, bcc: torch.Tensor, dx_head: torch.nn.Linear,
                 bcc_head: torch.nn.Linear, cfg: RealTrainConfig, dx_weight: torch.Tensor,
                 bcc_pos: torch.Tensor) -> torch.Tensor:
    """Stage 2's loss on a minibatch of standardised pooled vectors ``z``: the exact fits'
    class-weighted softmax and positive-weighted BCC terms and their L2 terms, over the rows
    with a label (-1: none)."""
    loss = cfg.l2_diagnosis * dx_head.weight.square().sum() + cfg.l2_bcc * bcc_head.weight.square().sum()
    has = dx >= 0
    if has.any():
        loss = loss + F.cross_entropy(dx_head(z[has]), dx[has], weight=dx_weight)
    has = bcc >= 0
    if has.any():
        loss = loss + _binary(bcc_head(z[has])[:, 0], bcc[has].float(), cfg, bcc_pos)
    return loss


def finetune(model: BCCPatternNet, inner: torch.Tensor, pooled: torch.Tensor, labels: Labels,
             cfg: RealTrainConfig, seed: int, cells: torch.Tensor | None = None) -> None:
    """Stage 2: AdamW on the tail blocks and the BCC and diagnosis heads, one-cycle schedule,
    the exact fits' losses and L2 terms. The backbone stays in eval mode: its BatchNorm layers
    hold the identity after the TFLite reader folded them into the convolutions, and train
    mode would normalise by batch statistics and overwrite them (this, not over-fitting, is
    what made an earlier trial of this stage look useless)."""
    views, n = inner.shape[:2]
    flat_inner, flat = inner.reshape(views * n, *inner.shape[2:]), pooled.reshape(views * n, -1)
    flat_cells = _flat_cells(cells)
    dx, bcc = labels.dx.repeat(views), labels.bcc.repeat(views)
    dx_weight = _class_weights(labels.dx, len(DIAGNOSES))
    bcc_pos = _pos_weight(bcc[bcc >= 0])
    tail = model.features[cfg.finetune_from:]
    dx_head, bcc_head = _last_linear(model.diagnosis_head), _last_linear(model.bcc_head)
    params = list(tail.parameters()) + list(dx_head.parameters()) + list(bcc_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=1e-4)
    per_epoch = max(1, len(flat) // cfg.finetune_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.finetune_lr,
                                                total_steps=per_epoch * cfg.finetune_epochs, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.enable_grad():
        for _ in range(cfg.finetune_epochs):
            order = torch.randperm(len(flat), generator=gen)
            for step in range(per_epoch):
                idx = order[step * cfg.finetune_batch:(step + 1) * cfg.finetune_batch]
                x = flat_inner[idx].float().contiguous(memory_format=torch.channels_last)
                c = None if flat_cells is None else flat_cells[idx]
                z = model._standardise(_assemble(model, flat[idx], _tail(model, x, cfg.finetune_from, c),
                                                 cfg.finetune_from))
                loss = readout_loss(z, dx[idx], bcc[idx], dx_head, bcc_head, cfg, dx_weight, bcc_pos)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


def _last_linear(head: torch.nn.Sequential) -> torch.nn.Linear:
    return [m for m in head if isinstance(m, torch.nn.Linear)][-1]


def head_logits(model: BCCPatternNet, pooled: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        return model.heads(pooled).numpy(), model.diagnosis_logits(pooled).numpy()


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
    if not _one_solve(cfg, feats):
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
        _fit_heads_exact(model, feats.real[:, fit_rows], labels.subset(fit_rows), feats.synthetic,
                         feats.synthetic_patterns, cfg, readouts=False)
        if rows is not sets[-1]:
            test = ~rows
            targets[test.numpy()], diagnoses[test.numpy()] = head_logits(model, feats.real[0, test])
    model.eval()
    return targets, diagnoses


def out_of_fold_images(model: BCCPatternNet, samples: list[Sample], feats: Features, labels: Labels,
                       folds: np.ndarray, cfg: RealTrainConfig,
                       progress: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """``out_of_fold`` with stage 2 on images (``image_finetune.py``): per fold, and then for
    all images, the read-outs fitted on the frozen features (one solve, as the CPU build),
    the backbone fine-tuned on the fold's training images, and every head refitted exactly
    on the tuned network's views of them; the fold's images are then predicted by its tuned
    network. The model is left tuned on every image, on the CPU."""
    from . import image_finetune as tuning
    from .synthetic import generate

    device = torch.device(cfg.device)
    tuning.deterministic_cuda(device)
    size = model.arch.input_size
    images = tuning.decode_all(samples, size)
    drawn = np.asarray(generate(cfg.synthetic, cfg.seed + 7, size).images) if cfg.synthetic else None
    n = len(samples)
    targets = np.zeros((n, 1 + len(PATTERNS)), np.float32)
    diagnoses = np.zeros((n, len(DIAGNOSES)), np.float32)
    sets = [torch.from_numpy(folds != k) for k in range(cfg.folds)] + [torch.ones(n, dtype=torch.bool)]
    readouts = fit_readouts(feats.real, labels, sets, cfg)
    imagenet = {k: v.clone() for k, v in model.features.state_dict().items()}
    for k, (rows, readout) in enumerate(zip(sets, readouts)):
        model.cpu()
        model.features.load_state_dict(imagenet)     # every fold starts from ImageNet
        readout.install(model)
        tuning.finetune_images(model, images, np.flatnonzero(rows.numpy()), labels.dx, labels.bcc, cfg,
                               device, cfg.seed + 101 * (k + 1), progress)
        tuned = tuning.pooled_views(model, images, cfg, device)
        synthetic = feats.synthetic if drawn is None else tuning.pooled_of(model, drawn, device)
        model.cpu()
        train_heads(model, tuned[:, rows], labels.subset(rows), synthetic, feats.synthetic_patterns, cfg,
                    cfg.seed + 101 * (k + 1))
        if rows is not sets[-1]:
            test = ~rows
            targets[test.numpy()], diagnoses[test.numpy()] = head_logits(model, tuned[0, test])
    model.cpu().eval()
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


# --- the build ---------------------------------------------------------------------------------
def build_real(out: Path, cfg: RealTrainConfig = RealTrainConfig(), progress: bool = True,
               log=print) -> artifact.ModelCard:
    from tqdm import tqdm

    started = time.perf_counter()
    reproducible(cfg.seed, cfg.threads)
    samples = shared_samples(cfg.limit)
    for folder in cfg.extra_datasets:
        samples += load_dataset(Path(folder))[:cfg.limit]
    labels = Labels.of(samples, cfg.min_pattern_labels)
    model = BCCPatternNet(cfg.architecture())
    weights = read_tflite(config.shared_models_dir() / SHARED_FILE)
    model.features.load_state_dict(weights.features)
    model = model.to(memory_format=torch.channels_last).eval()
    total = len(samples) * cfg.views + cfg.synthetic
    key = _cache_key(samples, cfg)
    feats = _load_cached(cfg.feature_cache, key)
    if feats is None:
        with tqdm(total=total, desc="ImageNet features (cached views)", unit="img",
                  disable=not progress) as bar:
            feats = extract(model, samples, cfg, bar.update)
        _save_cached(cfg.feature_cache, key, feats)
    folds = grouped_folds(samples, cfg.folds, cfg.seed)
    t0 = time.perf_counter()
    if cfg.image_finetune:
        steps = sum(math.ceil(int((folds != k).sum()) / cfg.image_batch) for k in range(cfg.folds))
        total = (steps + math.ceil(len(samples) / cfg.image_batch)) * cfg.image_epochs
        with tqdm(total=total, desc=f"fine-tuning on images ({cfg.folds} folds + all, {cfg.device})",
                  unit="step", disable=not progress) as bar:
            oof_t, oof_d = out_of_fold_images(model, samples, feats, labels, folds, cfg, bar.update)
    else:
        desc, total, unit = ((f"heads of {cfg.folds} folds + all images (one L-BFGS solve)", cfg.max_iter,
                              "eval") if _one_solve(cfg, feats) else (f"{cfg.folds}-fold heads", cfg.folds, "fold"))
        with tqdm(total=total, desc=desc, unit=unit, disable=not progress) as bar:
            oof_t, oof_d = out_of_fold(model, feats, labels, folds, cfg,
                                       lambda k: bar.update(k) if bar.n < total else None)
    heads_seconds = time.perf_counter() - t0
    result = assess(oof_t, oof_d, labels, cfg)
    elapsed = time.perf_counter() - started
    card = make_card(cfg, samples, labels.labelled, result, {"feature_extraction_s": round(feats.seconds, 1),
                                            "heads_s": round(heads_seconds, 1),  # the folds and the final fit
                                            "total_s": round(elapsed, 1)})
    artifact.save(model, card, Path(out))
    f = result["figures"]
    patterns = "".join(f", {c} {f[c]['auc']}" for c in labels.labelled)
    log(f"real model written to {out} in {elapsed:.0f} s; out-of-fold AUC: BCC {f['BCC']['auc']}, "
        f"melanoma {f['diagnoses']['mel']['auc']}{patterns}; "
        f"balanced accuracy (7) {f['balanced_accuracy_7']}")
    return card


def make_card(cfg: RealTrainConfig, samples: list[Sample], labelled: tuple[str, ...], result: dict,
              timings: dict) -> artifact.ModelCard:
    n_ham = sum(s.source == "ham10000" for s in samples)
    n_d7 = sum(s.source == "derm7pt" for s in samples)
    data = {
        "BCC": f"HAM10000 ({n_ham}) + Derm7pt ({n_d7}) images, BCC yes/no",
        "diagnoses": f"HAM10000 ({n_ham}) + Derm7pt images whose diagnosis maps to the 7 classes",
        "PN": f"Derm7pt ({n_d7}): pigment_network != absent (expert labels)",
        "AT": f"Derm7pt ({n_d7}): vascular_structures == arborizing (expert labels)",
    }
    n_extra = sum(s.source == "csv" for s in samples)
    validation = {"BCC": VALIDATED, "diagnoses": VALIDATED}
    for code in PATTERNS:
        validation[code] = VALIDATED if code in labelled else NOT_VALIDATED
        real = [s for s in samples if s.source == "csv" and getattr(s, code) is not None]
        if code not in labelled:
            data[code] = (f"synthetic drawings only ({cfg.synthetic} images); "
                          f"{len(real)} real labels (fewer than {cfg.min_pattern_labels} per class)"
                          if cfg.synthetic else "untrained: no real labels")
        elif real:
            data[code] = (data.get(code, "") + ("; " if code in data else "")
                          + f"{len(real)} reviewed images (readers' consensus, {', '.join(cfg.extra_datasets)})")
    return artifact.ModelCard(
        name=MODEL_NAME, version=MODEL_VERSION, weights_sha256="",
        architecture=cfg.architecture().to_dict(), preprocessing_version=PREPROCESSING_VERSION,
        patterns=list(PATTERNS), thresholds=result["thresholds"], bcc_threshold=result["bcc_threshold"],
        training_data={"sources": ["HAM10000 (ham10000-224)", "Derm7pt"]
                       + [f"labels.csv: {d} ({n_extra} images in all)" for d in cfg.extra_datasets],
                       "images": len(samples),
                       "per_target": data, "initialisation": f"ImageNet MobileNet-V2 ({SHARED_FILE})",
                       "views_per_image": cfg.views, "synthetic_images": cfg.synthetic},
        metrics={"out_of_fold": result["figures"],
                 "validation_scheme": f"{cfg.folds}-fold cross-validation, stratified by diagnosis, "
                                      "grouped by lesion; view 0 (unaugmented); 95% bootstrap intervals",
                 "timings_s": timings, "training_config": asdict(cfg)},
        intended_use=INTENDED_USE, clinical_use=False,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        calibration=result["calibration"], validation=validation,
        evidence_patterns=list(labelled), operating_points=result["operating_points"],
        diagnoses=list(DIAGNOSES),
    )
