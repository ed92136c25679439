"""Rest-hook subscriptions for EHRs: FHIR R5 topic-based ``Subscription`` on one topic,
"a report became final or amended" (codes.TOPIC), and the events they receive (delivered
by services/deliveries.py).

- An event is an outbox row (``FhirNotification``) written in the same transaction as the
  review that makes the report final or amended, one per active subscription of the case's
  GP, numbered per subscription (``eventNumber``): a crash between the review and the send
  loses nothing.
- CPU workers deliver it (services/deliveries.py: signed, in order, retried with backoff).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

import pydantic
from fhir.resources.subscription import Subscription
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import permissions
from .errors import NotFound
from .fhir import codes, valid
from .fhir.errors import FhirError
from .models import Case, FhirNotification, FhirSubscription, User
from .runtime import Runtime

CONTENT = ("id-only", "full-resource")
REST_HOOK = "rest-hook"
CHANNEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscription-channel-type"


# --- the Subscription resource ------------------------------------------------------------
def resource(sub: FhirSubscription) -> dict:
    body = {"resourceType": "Subscription", "id": sub.id, "status": sub.status, "topic": codes.TOPIC,
            "channelType": {"system": CHANNEL_SYSTEM, "code": REST_HOOK}, "endpoint": sub.endpoint,
            "content": sub.content, "contentType": "application/fhir+json"}
    if sub.name:
        body["name"] = sub.name
    return valid(Subscription, body)


def create(rt: Runtime, user: User, body, production: bool) -> dict:
    """Register a rest-hook. Only what we do is accepted: our topic, rest-hook, FHIR JSON,
    id-only or full-resource, no filters (a filter we ignored would send more than asked)."""
    permissions.require(user, permissions.SUBMIT_CASES)
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise FhirError("POST /fhir/Subscription takes a Subscription", "Subscription.resourceType")
    try:
        Subscription.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = "Subscription" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise FhirError(f"{path}: {first['msg']}", path) from None
    if body.get("topic") != codes.TOPIC:
        raise FhirError(f"the one topic here is {codes.TOPIC}", "Subscription.topic")
    if (body.get("channelType") or {}).get("code") != REST_HOOK:
        raise FhirError("channelType must be rest-hook", "Subscription.channelType")
    if body.get("filterBy"):
        raise FhirError("filters are not supported: a subscription receives every report of its GP "
                        "that becomes final or amended", "Subscription.filterBy")
    content = body.get("content", "id-only")
    if content not in CONTENT:
        raise FhirError(f"content must be {' or '.join(CONTENT)}", "Subscription.content")
    if body.get("contentType", "application/fhir+json") != "application/fhir+json":
        raise FhirError("contentType must be application/fhir+json", "Subscription.contentType")
    endpoint = body.get("endpoint") or ""
    parts = urlsplit(endpoint)
    if parts.scheme not in (("https",) if production else ("https", "http")) or not parts.hostname:
        raise FhirError("endpoint must be an https URL" + ("" if production else " (http outside production)"),
                        "Subscription.endpoint")
    sub = FhirSubscription(owner_id=user.id, endpoint=endpoint, content=content, status="active", events=0,
                           name=str(body.get("name") or "")[:200])
    with rt.transaction() as s:
        s.add(sub)
        s.flush()
        return resource(sub)


def _own(s: Session, user: User, sub_id: str) -> FhirSubscription:
    permissions.require(user, permissions.SUBMIT_CASES)
    sub = s.get(FhirSubscription, sub_id)
    if sub is None or sub.owner_id != user.id:
        raise NotFound(f"no Subscription/{sub_id}")
    return sub


def read(rt: Runtime, user: User, sub_id: str) -> dict:
    with rt.read() as s:
        return resource(_own(s, user, sub_id))


def listing(rt: Runtime, user: User) -> list[dict]:
    permissions.require(user, permissions.SUBMIT_CASES)
    with rt.read() as s:
        return [resource(x) for x in s.scalars(select(FhirSubscription).where(
            FhirSubscription.owner_id == user.id, FhirSubscription.status == "active")
            .order_by(FhirSubscription.created_at))]


def delete(rt: Runtime, user: User, sub_id: str) -> None:
    """Stop it: no new events; events not yet delivered are dropped with it."""
    with rt.transaction() as s:
        sub = _own(s, user, sub_id)
        sub.status = "off"
        s.execute(update(FhirNotification).where(FhirNotification.subscription_id == sub.id,
                                                 FhirNotification.delivered_at.is_(None))
                  .values(next_attempt_at=None, last_error="subscription deleted"))


# --- events -----------------------------------------------------------------------------
def enqueue(session: Session, case: Case, version: int, status: str, now: datetime) -> int:
    """In the caller's transaction: one event per active subscription of the case's GP."""
    subs = session.scalars(select(FhirSubscription).where(
        FhirSubscription.owner_id == case.gp_id, FhirSubscription.status == "active")
        .with_for_update()).all()
    for sub in subs:
        sub.events += 1
        session.add(FhirNotification(subscription_id=sub.id, event_number=sub.events, case_id=case.id,
                                     report_version=version, report_status=status, attempts=0,
                                     next_attempt_at=now, created_at=now))
    return len(subs)
