"""The engine workers call: load a model once, then ``analyse`` batches of image bytes.

One lock serialises use of the model: PyTorch modules are not documented as safe for
concurrent forward passes, and a single batched pass is faster than interleaved small ones
anyway (the worker's micro-batcher gathers concurrent images into one call).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import artifact
from . import scope as scope_gate
from .clinical import ClinicalExplanation, explain, not_applicable
from .gradcam import all_target_cams
from .lesion import lesion_masks
from .map_numbers import MapNumbers, as_records, map_numbers
from .patterns import PATTERNS, TARGETS
from ..intake import ImageDecodeError, ImageQuality
from .preprocess import PREPROCESSING_VERSION, prepare


@dataclass
class TargetMap:
    """One Grad-CAM explanation: BCC or one pattern."""

    target: str
    probability: float
    raw: np.ndarray          # (h, w) float32, ReLU'd Grad-CAM at feature resolution
    normalised: np.ndarray   # (S, S) float32 in [0, 1], over the analysed crop
    numbers: MapNumbers


@dataclass
class AnalysisResult:
    bcc_probability: float
    pattern_probabilities: dict[str, float]
    patterns_present: list[str]           # above threshold, validated or not (see clinical)
    diagnosis_probabilities: dict[str, float] | None
    clinical: ClinicalExplanation
    maps: list[TargetMap]                 # TARGETS order: BCC, PN, UL, BO, MG, ML, SW, AT
    quality: ImageQuality
    image: dict                           # media type, width, height, crop box
    lesion_mask_method: str
    model: dict                           # name, version, weights_sha256
    preprocessing_version: str
    device: str
    scope: scope_gate.ScopeVerdict | None = None   # the gate's verdict (scope.py)
    timings_ms: dict[str, float] = field(default_factory=dict)
    input_rgb: np.ndarray | None = None   # (S, S, 3) uint8: the crop the maps refer to

    def summary(self) -> dict:
        """Everything but the map arrays: what the database and audit record keep."""
        return {
            "bcc_probability": self.bcc_probability,
            "pattern_probabilities": self.pattern_probabilities,
            "patterns_present": self.patterns_present,
            "diagnosis_probabilities": self.diagnosis_probabilities,
            "clinical": self.clinical.to_dict(),
            "map_numbers": {m.target: m.numbers.to_dict() for m in self.maps},
            "quality": self.quality.to_dict(),
            "scope": self.scope.to_dict() if self.scope else None,
            "image": self.image,
            "lesion_mask_method": self.lesion_mask_method,
            "model": self.model,
            "preprocessing_version": self.preprocessing_version,
            "device": self.device,
            "timings_ms": self.timings_ms,
        }


@dataclass
class BatchExplanation:
    """Tensor-level result of ``Engine.explain_tensors`` (used by ``analyse`` and benchmarks)."""

    probabilities: torch.Tensor     # (B, 8) calibrated
    diagnoses: torch.Tensor | None  # (B, D) calibrated softmax over the card's diagnoses
    raw: torch.Tensor               # (B, 8, h, w)
    normalised: torch.Tensor        # (B, 8, S, S)
    numbers: list[list[MapNumbers]]
    clinical: list[ClinicalExplanation]
    lesion_methods: list[str]
    scope: torch.Tensor | None = None        # (B, 2) the gate's logits, None without a gate
    typicality: torch.Tensor | None = None   # (B,)


@dataclass
class ImageCheck:
    """What ``Engine.check`` finds: the gate's verdict and the retake cues."""

    verdict: "scope_gate.ScopeVerdict"
    quality: ImageQuality
    width: int
    height: int
    lesion_offset: float | None    # lesion centroid's distance from the centre, share of the side
    elapsed_ms: float

    @property
    def off_centre(self) -> bool:
        return self.lesion_offset is not None and self.lesion_offset > OFF_CENTRE


# A lesion whose centroid lies further than this share of the side from the centre of the crop
# is "not centred": a quarter of the side puts its centre outside the middle half.
OFF_CENTRE = 0.25


def _centroid_offset(mask: torch.Tensor, method: str) -> float | None:
    """None when no lesion was found (the mask fell back to the centred disc)."""
    if method != "otsu" or not mask.any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    s = mask.shape[-1]
    dy, dx = ys.float().mean() / s - 0.5, xs.float().mean() / s - 0.5
    return round(float((dx * dx + dy * dy).sqrt()), 3)


