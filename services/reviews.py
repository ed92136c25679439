"""Dermatologist review: the human decision on a case, set against what the AI said.

A review records the diagnosis, a call on each of the seven patterns, optional regions per
pattern (masks over the analysed crop, kept in the object store), the management and a
message to the GP. It is compared with the AI on the record (agreement per diagnosis and
pattern; overriding the AI's diagnosis needs a reason) and appended to the same hash chain
as the explanation it answers. Reviews are never changed: an amendment is a new review that
names the one it replaces, so the history of a case's answer is a line.

Who sees what: the GP who submitted the case sees the answer (diagnosis, management,
message); dermatologists and auditors see the clinical reviews in full; a labelling review
(one reader's labels in a labelling set, see labelling.py) is seen only by its author and
auditors, so readers stay blind to each other.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit, permissions, subscriptions
from .case_access import delete_quietly, fetch_object, mark_answer_seen, readable_case
from .errors import Conflict, NotFound, Unavailable, ValidationError
from .models import Case, ExplanationRecord, Prediction, Review, User, new_id, utcnow
from .review_input import ReviewInput, mask_png, parse_review
from .runtime import Runtime
from .storage import StorageError
from .vocabulary import DIAGNOSIS_NAMES, MANAGEMENT_NAMES, CaseStatus, Diagnosis, PatternCall, ReviewPurpose, Role

log = logging.getLogger(__name__)


# --- what the AI said --------------------------------------------------------------------------
def primary_prediction(session: Session, case: Case) -> Prediction | None:
    """The AI answer a review is set against: the newest prediction for the case's first
    analysed dermoscopic image (the image the regions are drawn on)."""
    return primary_of(case, session.scalars(select(Prediction).where(Prediction.case_id == case.id)).all())


def primary_of(case: Case, preds: list[Prediction]) -> Prediction | None:
    """``primary_prediction`` among predictions already loaded (a page of FHIR reports)."""
    if not preds:
        return None
    position = {i.id: i.position for i in case.images}
    return min(preds, key=lambda p: (position.get(p.image_id, 99), -p.created_at.timestamp()))


def ai_view(session: Session, pred: Prediction | None) -> dict | None:
    if pred is None:
        return None
    record = session.scalar(select(ExplanationRecord).where(ExplanationRecord.prediction_id == pred.id))
    if not pred.in_scope:
        # The dermoscopic read did not apply: nothing to agree or disagree with.
        return {"prediction_id": pred.id, "image_id": pred.image_id, "applicable": False,
                "scope": pred.scope, "model": {"name": pred.model_name, "version": pred.model_version},
                "record": None if record is None else {"seq": record.seq, "record_hash": record.record_hash}}
    dx = None
    if pred.diagnosis_probabilities:
        dx = max(pred.diagnosis_probabilities, key=pred.diagnosis_probabilities.get)
    evidence = pred.clinical.get("evidence_patterns", sorted(pred.pattern_probabilities))
    return {"prediction_id": pred.id, "image_id": pred.image_id, "applicable": True,
            "model": {"name": pred.model_name, "version": pred.model_version},
            "diagnosis": dx, "diagnosis_probabilities": pred.diagnosis_probabilities,
            "bcc_probability": pred.bcc_probability, "says_bcc": pred.diagnosis == "BCC",
            "patterns_present": list(pred.patterns_present), "evidence_patterns": list(evidence),
            "record": None if record is None else {"seq": record.seq, "record_hash": record.record_hash}}


def agreement(ai: dict | None, decision: ReviewInput) -> dict | None:
    """Per case: does the reader agree with the AI? None where either side gave no call.

    The diagnosis is compared with the AI's most probable of the seven diagnoses; a model
    without a diagnosis head is compared on BCC versus not BCC only."""
    if ai is None or not ai.get("applicable", True):
        return None
    says_bcc = decision.diagnosis == Diagnosis.BCC
    out = {"bcc": says_bcc == ai["says_bcc"]}
    out["diagnosis"] = (decision.diagnosis == ai["diagnosis"]) if ai["diagnosis"] else out["bcc"]
    patterns = {}
    for code, call in decision.patterns.items():
        if call == PatternCall.UNSURE:
            patterns[code] = None
        else:
            patterns[code] = (call == PatternCall.PRESENT) == (code in ai["patterns_present"])
    out["patterns"] = patterns
    return out


def region_figures(maps: np.ndarray, targets: list[str], regions: dict[str, np.ndarray]) -> dict:
    """SCIENCE.md s.4 per drawn region: the map of that pattern against the expert's region
    (mean inside / outside, pointing game, relevance mass), on the analysed crop."""
    if not regions:
        return {}
    import torch

    from .diagnosis.metrics import alignment

    codes = [c for c in sorted(regions) if c in targets]
    if not codes:
        return {}
    size = maps.shape[-1]
    stacked = []
    for c in codes:
        m = regions[c]
        if m.shape != (size, size):
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size),
                                                                               Image.Resampling.NEAREST)) > 127
        stacked.append(m)
    figures = alignment(torch.from_numpy(np.stack([maps[targets.index(c)] for c in codes])),
                        torch.from_numpy(np.stack(stacked)))
    return {c: {k: round(float(figures[k][i]), 4)
                for k in ("mean_inside", "mean_outside", "pointing_game", "relevance_mass")}
            for i, c in enumerate(codes)}


# --- recording ---------------------------------------------------------------------------------
def _latest(session: Session, case_id: str, purpose: ReviewPurpose, reviewer_id: int | None = None,
            set_id: str | None = None) -> Review | None:
    """The review that nothing amends yet (the head of the line), if any."""
    query = select(Review).where(Review.case_id == case_id, Review.purpose == purpose)
    if reviewer_id is not None:
        query = query.where(Review.reviewer_id == reviewer_id)
    if set_id is not None:
        query = query.where(Review.labelling_set_id == set_id)
    rows = session.scalars(query).all()
    amended = {r.amends_id for r in rows}
    heads = [r for r in rows if r.id not in amended]
    return max(heads, key=lambda r: r.created_at) if heads else None


def _store_regions(rt: Runtime, review_id: str, regions: dict[str, np.ndarray]) -> dict:
    stored = {}
    try:
        for code, mask in sorted(regions.items()):
            png = mask_png(mask)
            key = f"regions/{review_id}/{code}.png"
            rt.store.put(key, png, "image/png")
            stored[code] = {"key": key, "sha256": hashlib.sha256(png).hexdigest(),
                            "area": round(float(mask.mean()), 4), "size": int(mask.shape[0])}
    except StorageError as exc:
        delete_quietly(rt, [r["key"] for r in stored.values()], "region mask")
        raise Unavailable("image storage is unavailable; the review was not saved, please retry") from exc
    return stored


def _map_array(rt: Runtime, pred: Prediction | None) -> tuple[np.ndarray, list[str]] | None:
    if pred is None or not pred.map_array:
        return None
    from .diagnosis.render import decode_map_array
    try:
        return decode_map_array(rt.store.get(pred.map_array["key"])), list(pred.map_array["targets"])
    except StorageError:
        log.warning("map array of prediction %s unreadable; region figures skipped", pred.id)
        return None


def record(rt: Runtime, user: User, case_id: str, body: Mapping, purpose: ReviewPurpose,
           check: callable, set_id: str | None = None) -> dict:
    """Validate, store the region masks, then append the review and its audit record in one
    transaction (masks are removed again if it fails). ``check(session, case, head)`` refuses
    a reader who may not record this review (claims, set membership)."""
    decision = parse_review(body, purpose)
    review_id = new_id()
    with rt.read() as session:
        case = session.get(Case, case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        head = _latest(session, case_id, purpose, user.id if purpose == ReviewPurpose.LABELLING else None,
                       set_id)
        check(session, case, head)
        pred = primary_prediction(session, case)
        ai = ai_view(session, pred)
    if head is not None and not decision.amendment_reason:
        raise ValidationError("this case already has a review: an amendment needs amendment_reason",
                              "amendment_reason")
    agreed = agreement(ai, decision)
    if (purpose == ReviewPurpose.CLINICAL and agreed is not None and not agreed["diagnosis"]
            and not decision.override_reason):
        raise ValidationError("overriding the AI's diagnosis needs a reason", "override_reason")
    if purpose != ReviewPurpose.CLINICAL or agreed is None or agreed["diagnosis"]:
        # A reason is the record of an override; text sent with anything else is not one.
        decision = replace(decision, override_reason="")
    if agreed is not None and decision.regions:
        maps = _map_array(rt, pred)
        if maps is not None:
            agreed["regions"] = region_figures(maps[0], maps[1], decision.regions)
    regions = _store_regions(rt, review_id, decision.regions)
    now = utcnow()
    notify = 0
    try:
        with rt.transaction() as session:
            case = session.get(Case, case_id, with_for_update=True)
            now_head = _latest(session, case_id, purpose,
                               user.id if purpose == ReviewPurpose.LABELLING else None, set_id)
            if (now_head and now_head.id) != (head and head.id):
                raise Conflict("the case's review changed while you were writing; reload and retry")
            check(session, case, head)
            answers = [{"seq": r.seq, "record_hash": r.record_hash, "prediction_id": r.prediction_id}
                       for r in session.scalars(select(ExplanationRecord).where(
                           ExplanationRecord.case_id == case_id,
                           ExplanationRecord.prediction_id.is_not(None)).order_by(ExplanationRecord.seq))]
            amends = None
            if head is not None:
                head_record = session.scalar(select(ExplanationRecord).where(
                    ExplanationRecord.review_id == head.id))
                amends = {"review_id": head.id, "record_hash": head_record.record_hash}
            payload = {
                "kind": "review", "review_id": review_id, "case_id": case_id, "purpose": purpose.value,
                "labelling_set_id": set_id, "reviewer": {"id": user.id, "username": user.username},
                "recorded_at": now.isoformat(), "answers": answers, "ai": ai,
                "decision": {"diagnosis": decision.diagnosis.value,
                             "diagnosis_other": decision.diagnosis_other,
                             "patterns": {c: v.value for c, v in decision.patterns.items()},
                             "management": decision.management.value if decision.management else None,
                             "message": decision.message},
                "override_reason": decision.override_reason, "amendment_reason": decision.amendment_reason,
                "agreement": agreed, "regions": {c: {"key": r["key"], "sha256": r["sha256"]}
                                                 for c, r in regions.items()},
                "amends": amends,
            }
            rec = audit.append(session, case_id, payload, review_id=review_id)
            session.add(Review(
                id=review_id, case_id=case_id, reviewer_id=user.id, purpose=purpose,
                labelling_set_id=set_id, amends_id=head.id if head else None,
                prediction_id=ai["prediction_id"] if ai else None, diagnosis=decision.diagnosis,
                diagnosis_other=decision.diagnosis_other,
                patterns={c: v.value for c, v in decision.patterns.items()}, regions=regions,
                management=decision.management, message=decision.message,
                override_reason=decision.override_reason, amendment_reason=decision.amendment_reason,
                ai=ai, agreement=agreed, record_seq=rec.seq, created_at=now))
            if purpose == ReviewPurpose.CLINICAL:
                case.status = CaseStatus.REVIEWED
                case.answered_at = now
                # The FHIR report's new version (received, analysed, then one per review) is
                # final or amended: the EHRs' notifications leave with this commit.
                reviews_so_far = session.scalar(select(func.count()).select_from(Review).where(
                    Review.case_id == case_id, Review.purpose == ReviewPurpose.CLINICAL))
                version = 1 + (case.queued_at is not None) + reviews_so_far   # this one included (autoflush)
                notify = subscriptions.enqueue(session, case, version, "amended" if head else "final", now)
            session.flush()
            stored = session.get(Review, review_id)
            result = review_view(stored, user.username, rec.record_hash)
    except IntegrityError as exc:
        # Two amendments of the same review: amends_id is UNIQUE, the second one loses.
        delete_quietly(rt, [r["key"] for r in regions.values()], "region mask")
        raise Conflict("the case's review changed while you were writing; reload and retry") from exc
    except BaseException:
        delete_quietly(rt, [r["key"] for r in regions.values()], "region mask")
        raise
    # A human decision is signed within seconds by a CPU worker, not at the next periodic
    # checkpoint: the window in which it could be rewritten unnoticed stays short.
    rt.request_checkpoint()
    if purpose == ReviewPurpose.CLINICAL and notify:
        rt.request_deliveries()
    return result


def record_review(rt: Runtime, user: User, case_id: str, body: Mapping) -> dict:
    """The clinical review of a case you have claimed, or an amendment of your review."""
    permissions.require(user, permissions.WORK_QUEUE)

    def check(session, case: Case, head: Review | None) -> None:
        if head is None and case.status != CaseStatus.CLAIMED:
            raise Conflict("claim the case before reviewing it")
        if case.claimed_by != user.id:
            raise Conflict("this case is claimed by another dermatologist")
    return record(rt, user, case_id, body, ReviewPurpose.CLINICAL, check)


# --- reading -----------------------------------------------------------------------------------
def review_view(r: Review, reviewer: str, record_hash: str | None = None) -> dict:
    return {
        "id": r.id, "case_id": r.case_id, "purpose": r.purpose.value, "reviewer": reviewer,
        "created_at": r.created_at.isoformat(), "amends": r.amends_id,
        "labelling_set_id": r.labelling_set_id,
        "diagnosis": r.diagnosis.value, "diagnosis_name": DIAGNOSIS_NAMES[r.diagnosis],
        "diagnosis_other": r.diagnosis_other, "patterns": r.patterns,
        "regions": {c: {"area": v["area"], "size": v["size"]} for c, v in r.regions.items()},
        "management": r.management.value if r.management else None,
        "management_name": MANAGEMENT_NAMES[r.management] if r.management else None,
        "message": r.message, "override_reason": r.override_reason,
        "amendment_reason": r.amendment_reason, "ai": r.ai, "agreement": r.agreement,
        "audit": {"seq": r.record_seq, **({"record_hash": record_hash} if record_hash else {})},
    }


def answer_view(r: Review, amended: bool) -> dict:
    """What the GP reads: the outcome, the management and the message."""
    return {"diagnosis": r.diagnosis.value,
            "diagnosis_name": r.diagnosis_other if r.diagnosis == Diagnosis.OTHER else DIAGNOSIS_NAMES[r.diagnosis],
            "management": r.management.value if r.management else None,
            "management_name": MANAGEMENT_NAMES[r.management] if r.management else None,
            "message": r.message, "answered_at": r.created_at.isoformat(), "amended": amended}


def visible_reviews(session: Session, user: User, case_id: str) -> list[Review]:
    """Oldest first. Labelling reviews: the author's own (auditors see all)."""
    rows = session.scalars(select(Review).where(Review.case_id == case_id)
                           .order_by(Review.created_at, Review.record_seq)).all()
    if user.role == Role.AUDITOR:
        return list(rows)
    return [r for r in rows if r.purpose == ReviewPurpose.CLINICAL or r.reviewer_id == user.id]


