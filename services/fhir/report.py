"""The case as FHIR: DiagnosticReport (one version per event), its Observations, the model
as a Device, a Provenance per version, the referral (ServiceRequest) and the pseudonymous
Patient. Pure functions of the rows (``CaseFacts``); web/ and the CLI read and serve them.

Who said what stays apart: the AI's findings are Observations with ``device`` = the model
and status ``preliminary``; the dermatologist's diagnosis is an Observation with a
``performer`` and status ``final``; the report's ``performer`` is the model,
``resultsInterpreter`` the dermatologist, ``conclusion`` the dermatologist's words once
reviewed (the AI's summary stays as a ``note`` authored by the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fhir.resources.diagnosticreport import DiagnosticReport
from fhir.resources.patient import Patient
from fhir.resources.provenance import Provenance
from fhir.resources.servicerequest import ServiceRequest
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..diagnosis.patterns import PATTERN_NAMES, PATTERNS
from ..models import AnalysisJob, Case, ExplanationRecord, Prediction, Review, User
from ..reviews import primary_of
from ..vocabulary import DIAGNOSIS_NAMES, MANAGEMENT_NAMES, JobStatus, ReviewPurpose
from . import codes, valid
from .codes import concept, diagnosis_concept, probability

REGISTERED, PRELIMINARY, FINAL, AMENDED = "registered", "preliminary", "final", "amended"


@dataclass(frozen=True)
class Version:
    number: int
    status: str        # the DiagnosticReport status of this version
    at: datetime
    event: str         # received | analysed | analysis_failed | reviewed | amended
    analysed: bool     # whether the AI's answer is part of this version
    reviews: int       # how many clinical reviews this version includes


@dataclass
class CaseFacts:
    case: Case
    gp: str
    predictions: list[Prediction]
    primary: Prediction | None
    reviews: list[tuple[Review, str]]            # clinical reviews, oldest first, with the reviewer
    records: dict[str, str] = field(default_factory=dict)   # prediction or review id -> record hash
    failure: str | None = None                   # why the analysis failed, when it did


def load(session: Session, case: Case) -> CaseFacts:
    return load_many(session, [case])[0]


def load_many(session: Session, cases: list[Case]) -> list[CaseFacts]:
    """The rows behind each case's report, in a fixed number of queries for a whole page."""
    ids = [c.id for c in cases]
    if not ids:
        return []
    preds: dict[str, list[Prediction]] = {i: [] for i in ids}
    for p in session.scalars(select(Prediction).where(Prediction.case_id.in_(ids)).order_by(Prediction.created_at)):
        preds[p.case_id].append(p)
    reviews: dict[str, list] = {i: [] for i in ids}
    for r, name in session.execute(select(Review, User.username).join(User, User.id == Review.reviewer_id).where(
            Review.case_id.in_(ids), Review.purpose == ReviewPurpose.CLINICAL)
            .order_by(Review.created_at, Review.record_seq)):
        reviews[r.case_id].append((r, name))
    records: dict[str, dict[str, str]] = {i: {} for i in ids}
    for case_id, pred_id, review_id, digest in session.execute(select(
            ExplanationRecord.case_id, ExplanationRecord.prediction_id, ExplanationRecord.review_id,
            ExplanationRecord.record_hash).where(ExplanationRecord.case_id.in_(ids))):
        records[case_id][pred_id or review_id] = digest
    failed = {c.id for c in cases if not preds[c.id] and c.queued_at is not None}
    failures: dict[str, str] = {}
    if failed:
        for case_id, error in session.execute(select(AnalysisJob.case_id, AnalysisJob.last_error).where(
                AnalysisJob.case_id.in_(failed), AnalysisJob.status == JobStatus.FAILED)
                .order_by(AnalysisJob.created_at)):
            failures[case_id] = error or "the analysis failed"
    gps = dict(session.execute(select(User.id, User.username).where(User.id.in_({c.gp_id for c in cases}))).all())
    out = []
    for c in cases:
        out.append(CaseFacts(c, gps.get(c.gp_id, "?"), preds[c.id], primary_of(c, preds[c.id]), reviews[c.id],
                             records[c.id], failures.get(c.id, "the analysis failed") if c.id in failed else None))
    return out


