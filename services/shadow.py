"""Shadow runs: the registry's ``shadow`` model reads the live cases the champion has
analysed, on its own queue (``shadow``) and workers, so it never delays the champion's
results. Its readings (``ShadowReading``: per dermoscopic image what the risk score reads)
are stored apart from predictions: never in the referral queue, never on a GP's or a case's
page; the ML engineer and auditors compare them (services/comparison.py).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import registry
from .models import AnalysisJob, CaseImage, ShadowReading, utcnow
from .risk import evidence_found
from .runtime import Runtime
from .vocabulary import ImageKind

log = logging.getLogger(__name__)
_lock = threading.Lock()


def request(rt: Runtime, job_id: str) -> bool:
    """After the champion's analysis job: ask for the shadow's reading of its case, if there
    is a shadow (looked up from the cache first: without one the job costs nothing more).
    Best effort: a lost request is a case the comparison does not have, nothing more."""
    model = registry.shadow_model(rt)
    if model is None:
        return False
    with rt.read() as s:
        case_id = s.scalar(select(AnalysisJob.case_id).where(AnalysisJob.id == job_id))
    if case_id is None:
        return False
    try:
        from .broker import request_shadow_reading
        request_shadow_reading(rt.sender, case_id, model.id)
        return True
    except Exception as exc:  # any transport error
        log.info("could not request the shadow reading of case %s: %s", case_id, exc)
        return False


def finding(result) -> dict:
    """What the risk score reads of one image's analysis (risk.ImageFinding's fields)."""
    summary = result.summary()
    scope = summary.get("scope") or {}
    return {"bcc_probability": result.bcc_probability,
            "patterns_present": evidence_found(summary["clinical"]),
            "agreement": summary["clinical"]["agreement"], "quality_issues": summary["quality"]["issues"],
            "diagnosis_probabilities": result.diagnosis_probabilities,
            "in_scope": bool(scope.get("applicable", True)), "scope_reason": scope.get("reason", "")}


def _engine(rt: Runtime, model: registry.Champion):
    """The shadow's engine in this process, loaded once per version (the previous one let go)."""
    with _lock:
        loaded = rt.__dict__.get("_shadow_engine")
        if loaded is None or loaded[0] != model.weights_sha256:
            from .diagnosis.engine import Engine
            loaded = (model.weights_sha256, Engine.load(registry.fetch(rt, model)))
            rt.__dict__["_shadow_engine"] = loaded
            log.info("shadow model %s %s loaded", model.name, model.version)
        return loaded[1]


def read_case(rt: Runtime, case_id: str, version_id: str) -> str:
    """The shadow's reading of one case, once: "done", or "skipped" (already read, or the
    version is no longer the shadow)."""
    found = registry.by_id(rt, version_id)
    if found is None or found[1] != registry.SHADOW:
        return "skipped"
    model = found[0]
    with rt.read() as s:
        if s.scalar(select(ShadowReading.id).where(ShadowReading.case_id == case_id,
                                                   ShadowReading.model_version_id == version_id)):
            return "skipped"
        keys = list(s.scalars(select(CaseImage.object_key).where(
            CaseImage.case_id == case_id, CaseImage.kind == ImageKind.DERMOSCOPIC).order_by(CaseImage.position)))
    if not keys:
        return "skipped"
    results = _engine(rt, model).analyse([rt.store.get(k) for k in keys])
    try:
        with rt.transaction() as s:
            s.add(ShadowReading(case_id=case_id, model_version_id=version_id,
                                findings=[finding(r) for r in results], created_at=utcnow()))
    except IntegrityError:
        return "skipped"          # another delivery stored it first
    return "done"
