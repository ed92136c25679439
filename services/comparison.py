"""Two model versions on the same live cases: what would change if one replaced the other.

A model's reading of a case is what its risk score reads (risk.ImageFinding per dermoscopic
image): from its predictions while it served, or from its shadow readings while it was
watched. On the cases both read:
- the referral tiers each gives (the case's own red flags applied the same way), how many
  agree, and how many would move up or down;
- on the cases a dermatologist has reviewed (the current clinical review), each model's AUC
  for "malignant or premalignant" (melanoma, BCC, SCC/AK) with a bootstrap interval, the
  paired difference (shadow minus champion) with its interval, and calibration (Brier score,
  ECE) of each model's probability;
- the cases where the two disagree most.
The promotion gate (services/registry.py) reads ``non_inferior`` from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from .diagnosis.metrics import auc, auc_with_ci, expected_calibration_error
from .models import Case, CaseImage, ModelVersion, Prediction, Review, ShadowReading
from .risk import MALIGNANT, ImageFinding, Triage, assess, combine, evidence_found
from .runtime import Runtime
from .vocabulary import ReviewPurpose, RiskTier

TIER_RANK = {RiskTier.LOW.value: 0, RiskTier.ROUTINE.value: 1, RiskTier.URGENT.value: 2}
N_BOOT = 1000


@dataclass(frozen=True)
class Reading:
    probability: float | None     # malignant or premalignant, as the model's triage reads it
    score: float
    tier: str
    image_id: str | None          # the image that drove it (for a thumbnail)


def _findings_of_predictions(preds: list[Prediction]) -> list[ImageFinding]:
    return [ImageFinding(p.bcc_probability, evidence_found(p.clinical), p.clinical.get("agreement", True),
                         p.quality.get("issues", []), p.diagnosis_probabilities, in_scope=p.in_scope,
                         scope_reason="" if p.in_scope else (p.scope or {}).get("reason", ""))
            for p in preds]


def _probability(findings: list[ImageFinding], card: dict) -> float | None:
    tri = Triage.from_card(card.get("triage"))
    values = []
    for f in findings:
        if not f.in_scope:
            continue
        dx = f.diagnosis_probabilities or {}
        values.append(tri.probability(f.bcc_probability, dx) if tri else
                      max(f.bcc_probability, combine("diagnosis_mass", f.bcc_probability, dx)))
    return max(values) if values else None


def _reading(case: Case, findings: list[ImageFinding], card: dict, image_id: str | None) -> Reading:
    r = assess(findings, bleeding=case.bleeding, changed=case.changed, body_site=case.body_site, age=case.age,
               received_at=case.created_at, operating_points=card.get("operating_points"),
               triage=card.get("triage"))
    return Reading(_probability(findings, card), r.score, str(r.tier.value if hasattr(r.tier, "value") else r.tier),
                   image_id)


def cases_read(session: Session, version: ModelVersion) -> set[str]:
    """The cases a version read, served or as a shadow (ids only: a champion's predictions
    are many and heavy, and only the cases both models read are loaded)."""
    served = session.scalars(select(Prediction.case_id).where(Prediction.model_sha256 == version.weights_sha256)
                             .distinct())
    watched = session.scalars(select(ShadowReading.case_id).where(ShadowReading.model_version_id == version.id))
    return set(served) | set(watched)


def readings(session: Session, version: ModelVersion,
             case_ids: set[str]) -> dict[str, tuple[list[ImageFinding], str | None]]:
    """case id -> (findings, first image id) for ``case_ids``: from its predictions, and from
    its shadow readings for the cases it did not serve."""
    out: dict[str, tuple[list[ImageFinding], str | None]] = {}
    by_case: dict[str, list[Prediction]] = {}
    for p in session.scalars(select(Prediction).where(Prediction.model_sha256 == version.weights_sha256,
                                                      Prediction.case_id.in_(case_ids))):
        by_case.setdefault(p.case_id, []).append(p)
    for case_id, preds in by_case.items():
        out[case_id] = (_findings_of_predictions(preds), preds[0].image_id)
    for r in session.scalars(select(ShadowReading).where(ShadowReading.model_version_id == version.id,
                                                         ShadowReading.case_id.in_(case_ids))):
        if r.case_id not in out:
            out[r.case_id] = ([ImageFinding(**f) for f in r.findings], None)
    return out


def _truth(session: Session, case_ids: set[str]) -> dict[str, tuple[bool, str]]:
    """case id -> (malignant, the diagnosis) from the current clinical review."""
    rows = session.scalars(select(Review).where(Review.purpose == ReviewPurpose.CLINICAL,
                                                Review.case_id.in_(case_ids))).all()
    replaced = {r.amends_id for r in rows}
    return {r.case_id: (r.diagnosis.value in MALIGNANT, r.diagnosis.value) for r in rows if r.id not in replaced}


def _calibration(truth: np.ndarray, p: np.ndarray) -> dict:
    return {"brier": round(float(np.mean((p - truth) ** 2)), 4),
            "ece": expected_calibration_error(truth, p)["ece"]}


def _paired_difference(truth: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """AUC(b) - AUC(a) on the same cases, with a percentile bootstrap interval (resampling
    cases, stratified by class)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    point = auc(truth, b) - auc(truth, a)
    diffs = []
    for _ in range(N_BOOT):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(auc(truth[idx], b[idx]) - auc(truth[idx], a[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"value": round(float(point), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def compare(rt: Runtime, champion_id: str, shadow_id: str, margin: float, min_reviewed: int,
            top: int = 10) -> dict:
    with rt.read() as s:
        champ, other = s.get(ModelVersion, champion_id), s.get(ModelVersion, shadow_id)
        common = cases_read(s, champ) & cases_read(s, other)
        a, b = readings(s, champ, common), readings(s, other, common)
        both = sorted(set(a) & set(b))
        cases = {c.id: c for c in s.scalars(select(Case).where(Case.id.in_(both)))} if both else {}
        truth = _truth(s, set(both)) if both else {}
        first_image = dict(s.execute(select(CaseImage.case_id, CaseImage.id).where(
            CaseImage.case_id.in_(both), CaseImage.position == 0)).all()) if both else {}
        champ_card, other_card = champ.card, other.card
        labels = (f"{champ.name} {champ.version}", f"{other.name} {other.version}")
    ra = {c: _reading(cases[c], a[c][0], champ_card, first_image.get(c)) for c in both}
    rb = {c: _reading(cases[c], b[c][0], other_card, first_image.get(c)) for c in both}
    matrix: dict[str, dict[str, int]] = {t: {u: 0 for u in TIER_RANK} for t in TIER_RANK}
    up = down = 0
    for c in both:
        matrix[ra[c].tier][rb[c].tier] += 1
        up += TIER_RANK[rb[c].tier] > TIER_RANK[ra[c].tier]
        down += TIER_RANK[rb[c].tier] < TIER_RANK[ra[c].tier]
    agree = sum(matrix[t][t] for t in TIER_RANK)
    out = {"champion": {"id": champion_id, "model": labels[0]}, "shadow": {"id": shadow_id, "model": labels[1]},
           "cases_both_read": len(both),
           "tiers": {"agree": agree, "agreement": round(agree / len(both), 4) if both else None,
                     "would_move_up": up, "would_move_down": down, "matrix": matrix},
           "margin": margin, "min_reviewed": min_reviewed}
    scored = [c for c in both if c in truth and ra[c].probability is not None and rb[c].probability is not None]
    y = np.array([truth[c][0] for c in scored], bool)
    pa = np.array([ra[c].probability for c in scored], float)
    pb = np.array([rb[c].probability for c in scored], float)
    out["reviewed"] = {"cases": len(scored), "malignant": int(y.sum())}
    if len(scored) and 0 < y.sum() < len(y):
        out["reviewed"].update(
            auc={"champion": auc_with_ci(y, pa, n_boot=N_BOOT), "shadow": auc_with_ci(y, pb, n_boot=N_BOOT)},
            difference=_paired_difference(y, pa, pb),
            calibration={"champion": _calibration(y, pa), "shadow": _calibration(y, pb)})
        lower = out["reviewed"]["difference"]["ci95"][0]
        out["non_inferior"] = len(scored) >= min_reviewed and lower >= -margin
        out["why"] = (f"{len(scored)} reviewed cases both read, at least {min_reviewed} needed"
                      if len(scored) < min_reviewed else
                      f"the AUC difference's lower 95% bound {lower:+.4f} is "
                      f"{'within' if lower >= -margin else 'beyond'} the margin -{margin}")
    else:
        out["non_inferior"] = False
        out["why"] = (f"{len(scored)} reviewed cases both read, with both outcomes needed "
                      f"(at least {min_reviewed} cases)")
    ranked = sorted((c for c in both if ra[c].probability is not None and rb[c].probability is not None),
                    key=lambda c: -abs(rb[c].probability - ra[c].probability))
    out["disagreements"] = [
        {"case_id": c, "image_id": ra[c].image_id,
         "champion": {"probability": round(ra[c].probability, 4), "tier": ra[c].tier, "score": ra[c].score},
         "shadow": {"probability": round(rb[c].probability, 4), "tier": rb[c].tier, "score": rb[c].score},
         "review": truth[c][1] if c in truth else None}
        for c in ranked[:top]]
    return out


def thumbnail(rt: Runtime, user, case_id: str) -> tuple[bytes, str]:
    """The first image of a case a shadow model read: what the comparison page shows beside
    the two answers, to the ML engineer and auditors (who read no cases otherwise); the web
    logs each read in the access log."""
    from . import permissions
    from .case_access import fetch_object
    from .errors import NotFound
    permissions.require(user, permissions.VIEW_MODELS)
    with rt.read() as s:
        if s.scalar(select(ShadowReading.id).where(ShadowReading.case_id == case_id).limit(1)) is None:
            raise NotFound(f"no compared case {case_id}")
        image = s.scalar(select(CaseImage).where(CaseImage.case_id == case_id).order_by(CaseImage.position).limit(1))
        key, media = image.object_key, image.media_type
    return fetch_object(rt, key), media