def clinical_answer(session: Session, case_id: str) -> dict | None:
    head = _latest(session, case_id, ReviewPurpose.CLINICAL)
    return None if head is None else answer_view(head, head.amends_id is not None)


def get_review(rt: Runtime, user: User, case_id: str) -> dict:
    """GP: the answer to their case; dermatologist and auditor: the review history, newest
    last, with what the AI said and the agreement."""
    with rt.read() as session:
        case = readable_case(session, user, case_id)
        unseen = case.answered_at is not None and (case.answer_seen_at is None
                                                   or case.answer_seen_at < case.answered_at)
        if user.role in permissions.OWN_CASES_ONLY:
            out = {"case_id": case_id, "status": case.status.value,
                   "answer": clinical_answer(session, case_id)}
        else:
            names = dict(session.execute(select(User.id, User.username)).all())
            rows = visible_reviews(session, user, case_id)
            pred = primary_prediction(session, case)
            out = {"case_id": case_id, "status": case.status.value,
                   "claimed_by": names.get(case.claimed_by), "ai": ai_view(session, pred),
                   "region_size": pred.map_array["shape"][-1] if pred and pred.map_array else None,
                   "reviews": [review_view(r, names.get(r.reviewer_id, "?")) for r in rows]}
            head = _latest(session, case_id, ReviewPurpose.CLINICAL)
            out["current"] = head.id if head else None
    if user.role in permissions.OWN_CASES_ONLY and unseen:
        mark_answer_seen(rt, case_id)
    return out


def get_region(rt: Runtime, user: User, case_id: str, review_id: str, code: str) -> bytes:
    with rt.read() as session:
        readable_case(session, user, case_id)
        visible = {r.id: r for r in visible_reviews(session, user, case_id)}
        review = visible.get(review_id)
        if review is None or code not in review.regions:
            raise NotFound(f"no region {code} in review {review_id}")
        key = review.regions[code]["key"]
    return fetch_object(rt, key)