def timeline(f: CaseFacts) -> list[Version]:
    """The report's versions, oldest first: what ``_history`` lists and what meta.versionId
    counts. The analysed or failed version is dated when the case joined the queue."""
    events = [(f.case.created_at, "received")]
    if f.case.queued_at is not None:      # set once, by the analysis or by its failure
        events.append((f.case.queued_at, "analysed" if f.predictions else "analysis_failed"))
    events += [(r.created_at, "reviewed" if i == 0 else "amended") for i, (r, _) in enumerate(f.reviews)]
    events.sort(key=lambda e: e[0])
    out, analysed, reviews = [], False, 0
    for n, (at, event) in enumerate(events, start=1):
        analysed = analysed or event == "analysed"
        reviews += event in ("reviewed", "amended")
        status = (AMENDED if reviews > 1 else FINAL if reviews == 1 else
                  PRELIMINARY if analysed else REGISTERED)
        out.append(Version(n, status, at, event, analysed, reviews))
    return out


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def device(pred: Prediction) -> dict:
    """The model that made the AI's answer: name, version and the hash of its weights."""
    return {"resourceType": "Device", "id": "model",
            "identifier": [{"system": codes.ID_MODEL, "value": pred.model_sha256}],
            "name": [{"value": pred.model_name, "type": "registered-name", "display": True}],
            "version": [{"value": pred.model_version},
                        {"type": {"text": "preprocessing"}, "value": pred.preprocessing_version}],
            "type": [{"text": "AI software: dermoscopic image triage"}]}


def _practitioner(local_id: str, username: str) -> dict:
    return {"resourceType": "Practitioner", "id": local_id,
            "identifier": [{"system": codes.ID_USER, "value": username}]}


def _ai_observations(p: Prediction) -> list[dict]:
    base = {"resourceType": "Observation", "status": "preliminary", "device": {"reference": "#model"},
            "issued": _iso(p.created_at), "derivedFrom": []}
    scope = p.scope or {}
    out = []
    if scope:
        out.append({**base, "id": "scope",
                    "code": concept(codes.CS_OBSERVATION, "scope-verdict", "What the image is (scope gate)"),
                    "valueCodeableConcept": concept(codes.CS_SCOPE, scope.get("verdict", "dermoscopic")),
                    **({"note": [{"text": scope["reason"]}]} if scope.get("reason") else {})})
    if not p.in_scope:
        return [_strip(o) for o in out]      # the dermoscopic read does not apply: no numbers
    out.append({**base, "id": "bcc", "code": concept(codes.CS_OBSERVATION, "bcc-probability",
                                                     "Probability of basal cell carcinoma"),
                "valueQuantity": probability(p.bcc_probability)})
    if p.diagnosis_probabilities:
        out.append({**base, "id": "diagnosis",
                    "code": concept(codes.CS_OBSERVATION, "diagnosis-probabilities",
                                    "Probability of each diagnosis"),
                    "component": [{"code": diagnosis_concept(dx), "valueQuantity": probability(v)}
                                  for dx, v in p.diagnosis_probabilities.items()]})
    evidence = set(p.clinical.get("evidence_patterns", PATTERNS))
    for code in PATTERNS:
        if code not in p.pattern_probabilities:
            continue
        out.append({**base, "id": f"pattern-{code}",
                    "code": concept(codes.CS_PATTERN, code, PATTERN_NAMES[code]),
                    "valueBoolean": code in p.patterns_present,
                    "component": [
                        {"code": concept(codes.CS_OBSERVATION, "probability", "Probability"),
                         "valueQuantity": probability(p.pattern_probabilities[code])},
                        {"code": concept(codes.CS_OBSERVATION, "validated-on-real-images",
                                         "Validated on real images (used as evidence)"),
                         "valueBoolean": code in evidence}]})
    return [_strip(o) for o in out]


def _strip(obs: dict) -> dict:
    if not obs.get("derivedFrom"):
        obs.pop("derivedFrom", None)
    return obs


def _risk_observation(case: Case) -> dict | None:
    if case.risk_score is None:
        return None
    components = [{"code": concept(codes.CS_OBSERVATION, "risk-tier", "Triage tier"),
                   "valueCodeableConcept": concept(codes.CS_RISK_TIER, str(case.risk_tier.value))}]
    components += [{"code": concept(codes.CS_OBSERVATION, "risk-reason", "Reason"), "valueString": str(r)}
                   for r in case.risk_reasons or []]
    return {"resourceType": "Observation", "id": "risk", "status": "preliminary",
            "code": concept(codes.CS_OBSERVATION, "risk-score", "Triage risk score (0-100)"),
            "valueQuantity": {"value": round(float(case.risk_score), 2), "unit": "score", "system": codes.UCUM,
                              "code": "1"},
            "component": components}


