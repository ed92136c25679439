"""Model artifacts: one weights file plus a JSON model card that vouches for it.

The card records the weights' sha256 and loading refuses any file that does not match: a
prediction must be traceable to exactly the weights that made it (the audit records quote
the card's hash). Weights are saved as a plain state dict and loaded with
``weights_only=True`` so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass, field, asdict
from pathlib import Path

import torch

from ..errors import ModelIntegrityError
from .network import Architecture, BCCPatternNet
from .patterns import PATTERNS

CARD_SUFFIX = ".card.json"
__all__ = ["CARD_SUFFIX", "LoadedModel", "ModelCard", "ModelIntegrityError", "card_path", "load",
           "save", "sha256_file"]


@dataclass
class ModelCard:
    name: str
    version: str
    weights_sha256: str
    architecture: dict
    preprocessing_version: str
    patterns: list[str]
    thresholds: dict[str, float]
    bcc_threshold: float
    training_data: dict
    metrics: dict
    intended_use: str
    clinical_use: bool = False
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    # Real-image models: calibration per output ("BCC", "PN", "AT", "diagnosis": Platt scale
    # and bias), validation
    # status per target, the patterns the explanation may cite as evidence (None: all, as
    # the synthetic demo has no other kind), operating points of the diagnosis head used by
    # the referral risk ("mel", "akiec"), and the diagnosis head's classes.
    calibration: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    evidence_patterns: list | None = None
    operating_points: dict = field(default_factory=dict)
    diagnoses: list = field(default_factory=list)
    # The scope gate's thresholds, figures and how they were validated (``scope.py``); empty
    # for a model without a gate.
    scope: dict = field(default_factory=dict)
    # The referral triage (``risk.Triage``): how the heads combine into one malignancy
    # probability, its calibration, the tier thresholds fitted to the targets, and figures.
    triage: dict = field(default_factory=dict)

    OPTIONAL = frozenset({"extra", "created_at", "clinical_use", "calibration", "validation",
                          "evidence_patterns", "operating_points", "diagnoses", "scope", "triage"})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        known = {f for f in cls.__dataclass_fields__}
        missing = known - set(d) - cls.OPTIONAL
        if missing:
            raise ModelIntegrityError(f"model card lacks {', '.join(sorted(missing))}")
        card = cls(**{k: v for k, v in d.items() if k in known})
        if list(card.patterns) != list(PATTERNS):
            raise ModelIntegrityError(f"model card patterns {card.patterns} differ from {list(PATTERNS)}")
        if set(card.thresholds) != set(PATTERNS):
            raise ModelIntegrityError("model card needs one threshold per pattern")
        return card


@dataclass
class LoadedModel:
    model: BCCPatternNet
    card: ModelCard
    path: Path

    @property
    def architecture(self) -> Architecture:
        return self.model.arch


def card_path(weights: Path) -> Path:
    return weights.with_name(weights.name + CARD_SUFFIX) if weights.suffix != ".pt" \
        else weights.with_suffix(CARD_SUFFIX)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: BCCPatternNet, card: ModelCard, weights: Path) -> Path:
    """Write weights, then the card with their hash; returns the card's path."""
    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Through a buffer: torch.save names the zip's root folder after the file, which would
    # make identical weights hash differently under different names.
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = weights.with_name(weights.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(weights)
    card.weights_sha256 = sha256_file(weights)
    card.architecture = model.arch.to_dict()
    cpath = card_path(weights)
    cpath.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return cpath


def load(weights: Path, device: str | torch.device = "cpu") -> LoadedModel:
    weights = Path(weights)
    cpath = card_path(weights)
    if not weights.is_file():
        raise ModelIntegrityError(f"no model weights at {weights}")
    if not cpath.is_file():
        raise ModelIntegrityError(f"no model card at {cpath}")
    card = ModelCard.from_dict(json.loads(cpath.read_text()))
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise ModelIntegrityError(
            f"refusing to load {weights}: its sha256 is {actual}, the model card says "
            f"{card.weights_sha256}")
    try:
        model = BCCPatternNet(Architecture.from_dict(card.architecture))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelIntegrityError(f"cannot load {weights}: {exc}") from exc
    model.eval().to(device)
    return LoadedModel(model=model, card=card, path=weights)
