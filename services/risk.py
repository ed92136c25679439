"""Referral risk: where a case belongs in the dermatologist's queue, and why.

Models with a triage section in their card (the real-image model) score a case by ONE
calibrated probability that the lesion is malignant or premalignant (melanoma, BCC,
SCC/intra-epidermal carcinoma or actinic keratosis: SCIENCE.md's hierarchy), combining the
BCC and diagnosis heads the way the out-of-fold data found best (``Triage``). The tiers
come from explicit targets (``config.triage_targets``: at least 97% of malignant lesions
routine or urgent, at least 90% of melanomas urgent, the smallest urgent share that meets
both), fitted out of fold at build time and stated in the card. The score (0-100) maps
that probability monotonically onto fixed bands, low below 35, routine from 35, urgent from
70, with the card's thresholds at 35 and 70, so the queue's bands never move and, with
neutral GP answers, the queue's order is the model's order.

The GP's red flags then raise the score by documented amounts, together at most
``FLAGS_CAP`` points: bleeding +10, change +5, high-risk site (nose, eyelid, lip, ear, face:
delay costs function and appearance) +10, age 80 or over +5.

Models without a triage section (the synthetic demo) score by the BCC head's probability
(or the diagnosis head's malignant mass when higher), with "suspected melanoma" and
"suspected SCC / AK" escalations from the card's operating points and +15 for validated
ulceration.

Escalations never lower priority; they flag the case for a human because the AI's reading
is in doubt:
  - AI not applicable: the scope gate refused an image (not dermoscopic, not a lesion, not
    skin, unusable); only the images it passed are scored, and a case with none is scored
    from the GP's red flags alone, at least routine, "AI not applicable: <reason>".
  - head/rule disagreement (the BCC head and the dermoscopic-pattern rule differ) and image
    quality flags (blurred, under- or over-exposed: a retake may help): needs attention; the
    demo's score is lifted to routine, the triage score is left as the model ordered it.
  - AI unavailable (analysis failed): scored from the GP's red flags alone, floor 50.
Each tier has a review deadline (SLA). A case whose deadline is near (``ESCALATE_SHARE`` of
its SLA has passed) or gone is served by deadline before any case ordered by score, so no
case waits past its deadline behind newer high-risk ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from .vocabulary import HIGH_RISK_SITES, RiskTier

TIERS = ((RiskTier.URGENT, 70.0, timedelta(hours=24)),
         (RiskTier.ROUTINE, 35.0, timedelta(days=5)),
         (RiskTier.LOW, 0.0, timedelta(days=14)))
ESCALATE_SHARE = 0.75
ATTENTION_FLOOR = 40.0
AI_UNAVAILABLE_FLOOR = 50.0
MALIGNANT = ("mel", "bcc", "akiec")
ROUTINE_BAND, URGENT_BAND = 35.0, 70.0    # the score bands the card's thresholds map onto
FLAGS_CAP = 20.0
COMBINATIONS = ("diagnosis_mass", "max_with_bcc_head", "bcc_head_in_mass")


@dataclass(frozen=True)
class Risk:
    score: float
    tier: str
    reasons: list[str]
    needs_attention: bool
    due_at: datetime
    escalate_at: datetime


@dataclass(frozen=True)
class ImageFinding:
    bcc_probability: float
    patterns_present: list[str]        # patterns the explanation uses as evidence
    agreement: bool
    quality_issues: list[str]
    diagnosis_probabilities: dict[str, float] | None = None
    in_scope: bool = True              # the scope gate read it as dermoscopic
    scope_reason: str = ""             # why not, when not


@dataclass(frozen=True)
class Triage:
    """The card's triage section: how the heads combine into one malignancy probability, its
    calibration (Platt, on the combination's logit) and the fitted tier thresholds."""

    combination: str
    scale: float
    bias: float
    routine_at: float
    urgent_at: float

    @classmethod
    def from_card(cls, section: dict | None) -> "Triage | None":
        if not section or "thresholds" not in section:
            return None
        cal, t = section["calibration"], section["thresholds"]
        return cls(section["combination"], float(cal["scale"]), float(cal["bias"]),
                   float(t["routine"]), float(t["urgent"]))

    def probability(self, bcc_probability: float, diagnoses: dict[str, float]) -> float:
        raw = combine(self.combination, bcc_probability, diagnoses)
        x = math.log(max(raw, 1e-6) / max(1 - raw, 1e-6))
        return 1.0 / (1.0 + math.exp(-(self.scale * x + self.bias)))

    def score(self, p: float) -> float:
        """Monotone map of the probability onto the bands: routine_at -> 35, urgent_at -> 70."""
        r, u = self.routine_at, self.urgent_at
        if p < r:
            return ROUTINE_BAND * p / max(r, 1e-9)
        if p < u:
            return ROUTINE_BAND + (URGENT_BAND - ROUTINE_BAND) * (p - r) / max(u - r, 1e-9)
        return URGENT_BAND + (100.0 - URGENT_BAND) * (p - u) / max(1 - u, 1e-9)


def evidence_found(clinical: dict) -> list[str]:
    """Patterns the explanation used as evidence (validated and present): what the score reads
    of the patterns."""
    return [e["code"] for e in clinical.get("supporting", []) + clinical.get("contradicting", [])]


def combine(combination: str, bcc_probability: float, diagnoses: dict[str, float]) -> float:
    """One number for "malignant or premalignant" from the two heads, before calibration:
    the diagnosis head's mass on the malignant classes, or that and the BCC head's
    probability (the higher, or the BCC head's in place of the diagnosis head's BCC share)."""
    mass = sum(diagnoses.get(c, 0.0) for c in MALIGNANT)
    if combination == "diagnosis_mass":
        return mass
    if combination == "max_with_bcc_head":
        return max(mass, bcc_probability)
    if combination == "bcc_head_in_mass":
        return min(1.0, mass - diagnoses.get("bcc", 0.0) + bcc_probability)
    raise ValueError(f"unknown combination {combination!r}; one of {', '.join(COMBINATIONS)}")


def _highest(findings: list[ImageFinding], code: str) -> float:
    return max((f.diagnosis_probabilities or {}).get(code, 0.0) for f in findings)


def assess(findings: list[ImageFinding], *, bleeding: bool, changed: bool, body_site: str,
           age: int, received_at: datetime, ai_available: bool = True,
           operating_points: dict | None = None, triage: dict | None = None) -> Risk:
    reasons: list[str] = []
    attention = False
    points = operating_points or {}
    tri = Triage.from_card(triage)
    refused = [f for f in findings if not f.in_scope]
    findings = [f for f in findings if f.in_scope]
    if ai_available and refused:
        attention = True
        reasons.extend(sorted({f"AI not applicable: {f.scope_reason}" for f in refused}))
    if ai_available and findings and tri and all(f.diagnosis_probabilities for f in findings):
        p = max(tri.probability(f.bcc_probability, f.diagnosis_probabilities) for f in findings)
        score = tri.score(p)
        reasons.append(f"AI malignancy probability {p:.0%} (melanoma, BCC, SCC/AK; routine from "
                       f"{tri.routine_at:.0%}, urgent from {tri.urgent_at:.0%})")
    elif ai_available and findings:
        tri = None
        top = max(findings, key=lambda f: f.bcc_probability)
        score = 100.0 * top.bcc_probability
        reasons.append(f"AI BCC probability {top.bcc_probability:.0%}")
        malignant = max(sum((f.diagnosis_probabilities or {}).get(c, 0.0) for c in MALIGNANT)
                        for f in findings)
        if 100.0 * malignant > score:
            score = 100.0 * malignant
            reasons.append(f"AI malignancy probability {malignant:.0%} (melanoma, BCC, SCC/AK)")
        p_mel, p_akiec = _highest(findings, "mel"), _highest(findings, "akiec")
        if "mel" in points and p_mel >= points["mel"]:
            score = max(score, 75.0 + 25.0 * p_mel)
            reasons.insert(0, f"suspected melanoma {p_mel:.0%}: urgent (two-week wait)")
        if "akiec" in points and p_akiec >= points["akiec"]:
            score = max(score, 40.0 + 40.0 * p_akiec)
            reasons.insert(0, f"suspected SCC / actinic keratosis {p_akiec:.0%}")
        if any("UL" in f.patterns_present for f in findings):
            score += 15
            reasons.append("ulceration seen (+15)")
    elif ai_available and refused:
        score = 0.0     # nothing the AI may say: the GP's red flags, and a human, decide
    else:
        score = 0.0
        reasons.append("AI unavailable: manual review needed")
        attention = True
    flags = 0.0
    for raised, points_, why in ((bleeding, 10, "bleeding reported"), (changed, 5, "change reported"),
                                 (body_site in HIGH_RISK_SITES, 10, f"high-risk site: {body_site}"),
                                 (age >= 80, 5, "age 80 or over")):
        if raised:
            flags += points_
            reasons.append(f"{why} (+{points_})")
    if flags > FLAGS_CAP:
        reasons.append(f"red flags count at most +{FLAGS_CAP:.0f} together")
    score += min(flags, FLAGS_CAP)
    if ai_available and any(not f.agreement for f in findings):
        attention = True
        reasons.append("AI diagnosis and dermoscopic patterns disagree: needs a human read")
        if tri is None:
            score = max(score, ATTENTION_FLOOR)
    if ai_available and refused:
        score = max(score, ATTENTION_FLOOR)
    bad = sorted({i for f in findings + refused for i in f.quality_issues})
    if bad:
        attention = True
        reasons.append(f"image quality: {', '.join(bad)} (retake may be needed)")
        if tri is None:
            score = max(score, ATTENTION_FLOOR)
    if not ai_available:
        score = max(score, AI_UNAVAILABLE_FLOOR)
    score = round(min(score, 100.0), 1)
    tier, sla = next((name, sla) for name, floor, sla in TIERS if score >= floor)
    return Risk(score=score, tier=tier, reasons=reasons, needs_attention=attention,
                due_at=received_at + sla, escalate_at=received_at + sla * ESCALATE_SHARE)