def _review_observation(review: Review, local_id: str) -> dict:
    obs = {"resourceType": "Observation", "id": "review", "status": "final",
           "code": concept(codes.CS_OBSERVATION, "dermatologist-diagnosis", "Dermatologist's diagnosis"),
           "performer": [{"reference": f"#{local_id}"}], "issued": _iso(review.created_at),
           "valueCodeableConcept": diagnosis_concept(review.diagnosis.value, review.diagnosis_other),
           "component": [{"code": concept(codes.CS_PATTERN, c, PATTERN_NAMES.get(c, c)),
                          "valueCodeableConcept": concept(f"{codes.BASE}/CodeSystem/pattern-call", v)}
                         for c, v in sorted(review.patterns.items())]}
    if review.management:
        obs["component"].append({"code": concept(codes.CS_OBSERVATION, "management", "Management"),
                                 "valueCodeableConcept": concept(codes.CS_MANAGEMENT, review.management.value,
                                                                 MANAGEMENT_NAMES[review.management])})
    if not obs["component"]:
        del obs["component"]
    return obs


def report(f: CaseFacts, version: Version | None = None, base_url: str = "") -> dict:
    """The DiagnosticReport as it stood at ``version`` (the latest by default), validated."""
    versions = timeline(f)
    v = version or versions[-1]
    case = f.case
    contained, results, notes = [], [], []
    body: dict = {
        "resourceType": "DiagnosticReport", "id": case.id,
        "meta": {"versionId": str(v.number), "lastUpdated": _iso(v.at)},
        "identifier": [{"system": codes.ID_CASE, "value": case.id}],
        "basedOn": [{"reference": f"ServiceRequest/{case.id}"}],
        "status": v.status,
        "category": [{"text": "Dermatology"}],
        "code": concept(codes.CS_REPORT, "teledermatology-triage", "Teledermatology triage report"),
        "subject": {"reference": f"Patient/{case.patient_key}"},
        "effectiveDateTime": _iso(case.created_at),
        "issued": _iso(v.at),
    }
    pred = f.primary if v.analysed else None
    if pred is not None:
        contained.append(device(pred))
        body["performer"] = [{"reference": "#model", "display": f"{pred.model_name} {pred.model_version}"}]
        for obs in _ai_observations(pred):
            contained.append(obs)
            results.append({"reference": f"#{obs['id']}"})
        risk = _risk_observation(case)
        if risk is not None:
            contained.append(risk)
            results.append({"reference": "#risk"})
        ai_text = pred.clinical.get("summary") or ""
        if not pred.in_scope:
            ai_text = f"AI not applicable: {(pred.scope or {}).get('reason', '')}".strip()
        if pred.in_scope and base_url:
            body["presentedForm"] = [
                {"contentType": "image/png", "title": f"Grad-CAM map: {t}",
                 "url": f"{base_url}api/v1/cases/{case.id}/predictions/{pred.id}/layers/{t}"}
                for t in ((pred.map_array or {}).get("targets") or sorted(pred.maps))]
    elif v.event != "received" and f.failure and v.number >= 2:
        ai_text = "AI analysis failed; a dermatologist reads the images without it."
    else:
        ai_text = ""
    if v.reviews:
        review, reviewer = f.reviews[v.reviews - 1]
        contained.append(_practitioner("reviewer", reviewer))
        contained.append(_review_observation(review, "reviewer"))
        results.append({"reference": "#review"})
        body["resultsInterpreter"] = [{"reference": "#reviewer", "display": reviewer}]
        dx_name = review.diagnosis_other if review.diagnosis_other else DIAGNOSIS_NAMES[review.diagnosis]
        text = f"Dermatologist: {dx_name}."
        if review.management:
            text += f" {MANAGEMENT_NAMES[review.management]}."
        if review.message:
            text += f" {review.message}"
        if review.amendment_reason:
            text += f" (Amended: {review.amendment_reason})"
        body["conclusion"] = text
        body["conclusionCode"] = [diagnosis_concept(review.diagnosis.value, review.diagnosis_other)]
        if ai_text:
            notes.append({"authorReference": {"reference": "#model"} if pred is not None else None,
                          "text": f"AI: {ai_text}"})
    else:
        if ai_text:
            body["conclusion"] = f"AI (preliminary, not reviewed): {ai_text}" if pred is not None else ai_text
        if pred is not None and pred.in_scope and pred.diagnosis_probabilities:
            top = max(pred.diagnosis_probabilities, key=pred.diagnosis_probabilities.get)
            body["conclusionCode"] = [diagnosis_concept(top)]
        elif pred is not None and pred.in_scope and pred.diagnosis == "BCC":
            body["conclusionCode"] = [diagnosis_concept("bcc")]     # a model with the BCC head only
    if notes:
        body["note"] = [{k: v for k, v in n.items() if v is not None} for n in notes]
    if contained:
        body["contained"] = contained
    if results:
        body["result"] = results
    return valid(DiagnosticReport, body)


