"""Referral risk: where a case belongs in the dermatologist's queue, and why.

score (0-100) = 100 x the highest calibrated malignancy probability among the case's
dermoscopic images: the BCC head's probability, or, for models with a diagnosis head, the
probability mass on the malignant and premalignant classes (melanoma + BCC + akiec/SCC) when
that is higher. Then:
  suspected melanoma (melanoma probability at or above the card's melanoma operating point,
    chosen for 90% sensitivity out of fold): at least 75 + 25 x p, so urgent (two-week-wait)
    whatever the BCC head says: a melanoma must never wait in the low tier as "not BCC".
  suspected SCC / actinic keratosis (akiec at or above its operating point): at least
    40 + 40 x p, so at least routine.
  + 15 ulceration found as validated evidence (an ulcerated BCC is established and growing)
  + 10 GP reports bleeding          + 5 GP reports change
  + 10 high-risk site (nose, eyelid, lip, ear, face: delay costs function and appearance)
  +  5 age 80 or over
Escalations never lower priority; they lift the case to at least routine and flag it for a
human, because the AI's reading is in doubt:
  - head/rule disagreement (the BCC head and the dermoscopic-pattern rule differ)
  - image quality too low to trust (blurred, under- or over-exposed: ask for a retake)
  - AI unavailable (analysis failed): scored from the GP's red flags alone, floor 50.
Tiers: urgent >= 70, routine >= 35, low below. Each tier has a review deadline (SLA). A case
whose deadline is near (``ESCALATE_SHARE`` of its SLA has passed) or gone is served by
deadline before any case ordered by score, so no case waits past its deadline behind newer
high-risk ones.
"""

from __future__ import annotations

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


def _highest(findings: list[ImageFinding], code: str) -> float:
    return max((f.diagnosis_probabilities or {}).get(code, 0.0) for f in findings)


def assess(findings: list[ImageFinding], *, bleeding: bool, changed: bool, body_site: str,
           age: int, received_at: datetime, ai_available: bool = True,
           operating_points: dict | None = None) -> Risk:
    reasons: list[str] = []
    attention = False
    points = operating_points or {}
    if ai_available and findings:
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
    else:
        score = 0.0
        reasons.append("AI unavailable: manual review needed")
        attention = True
    if bleeding:
        score += 10
        reasons.append("bleeding reported (+10)")
    if changed:
        score += 5
        reasons.append("change reported (+5)")
    if body_site in HIGH_RISK_SITES:
        score += 10
        reasons.append(f"high-risk site: {body_site} (+10)")
    if age >= 80:
        score += 5
        reasons.append("age 80 or over (+5)")
    if ai_available and any(not f.agreement for f in findings):
        attention = True
        reasons.append("AI diagnosis and dermoscopic patterns disagree: needs a human read")
        score = max(score, ATTENTION_FLOOR)
    bad = sorted({i for f in findings for i in f.quality_issues})
    if bad:
        attention = True
        reasons.append(f"image quality: {', '.join(bad)} (retake may be needed)")
        score = max(score, ATTENTION_FLOOR)
    if not ai_available:
        score = max(score, AI_UNAVAILABLE_FLOOR)
    score = round(min(score, 100.0), 1)
    tier, sla = next((name, sla) for name, floor, sla in TIERS if score >= floor)
    return Risk(score=score, tier=tier, reasons=reasons, needs_attention=attention,
                due_at=received_at + sla, escalate_at=received_at + sla * ESCALATE_SHARE)
