"""GP intake and case reading: the use cases behind the form and the JSON API.

Intake order keeps the store and the database consistent: images are validated and cleaned
first (nothing stored on bad input), then written to the object store, then the case, its
images and its analysis job are committed in ONE transaction; if that commit fails the
objects just written are deleted. The job row is the outbox: handing it to the broker happens
after the commit, and if the broker is down the sweeper sends it later.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from . import dicom, intake, jobs, params, permissions
from .case_access import delete_quietly, fetch_object, mark_answer_seen, readable_case
from .errors import NotFound, Unavailable, ValidationError
from .models import AnalysisJob, Case, CaseImage, Prediction, User
from .reviews import clinical_answer
from .runtime import Runtime
from .storage import StorageError
from .vocabulary import BodySite, CaseStatus, ImageKind, JobStatus, Sex, values

log = logging.getLogger(__name__)

BODY_SITES = values(BodySite)
MAX_TEXT = 2000


@dataclass(frozen=True)
class CaseInput:
    patient_pseudonym: str
    age: int
    sex: str
    body_site: str
    duration_months: int | None
    changed: bool
    bleeding: bool
    gp_question: str


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    # dermoscopic or clinical; empty: a DICOM object's class decides, anything else is dermoscopic
    kind: str = "dermoscopic"


def parse_case_fields(form: Mapping) -> CaseInput:
    pseudonym = str(form.get("patient_pseudonym", "")).strip()
    if not pseudonym:
        raise ValidationError("patient_pseudonym is required (a reference, not the name)", "patient_pseudonym")
    if len(pseudonym) > 64:
        raise ValidationError("patient_pseudonym must be at most 64 characters", "patient_pseudonym")
    age = params.whole_number(form, "age")
    if age is None:
        raise ValidationError("age is required, a whole number of years", "age")
    if not 0 <= age <= 120:
        raise ValidationError("age must be between 0 and 120", "age")
    sex = str(form.get("sex", "")).strip().lower()
    if sex not in values(Sex):
        raise ValidationError(f"sex must be one of {', '.join(values(Sex))}", "sex")
    site = str(form.get("body_site", "")).strip().lower()
    if site not in BODY_SITES:
        raise ValidationError(f"body_site must be one of {', '.join(BODY_SITES)}", "body_site")
    duration = params.whole_number(form, "duration_months")
    if duration is not None and not 0 <= duration <= 1200:
        raise ValidationError("duration_months must be between 0 and 1200", "duration_months")
    question = str(form.get("gp_question", "")).strip()
    if len(question) > MAX_TEXT:
        raise ValidationError(f"gp_question must be at most {MAX_TEXT} characters", "gp_question")
    return CaseInput(pseudonym, age, Sex(sex), BodySite(site), duration, params.flag(form, "changed"),
                     params.flag(form, "bleeding"), question)


def submit_case(rt: Runtime, gp: User, form: Mapping, uploads: list[Upload],
                external_ref: str | None = None) -> Case:
    """Validate, store and commit the case, then hand its analysis job to the workers.

    ``external_ref``: the sender's own reference for the referral; a second submission with the
    same reference from the same GP returns the first case and stores nothing."""
    return submit_referral(rt, gp, form, uploads, external_ref)[0]


def submit_referral(rt: Runtime, gp: User, form: Mapping, uploads: list[Upload],
                    external_ref: str | None = None) -> tuple[Case, bool]:
    """``submit_case``, and whether this call created the case (False: the same referral).

    A repeat is found by the unique (GP, external_ref) constraint at commit, not by a query
    first: repeats are rare (a sender's retry), so the common path saves a round trip and
    a repeat pays for writing and removing its images again."""
    permissions.require(gp, permissions.SUBMIT_CASES)
    facts = [dicom.facts(up.data) for up in uploads]
    fields = parse_case_fields(with_dicom_facts(form, [f for f in facts if f]))
    uploads = [replace(up, kind=up.kind or (ImageKind.DERMOSCOPIC if f is None or f.dermoscopic
                                            else ImageKind.CLINICAL).value)
               for up, f in zip(uploads, facts)]
    if not uploads:
        raise ValidationError("at least one image is required", "images")
    if len(uploads) > rt.settings.max_images_per_case:
        raise ValidationError(f"at most {rt.settings.max_images_per_case} images per case", "images")
    _within_decode_budget(uploads)
    cleaned = []
    for i, up in enumerate(uploads):
        if up.kind not in values(ImageKind):
            raise ValidationError(f"image kind must be one of {', '.join(values(ImageKind))}",
                                  f"images[{i}]")
        try:
            cleaned.append(intake.clean(up.data))
        except intake.ImageDecodeError as exc:
            error = ValidationError(f"{up.filename or 'image'}: {exc.message}", f"images[{i}]")
            error.status = exc.status      # 415 for a DICOM encoding or class not read here
            raise error from exc
    if not any(u.kind == ImageKind.DERMOSCOPIC for u in uploads):
        raise ValidationError("at least one dermoscopic image is required", "images")

    keys: list[str] = []
    try:
        for img in cleaned:
            ext = "jpg" if img.media_type == "image/jpeg" else "png"
            key = f"images/{secrets.token_hex(16)}.{ext}"
            rt.store.put(key, img.data, img.media_type)
            keys.append(key)
    except StorageError as exc:
        delete_quietly(rt, keys, "image object")
        raise Unavailable("image storage is unavailable; the case was not saved, please retry") from exc

    try:
        with rt.sessions() as session, session.begin():
            case = Case(gp_id=gp.id, status=CaseStatus.RECEIVED, ai_available=True,
                        needs_attention=False, external_ref=external_ref,
                        patient_key=patient_key(gp.id, fields.patient_pseudonym), **fields.__dict__)
            session.add(case)
            session.flush()
            for i, (img, up, key, f) in enumerate(zip(cleaned, uploads, keys, facts)):
                session.add(CaseImage(case_id=case.id, position=i, object_key=key, sha256=img.sha256,
                                      size=img.size, media_type=img.media_type, width=img.width,
                                      height=img.height, kind=up.kind, origin=origin(f)))
            job = AnalysisJob(case_id=case.id, status=JobStatus.PENDING, attempts=0, dispatches=0)
            session.add(job)
            session.flush()
            job_id = job.id
    except IntegrityError:
        delete_quietly(rt, keys, "image object")
        existing = None if external_ref is None else by_external_ref(rt, gp, external_ref)
        if existing is None:
            raise
        return existing, False   # the same referral, committed meanwhile by a concurrent request
    except SQLAlchemyError as exc:
        delete_quietly(rt, keys, "image object")
        log.error("case intake failed in the database: %s", exc)
        raise Unavailable("the database is unavailable; the case was not saved, please retry") from exc

    jobs.dispatch(rt, job_id)
    return case, True


def patient_key(gp_id: int, pseudonym: str) -> str:
    """The id of the case's patient as FHIR readers see it (Patient/<key>): one per GP and
    pseudonym, and not the pseudonym itself, which a URL would carry into access logs.
    (Migration 0011 computes the same for the cases it found.)"""
    return hashlib.sha256(f"{gp_id}\0{pseudonym}".encode()).hexdigest()[:32]


def by_external_ref(rt: Runtime, gp: User, ref: str) -> Case | None:
    with rt.read() as session:
        return session.scalar(select(Case).where(Case.gp_id == gp.id, Case.external_ref == ref))


def with_dicom_facts(form: Mapping, facts: list) -> Mapping:
    """The form, with age, sex and body site taken from the first DICOM image that states them
    where the form leaves them out: a device's header says what the GP would retype."""
    if not facts:
        return form
    out = {k: form.get(k) for k in form}
    for key, attr in (("age", "age"), ("sex", "sex"), ("body_site", "body_site")):
        if str(out.get(key) or "").strip():
            continue
        value = next((getattr(f, attr) for f in facts if getattr(f, attr) is not None), None)
        if value is not None:
            out[key] = str(value)
    return out


def origin(facts) -> dict | None:
    """What a case image keeps of where it came from: nothing for JPEG/PNG; for DICOM the
    object's class, whether it is dermoscopic and the acquisition device (no identifier)."""
    if facts is None:
        return None
    return {"format": "dicom", "sop_class": facts.sop_class, "dermoscopic": facts.dermoscopic,
            "device": facts.device}


# What one case may cost to decode, read from the headers before anything is decoded: six
# small 16-bit 6300x6300 PNGs (0.5 MB on the wire) would otherwise take ~2 GB and ~20 s.
MAX_CASE_MEGAPIXELS = 60
MAX_CASE_DECODED_MB = 256


def _within_decode_budget(uploads: list[Upload]) -> None:
    pixels = decoded = 0
    for up in uploads:
        p, b = intake.decode_cost(up.data)
        pixels, decoded = pixels + p, decoded + b
    if pixels > MAX_CASE_MEGAPIXELS * 1_000_000 or decoded > MAX_CASE_DECODED_MB * 1_000_000:
        raise ValidationError(
            f"the images of one case may hold at most {MAX_CASE_MEGAPIXELS} megapixels and "
            f"{MAX_CASE_DECODED_MB} MB decoded; these hold {pixels / 1e6:.0f} megapixels and "
            f"{decoded / 1e6:.0f} MB: send smaller pictures", "images")


def get_case(rt: Runtime, user: User, case_id: str) -> dict:
    with rt.read() as session:
        case = readable_case(session, user, case_id)
        predictions = session.scalars(select(Prediction).where(Prediction.case_id == case.id)
                                      .order_by(Prediction.created_at)).all()
        view = case_view(case, predictions)
        view["answer"] = clinical_answer(session, case_id) if case.answered_at else None
    if view["new_answer"] and user.role in permissions.OWN_CASES_ONLY:
        mark_answer_seen(rt, case_id)
    return view


def get_image(rt: Runtime, user: User, case_id: str, image_id: str) -> tuple[bytes, str]:
    with rt.read() as session:
        case = readable_case(session, user, case_id)
        image = next((i for i in case.images if i.id == image_id), None)
        if image is None:
            raise NotFound(f"no image {image_id} in case {case_id}")
        key, media_type = image.object_key, image.media_type
    return fetch_object(rt, key), media_type


def get_map(rt: Runtime, user: User, case_id: str, prediction_id: str, target: str) -> bytes:
    """The overlay of one map on the analysed crop (PNG). Predictions stored before the map
    array kept their overlay objects; newer ones render it on request (cached in memory)."""
    with rt.read() as session:
        readable_case(session, user, case_id)
        pred = session.get(Prediction, prediction_id)
        if pred is None or pred.case_id != case_id or target not in map_targets(pred) or not pred.in_scope:
            raise NotFound(f"no map {target} for prediction {prediction_id}")
        if target in pred.maps:
            key = pred.maps[target]["key"]
            return fetch_object(rt, key)
        image_key = session.get(CaseImage, pred.image_id).object_key
        array, index = pred.map_array, pred.map_array["targets"].index(target)
    cache_key = (array["sha256"], index)
    png = _overlays.get(cache_key)
    if png is None:
        from .diagnosis.preprocess import prepare
        from .diagnosis.render import decode_map_array, overlay_png

        maps = decode_map_array(fetch_object(rt, array["key"]))
        png = overlay_png(prepare(fetch_object(rt, image_key), array["shape"][-1]).rgb, maps[index])
        _overlays.put(cache_key, png)
    return png


class _LRU:
    """A small bounded cache of rendered overlays, per process. Kept in memory rather than in
    the object store: the store holds only what the audit chain vouches for."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_overlays = _LRU(256)


def map_targets(pred: Prediction) -> list[str]:
    """The targets with a map, in the model's order (BCC, then the patterns)."""
    return list(pred.map_array["targets"]) if pred.map_array else sorted(pred.maps)


def _prediction(session: Session, user: User, case_id: str, prediction_id: str) -> Prediction:
    readable_case(session, user, case_id)
    pred = session.get(Prediction, prediction_id)
    if pred is None or pred.case_id != case_id:
        raise NotFound(f"no prediction {prediction_id} in case {case_id}")
    return pred


def get_analysed_crop(rt: Runtime, user: User, case_id: str, prediction_id: str) -> bytes:
    """The square crop the model saw (PNG): the base the map layers and drawn regions refer to."""
    from .diagnosis.preprocess import prepare
    from .diagnosis.render import rgb_png

    with rt.read() as session:
        pred = _prediction(session, user, case_id, prediction_id)
        image = session.get(CaseImage, pred.image_id)
        if not pred.map_array:
            raise NotFound("this prediction predates map layers; see its overlays")
        key, size = image.object_key, pred.map_array["shape"][-1]
    return rgb_png(prepare(fetch_object(rt, key), size).rgb)


def get_map_layer(rt: Runtime, user: User, case_id: str, prediction_id: str, target: str) -> bytes:
    """One target's map alone as an RGBA layer (PNG), rendered on request from the map array."""
    from .diagnosis.render import decode_map_array, heat_layer_png

    with rt.read() as session:
        pred = _prediction(session, user, case_id, prediction_id)
        if not pred.map_array or target not in pred.map_array["targets"] or not pred.in_scope:
            raise NotFound(f"no map layer {target} for prediction {prediction_id}")
        key, index = pred.map_array["key"], pred.map_array["targets"].index(target)
    return heat_layer_png(decode_map_array(fetch_object(rt, key))[index])


def list_cases(rt: Runtime, user: User, limit: int = 100) -> list[dict]:
    permissions.require(user, permissions.READ_CASES)
    query = select(Case).options(selectinload(Case.images)).order_by(Case.created_at.desc()).limit(limit)
    if user.role in permissions.OWN_CASES_ONLY:
        query = query.where(Case.gp_id == user.id)
    with rt.read() as session:
        return [case_view(c) for c in session.scalars(query)]


def case_view(case: Case, predictions: list[Prediction] | None = None) -> dict:
    out = {
        "id": case.id, "status": case.status, "created_at": case.created_at.isoformat(),
        "patient_pseudonym": case.patient_pseudonym, "age": case.age, "sex": case.sex,
        "body_site": case.body_site, "duration_months": case.duration_months,
        "changed": case.changed, "bleeding": case.bleeding, "gp_question": case.gp_question,
        "ai_available": case.ai_available,
        "risk": None if case.risk_score is None else {
            "score": case.risk_score, "tier": case.risk_tier, "reasons": case.risk_reasons,
            "needs_attention": case.needs_attention,
            "due_at": case.due_at.isoformat() if case.due_at else None},
        "claimed": case.claimed_by is not None,
        "answered_at": case.answered_at.isoformat() if case.answered_at else None,
        "new_answer": case.answered_at is not None and (
            case.answer_seen_at is None or case.answer_seen_at < case.answered_at),
        "images": [{"id": i.id, "kind": i.kind, "media_type": i.media_type, "width": i.width,
                    "height": i.height, "sha256": i.sha256, "size": i.size, "origin": i.origin}
                   for i in case.images],
    }
    if predictions is not None:
        out["predictions"] = [prediction_view(p) for p in predictions]
    return out


def prediction_view(p: Prediction) -> dict:
    """What a reader of the case sees of one prediction. An image the scope gate refused
    shows its verdict, reason and hint only: no probability, pattern, evidence or map, since
    the dermoscopic read does not apply to it (the audit record keeps the numbers)."""
    view = {"id": p.id, "image_id": p.image_id, "model": {"name": p.model_name, "version": p.model_version},
            "scope": p.scope, "ai_applicable": p.in_scope, "clinical": p.clinical, "quality": p.quality}
    if not p.in_scope:
        return {**view, "bcc_probability": None, "diagnosis": p.diagnosis, "diagnosis_probabilities": None,
                "pattern_probabilities": {}, "patterns_present": [], "evidence_patterns": [],
                "map_numbers": {}, "maps": []}
    return {**view, "bcc_probability": p.bcc_probability, "diagnosis": p.diagnosis,
            "diagnosis_probabilities": p.diagnosis_probabilities,
            "pattern_probabilities": p.pattern_probabilities, "patterns_present": p.patterns_present,
            "evidence_patterns": p.clinical.get("evidence_patterns", sorted(p.pattern_probabilities)),
            "map_numbers": p.map_numbers, "maps": map_targets(p)}
