"""The real-image model's recipe: every choice of the build as one frozen dataclass.

Each field's default is what ``make install`` builds; the measurements behind them are in
``docs/experiments.md`` (under the field's name), the resulting figures in ``docs/model.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..diagnosis.network import Architecture
from .datasets import DIAGNOSES
from .imagenet import IMAGENET_ARCH

MODEL_NAME = "dermatriage-real"
MODEL_VERSION = "2.5.0"
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
    views: int = 3                   # cached versions of each image: view 0 unaugmented
    # How views 1, 2, ... are drawn (``views.AUGMENTATIONS``, one per view separated by commas,
    # the last repeated): "dihedral" (one of the square's 7 other symmetries, lossless),
    # "dihedral+camera" (the symmetry under another dermatoscope's white balance, exposure and
    # gamma) or "full" (the seed's rotation, flips, blur, perspective and colour). Why a
    # symmetry and a recoloured symmetry: experiments.md, "Views" and "Camera colour".
    augmentation: str = "dihedral,dihedral+camera"
    # Weight of each view's agreement with view 0 in the BCC and diagnosis read-outs' objective
    # (views 1, 2, ...; the last repeated): the mean squared difference of each image's logits
    # between the two views. The camera's view pulls a quarter as hard as the symmetry's: at
    # half, in-source melanoma lost (experiments.md, "Camera colour as a third view").
    invariance: tuple[float, ...] = (0.05, 0.0125)
    folds: int = 5
    epochs: int = 8                  # stage 1: heads at lr
    low_epochs: int = 2              # stage 3: heads at low_lr
    batch_size: int = 128
    lr: float = 1e-3
    low_lr: float = 1e-4
    weight_decay: float = 5e-2
    dropout: float = 0.3
    hidden: tuple[int, ...] = ()     # linear read-out (experiments.md, "Read-outs")
    solver: str = "exact"            # L-BFGS logistic fits; "adamw": the seed's staged heads
    l2_diagnosis: float = 0.1        # per-head L2 strength of the exact fits (experiments.md)
    l2_bcc: float = 0.1
    l2_patterns: float = 1.0
    max_iter: int = 300
    loss: str = "weighted"           # or "focal"
    focal_gamma: float = 2.0
    synthetic: int = 600             # drawn images teaching the 5 unvalidated pattern heads
    # Stage 2: blocks from ``finetune_from`` on (and the heads) fine-tuned at ``finetune_lr`` on
    # cached activations of the block before; 0 (the build) leaves the backbone frozen: on
    # this data stage 2 did not pay for its time (experiments.md, "Stage 2").
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
    # Also the map's mean over the lesion (the engine's mask; experiments.md, "Pooling");
    # ``--no-lesion`` leaves it out.
    lesion: bool = True
    bcc_sensitivity: float = 0.95    # the BCC operating point
    mel_sensitivity: float = 0.90    # "suspected melanoma" in the referral risk
    akiec_sensitivity: float = 0.80  # "suspected SCC / precancer"
    limit: int | None = None         # first N images of each data set only (tests)
    threads: int = 2
    # Images per forward pass of the extraction. With freed memory kept in the heap
    # (``services/memory.py``), 16 beat 4 by a third with the sleeping threads every
    # ``dermatriage`` process has, and lost 5% beside a busy process; at 32 the activations
    # are fresh mmap'd memory again (experiments.md, "Extraction and memory").
    extract_batch: int = 16
    feature_cache: str | None = None  # file to keep extracted features in, reused if it matches
    # More labelled folders (labels.csv layout), e.g. `dermatriage labels export` of the
    # product's own reviewed cases: their pattern labels train and validate those heads.
    extra_datasets: tuple[str, ...] = ()
    min_pattern_labels: int = 10     # real positives and negatives a pattern needs to be validated
    # Leave-one-collection-out figures in the card (``out_of_source``): one more solve of the
    # BCC and diagnosis read-outs on the cached features.
    out_of_source: bool = True
    # HAM10000's shared copies were squashed from 600 x 450 to squares; the engine crops the
    # centre square of a photo. An aspect (4/3) stretches them back before the same crop, so
    # training sees lesions as served (None: as the copies are).
    ham_aspect: float | None = None
    # The scope gate (``scope_gate``): fitted on the same features against the shared
    # clinical photographs (DermNet), where they are present (not after stage 2: ``stage2``).
    scope_gate: bool = True

    def architecture(self) -> Architecture:
        return replace(IMAGENET_ARCH, diagnoses=DIAGNOSES, taps=self.taps, squares=True,
                       centre=self.centre, lesion=self.lesion, hidden=self.hidden, dropout=self.dropout,
                       scope=self.scope_gate and not self.stage2 and clinical_photos() is not None)

    @property
    def stage2(self) -> bool:
        """Whether the backbone is tuned after the cached features were taken. The scope gate is
        fitted on those features, which a tuned backbone no longer produces, so such a build
        gets no gate (its modality is then not assessed; fitting one after stage 2 is open work)."""
        return bool(self.finetune_from or self.image_finetune)


def for_view(values: tuple, view: int):
    """A per-view setting's value for view ``view`` (1, 2, ...): ``values`` lists views 1, 2,
    ... and its last value holds for the views beyond (``augmentation``, ``invariance``)."""
    return values[min(view, len(values)) - 1]


def clinical_photos():
    """The shared clinical photographs the scope gate is fitted against, or None."""
    from .. import config

    folder = config.shared_data_dir() / "dermnet-clinical"
    return folder if (folder / "labels.csv").is_file() else None