def provenance(f: CaseFacts, v: Version) -> dict:
    """Who made version ``v`` of the report, when, and from which audit record."""
    contained, agents, entities = [], [], []
    if v.event == "received":
        contained.append(_practitioner("gp", f.gp))
        agents.append({"type": concept("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                       "author"), "who": {"reference": "#gp", "display": f.gp}})
    elif v.event in ("analysed", "analysis_failed"):
        if f.primary is not None:
            contained.append(device(f.primary))
            agents.append({"type": concept("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                           "performer"), "who": {"reference": "#model"}})
            digest = f.records.get(f.primary.id)
            if digest:
                entities.append({"role": "source", "what": {"identifier": {"system": codes.ID_AUDIT,
                                                                           "value": digest}}})
        else:
            agents.append({"type": concept("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                           "performer"), "who": {"display": "DermaTriage analysis worker"}})
    else:
        review, reviewer = f.reviews[v.reviews - 1]
        contained.append(_practitioner("reviewer", reviewer))
        agents.append({"type": concept("http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                       "verifier" if v.event == "reviewed" else "author"),
                       "who": {"reference": "#reviewer", "display": reviewer}})
        digest = f.records.get(review.id)
        if digest:
            entities.append({"role": "source", "what": {"identifier": {"system": codes.ID_AUDIT, "value": digest}}})
    if v.number > 1:
        entities.append({"role": "revision",
                         "what": {"reference": f"DiagnosticReport/{f.case.id}/_history/{v.number - 1}"}})
    body = {"resourceType": "Provenance", "id": f"{f.case.id}-{v.number}",
            "target": [{"reference": f"DiagnosticReport/{f.case.id}/_history/{v.number}"}],
            "occurredDateTime": _iso(v.at), "recorded": _iso(v.at),
            "activity": {**concept("http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                   "CREATE" if v.number == 1 else "UPDATE"), "text": v.event.replace("_", " ")},
            "agent": agents, "contained": contained}
    if entities:
        body["entity"] = entities
    if not contained:
        del body["contained"]
    return valid(Provenance, body)


def patient(case: Case) -> dict:
    return valid(Patient, {"resourceType": "Patient", "id": case.patient_key,
                           "identifier": [{"system": codes.ID_PSEUDONYM, "value": case.patient_pseudonym}],
                           "gender": case.sex.value})


def service_request(f: CaseFacts) -> dict:
    case = f.case
    identifier = [{"system": codes.ID_CASE, "value": case.id}]
    if case.external_ref and case.external_ref.startswith("fhir:"):
        system, _, value = case.external_ref[5:].partition("|")
        identifier.insert(0, {"system": system, "value": value} if system else {"value": value})
    reasons = []
    for flag in ("changed", "bleeding"):
        if getattr(case, flag):
            sct, display = codes.RED_FLAG_SNOMED[flag]
            reasons.append({"concept": {"coding": [{"system": codes.SNOMED, "code": sct, "display": display},
                                                   {"system": codes.CS_RED_FLAG, "code": flag,
                                                    "display": codes.RED_FLAGS[flag]}],
                                        "text": codes.RED_FLAGS[flag]}})
    body = {"resourceType": "ServiceRequest", "id": case.id, "identifier": identifier,
            "status": "completed" if f.reviews else "active", "intent": "order",
            "code": {"concept": concept(codes.CS_REPORT, "teledermatology-referral", "Teledermatology referral")},
            "subject": {"reference": f"Patient/{case.patient_key}"},
            "authoredOn": _iso(case.created_at),
            "requester": {"display": f.gp},
            "bodySite": [concept(codes.CS_BODY_SITE, case.body_site.value)]}
    if reasons:
        body["reason"] = reasons
    if case.gp_question:
        body["note"] = [{"text": case.gp_question}]
    return valid(ServiceRequest, body)
