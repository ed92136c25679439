"""Human-AI monitoring for the ML engineer and the clinical lead, per model version.

The reviewers' decisions are the reference here: the AI's sensitivity and specificity per
diagnosis and per pattern against them (with counts), calibration of the BCC and melanoma
probabilities against the reviewed outcome, the override rate and its reasons, the
Grad-CAM maps against the regions experts drew (SCIENCE.md s.4), and how long cases waited
for a review per tier, with SLA breaches. Only each case's current clinical review counts
(an amendment replaces what it amends); labelling-set reads are not clinical decisions.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict

import numpy as np
from sqlalchemy import select

from . import permissions
from .models import Case, ModelEvent, ModelVersion, Review, User, utcnow
from .runtime import Runtime
from .vocabulary import Diagnosis, ReviewPurpose, RiskTier, values

REGION_FIGURES = ("mean_inside", "mean_outside", "pointing_game", "relevance_mass")


def _current_clinical(session) -> list[Review]:
    rows = session.scalars(select(Review).where(Review.purpose == ReviewPurpose.CLINICAL)).all()
    amended = {r.amends_id for r in rows}
    return [r for r in rows if r.id not in amended]


def _first_clinical(session) -> dict[str, Review]:
    first: dict[str, Review] = {}
    for r in session.scalars(select(Review).where(Review.purpose == ReviewPurpose.CLINICAL)
                             .order_by(Review.created_at)):
        first.setdefault(r.case_id, r)
    return first


def _sens_spec(truth: list[bool], said: list[bool]) -> dict:
    from .diagnosis.metrics import sensitivity_specificity
    return {**sensitivity_specificity(np.array(truth, bool), np.array(said, bool)), "n": len(truth)}


def _calibration(truth: list[bool], p: list[float]) -> dict | None:
    if not truth:
        return None
    from .diagnosis.metrics import expected_calibration_error
    return {**expected_calibration_error(np.array(truth, bool), np.array(p, float), bins=5), "n": len(truth)}


def model_report(rows: list[Review]) -> dict:
    """The figures for one model version from its current clinical reviews."""
    # Cases whose image the scope gate refused carry no AI read to score.
    with_ai = [r for r in rows if r.ai and r.ai.get("applicable", True)]
    diagnoses = {}
    has_head = any(r.ai.get("diagnosis") for r in with_ai)
    for d in values(Diagnosis):
        if d == Diagnosis.OTHER:
            continue
        if has_head:
            pairs = [(r.diagnosis == d, r.ai.get("diagnosis") == d) for r in with_ai if r.ai.get("diagnosis")]
        elif d == Diagnosis.BCC:
            pairs = [(r.diagnosis == d, bool(r.ai.get("says_bcc"))) for r in with_ai]
        else:
            continue
        if pairs:
            diagnoses[d] = _sens_spec([t for t, _ in pairs], [s for _, s in pairs])
    patterns = {}
    codes = sorted({c for r in with_ai for c in r.patterns})
    for code in codes:
        pairs = [(r.patterns[code] == "present", code in r.ai.get("patterns_present", []))
                 for r in with_ai if r.patterns.get(code) in ("present", "absent")]
        validated = any(code in r.ai.get("evidence_patterns", []) for r in with_ai)
        if pairs:
            patterns[code] = {**_sens_spec([t for t, _ in pairs], [s for _, s in pairs]),
                              "validated": validated}
    calibration = {
        "BCC": _calibration([r.diagnosis == Diagnosis.BCC for r in with_ai],
                            [r.ai["bcc_probability"] for r in with_ai]),
        "mel": _calibration([r.diagnosis == Diagnosis.MEL for r in with_ai if r.ai.get("diagnosis_probabilities")],
                            [r.ai["diagnosis_probabilities"].get("mel", 0.0) for r in with_ai
                             if r.ai.get("diagnosis_probabilities")]),
    }
    overrides = [r for r in with_ai if r.agreement and r.agreement.get("diagnosis") is False]
    regions: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in with_ai:
        for code, figures in ((r.agreement or {}).get("regions") or {}).items():
            for k in REGION_FIGURES:
                regions[code][k].append(figures[k])
    return {
        "reviewed": len(rows), "with_ai": len(with_ai),
        "diagnosis_agreement": round(sum(1 for r in with_ai if r.agreement and r.agreement["diagnosis"])
                                     / max(1, len(with_ai)), 4),
        "diagnoses": diagnoses, "patterns": patterns, "calibration": calibration,
        "override_rate": round(len(overrides) / max(1, len(with_ai)), 4),
        "override_reasons": Counter(r.override_reason for r in overrides).most_common(10),
        "explanation_vs_expert": {code: {"regions": len(v["mean_inside"]),
                                         **{k: round(float(np.mean(v[k])), 4) for k in REGION_FIGURES}}
                                  for code, v in sorted(regions.items())},
    }


def review_times(session, first: dict[str, Review]) -> dict:
    """Hours from entering the queue to the first review, per tier, and SLA breaches
    (reviewed after the deadline, or still waiting past it now)."""
    now = utcnow()
    out = {}
    cases = {c.id: c for c in session.scalars(select(Case).where(Case.risk_tier.is_not(None)))}
    for tier in values(RiskTier):
        in_tier = [c for c in cases.values() if c.risk_tier == tier]
        hours = sorted((first[c.id].created_at - c.queued_at).total_seconds() / 3600
                       for c in in_tier if c.id in first and c.queued_at)
        breached = sum(1 for c in in_tier if c.id in first and c.due_at and first[c.id].created_at > c.due_at)
        overdue = sum(1 for c in in_tier if c.id not in first and c.due_at and c.due_at < now)
        out[tier] = {"reviewed": len(hours),
                     "median_hours": round(float(np.median(hours)), 2) if hours else None,
                     "p90_hours": round(float(np.percentile(hours, 90)), 2) if hours else None,
                     "sla_breaches": breached, "waiting_past_deadline": overdue}
    return out


def report(rt: Runtime, user: User) -> dict:
    permissions.require(user, permissions.MONITOR)
    with rt.read() as session:
        current = _current_clinical(session)
        by_model: dict[str, list[Review]] = defaultdict(list)
        for r in current:
            key = f"{r.ai['model']['name']} {r.ai['model']['version']}" if r.ai else "no AI result"
            by_model[key].append(r)
        times = review_times(session, _first_clinical(session))
        # Where each version stands in the registry, and since when: a drift after a
        # promotion shows as the new champion's figures beside the retired one's.
        status = {f"{v.name} {v.version}": v.status for v in session.scalars(select(ModelVersion))}
        since = {}
        for e in session.scalars(select(ModelEvent).where(ModelEvent.action.in_(("promote", "override", "rollback")))
                                 .order_by(ModelEvent.id)):
            since[e.label] = e.at.isoformat()
    return {"generated_at": utcnow().isoformat(), "reviewed_cases": len(current),
            "models": {k: {**model_report(v), "registry": {"status": status.get(k), "champion_since": since.get(k)}}
                       for k, v in sorted(by_model.items())},
            "review_times": times}


def to_csv(rep: dict) -> str:
    """One row per figure: model, section, name, metric, value."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "section", "name", "metric", "value"])
    for model, m in rep["models"].items():
        for k in ("reviewed", "with_ai", "diagnosis_agreement", "override_rate"):
            w.writerow([model, "summary", "", k, m[k]])
        for section in ("diagnoses", "patterns", "explanation_vs_expert"):
            for name, figures in m[section].items():
                for k, v in figures.items():
                    w.writerow([model, section, name, k, v])
        for name, cal in m["calibration"].items():
            if cal:
                w.writerow([model, "calibration", name, "ece", cal["ece"]])
                w.writerow([model, "calibration", name, "n", cal["n"]])
        for reason, n in m["override_reasons"]:
            w.writerow([model, "override_reasons", reason, "count", n])
    for tier, t in rep["review_times"].items():
        for k, v in t.items():
            w.writerow(["", "review_times", tier, k, v])
    return buf.getvalue()