# Images per forward and backward pass on the CPU (``Engine.explain_tensors``).
CPU_PASS = 4


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    def __init__(self, loaded: artifact.LoadedModel, device: torch.device):
        self.loaded = loaded
        self.card = loaded.card
        self.device = device
        self.model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
        self.input_size = loaded.model.arch.input_size
        self.thresholds = dict(self.card.thresholds)
        # Calibration from the card (none for the demo): p = sigmoid(scale * logit + bias),
        # softmax(scale * logits + bias) for the diagnoses.
        cal = self.card.calibration
        self._scale = torch.tensor([float(cal.get(t, {}).get("scale", 1.0)) for t in TARGETS],
                                   device=device)
        self._bias = torch.tensor([float(cal.get(t, {}).get("bias", 0.0)) for t in TARGETS],
                                  device=device)
        self._dx_scale = float(cal.get("diagnosis", {}).get("scale", 1.0))
        self._dx_bias = torch.tensor(cal.get("diagnosis", {}).get("bias", 0.0), device=device)
        self._lock = threading.Lock()
        self.gate = scope_gate.GateThresholds.from_card(self.card.scope)
        # False skips the whole scope gate (pixel screen, read-out, verdict): only for
        # ``bench explain``, which measures what the gate costs.
        self.scope_enabled = True

    @classmethod
    def load(cls, weights: str | Path, device: str | None = None) -> "Engine":
        dev = pick_device(device)
        return cls(artifact.load(Path(weights), dev), dev)

    @property
    def model_info(self) -> dict:
        return {"name": self.card.name, "version": self.card.version,
                "weights_sha256": self.card.weights_sha256}

    def forward(self, x: torch.Tensor, pass_size: int | None = None) -> torch.Tensor:
        """Plain inference (logits), the baseline the benchmark compares against; in the
        same passes as ``explain_tensors``."""
        step = self._pass_size(len(x), pass_size)
        with self._lock, torch.inference_mode(), self._autocast():
            return torch.cat([self.model(self._to_device(x[i:i + step])).float()
                              for i in range(0, len(x), step)])

    def _pass_size(self, n: int, pass_size: int | None) -> int:
        return max(1, pass_size or (CPU_PASS if self.device.type == "cpu" else n))

    def explain_tensors(self, x: torch.Tensor, pass_size: int | None = None) -> BatchExplanation:
        """Probabilities, all eight maps, their numbers and the clinical explanation.

        On the CPU in passes of ``pass_size`` (default ``CPU_PASS``) images: a larger pass's activations
        (and Grad-CAM's gradients) are blocks over glibc's 32 MB mmap limit, fresh pages
        every pass (services/memory.py). `dermatriage bench explain` measures it against one
        pass (docs/benchmarks.md)."""
        step = self._pass_size(len(x), pass_size)
        if len(x) <= step:
            return self._explain(x)
        parts = [self._explain(x[i:i + step]) for i in range(0, len(x), step)]
        return BatchExplanation(
            probabilities=torch.cat([p.probabilities for p in parts]),
            diagnoses=None if parts[0].diagnoses is None else torch.cat([p.diagnoses for p in parts]),
            raw=torch.cat([p.raw for p in parts]), normalised=torch.cat([p.normalised for p in parts]),
            numbers=[n for p in parts for n in p.numbers], clinical=[c for p in parts for c in p.clinical],
            lesion_methods=[m for p in parts for m in p.lesion_methods],
            scope=None if parts[0].scope is None else torch.cat([p.scope for p in parts]),
            typicality=None if parts[0].typicality is None else torch.cat([p.typicality for p in parts]))

    def _explain(self, x: torch.Tensor) -> BatchExplanation:
        with self._lock, self._autocast():
            x = self._to_device(x)
            # One lesion mask per image serves both the lesion pooling and the map numbers.
            lesion, methods = lesion_masks(x.float())
            cams = all_target_cams(self.model, x, lesion=lesion)
            with torch.no_grad():
                dx_logits = self.model.diagnosis_logits(cams.pooled)
                gate = self.model.scope_readout(cams.pooled) if self.scope_enabled else None
        probs = torch.sigmoid(cams.logits * self._scale + self._bias)
        diagnoses = (None if dx_logits is None
                     else torch.softmax(dx_logits.float() * self._dx_scale + self._dx_bias, dim=1))
        numbers = as_records(map_numbers(cams.normalised, cams.peak_raw, probs, lesion.to(x.device)))
        p = probs.tolist()
        clinical = []
        for i, row in enumerate(p):
            pattern_p = dict(zip(PATTERNS, row[1:]))
            scores = {c: numbers[i][1 + j].score for j, c in enumerate(PATTERNS)}
            clinical.append(explain(row[0], pattern_p, self.thresholds,
                                    self.card.bcc_threshold, scores, self.card.evidence_patterns))
        return BatchExplanation(probabilities=probs, diagnoses=diagnoses, raw=cams.raw,
                                normalised=cams.normalised,
                                numbers=numbers, clinical=clinical, lesion_methods=methods,
                                scope=None if gate is None else gate[0].float(),
                                typicality=None if gate is None else gate[1].float())

    def analyse(self, images: list[bytes]) -> list[AnalysisResult]:
        """Decode, preprocess and analyse a batch; a bad image raises ImageDecodeError
        naming its position, before any analysis is done."""
        if not images:
            return []
        t0 = time.perf_counter()
        prepared = []
        for i, data in enumerate(images):
            try:
                prepared.append(prepare(data, self.input_size, checks=self.scope_enabled))
            except ImageDecodeError as exc:
                exc.index = i
                exc.message = f"image {i}: {exc.message}"
                exc.args = (exc.message,)
                raise
        t1 = time.perf_counter()
        x = torch.stack([p.tensor for p in prepared])
        out = self.explain_tensors(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        probs = out.probabilities.cpu().numpy()
        dx = None if out.diagnoses is None else out.diagnoses.cpu().numpy()
        raw = out.raw.cpu().numpy().astype(np.float32)
        norm = out.normalised.cpu().numpy().astype(np.float32)
        per_image = {"preprocess_ms": round((t1 - t0) * 1000 / len(images), 2),
                     "analysis_ms": round((t2 - t1) * 1000 / len(images), 2),
                     "batch_size": len(images)}
        gate = None if out.scope is None or self.gate is None else out.scope.cpu().numpy()
        typical = None if gate is None else out.typicality.cpu().numpy()
        results = []
        for i, p in enumerate(prepared):
            verdict = (None if not self.scope_enabled else
                       scope_gate.judge(p.screen, p.quality) if gate is None else
                       scope_gate.judge(p.screen, p.quality, self.gate, float(gate[i, 0]),
                                        float(gate[i, 1]), float(typical[i])))
            applicable = verdict is None or verdict.applicable
            maps = [TargetMap(target=t, probability=round(float(probs[i, j]), 4),
                              raw=raw[i, j], normalised=norm[i, j], numbers=out.numbers[i][j])
                    for j, t in enumerate(TARGETS)]
            pattern_p = {c: round(float(probs[i, 1 + j]), 4) for j, c in enumerate(PATTERNS)}
            clinical = out.clinical[i]
            if not applicable:
                # Outside the dermoscopic read's scope: no pattern, evidence or map claims.
                clinical = not_applicable(float(probs[i, 0]), self.card.bcc_threshold,
                                          verdict.reason, verdict.hint)
            results.append(AnalysisResult(
                bcc_probability=round(float(probs[i, 0]), 4),
                pattern_probabilities=pattern_p,
                patterns_present=([c for c in PATTERNS if pattern_p[c] >= self.thresholds[c]]
                                  if applicable else []),
                diagnosis_probabilities=(None if dx is None else
                                         {d: round(float(dx[i, k]), 4)
                                          for k, d in enumerate(self.card.diagnoses)}),
                clinical=clinical, maps=maps, quality=p.quality, scope=verdict,
                image={"media_type": p.media_type, "width": p.width, "height": p.height,
                       "crop_box": list(p.crop_box), "input_size": self.input_size},
                lesion_mask_method=out.lesion_methods[i], model=self.model_info,
                preprocessing_version=PREPROCESSING_VERSION, device=str(self.device),
                timings_ms=dict(per_image), input_rgb=p.rgb))
        return results

    def check(self, data: bytes) -> "ImageCheck":
        """The scope gate alone, for the GP's form: intake's checks, one forward pass (no
        Grad-CAM, no explanation) and the gate's read-out, plus where the lesion sits. Raises
        ImageDecodeError as ``analyse`` does. The verdict at analysis time is the one that
        counts; this one is computed the same way, so they agree for the same bytes."""
        t0 = time.perf_counter()
        p = prepare(data, self.input_size)
        with self._lock, torch.inference_mode(), self._autocast():
            x = self._to_device(p.tensor[None])
            mask, method = lesion_masks(x.float())
            features = self.model.embed(x)
            pooled = self.model.pool(features, self.model.lesion_cells(x, features, mask)).float()
            gate = self.model.scope_readout(pooled)
        if gate is None or self.gate is None:
            verdict = scope_gate.judge(p.screen, p.quality)
        else:
            verdict = scope_gate.judge(p.screen, p.quality, self.gate, float(gate[0][0, 0]),
                                       float(gate[0][0, 1]), float(gate[1][0]))
        return ImageCheck(verdict=verdict, quality=p.quality, width=p.width, height=p.height,
                          lesion_offset=_centroid_offset(mask[0].cpu(), method[0]),
                          elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)
