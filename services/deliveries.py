"""Delivering FHIR notifications (the events services/subscriptions.py writes): build the R5
notification Bundle, sign it, POST it, retry with backoff.

- In event order per subscription; a receiver that fails or is down is retried 5 s later,
  then 10, 20, ... up to 5 minutes between tries, for up to 3 days, so a receiver down for 10
  minutes gets every notification within 5 minutes of coming back.
- A row is claimed (a 60 s lease) before it is sent, so two workers never send one event
  together; the receiver drops a repeat after a crash by its event number.
- Signed with the service's Ed25519 key (the audit key; its public key is served at
  ``GET /api/v1/audit/public-key``): ``X-DermaTriage-Signature: t=<unix>,kid=<key id>,
  sig=<base64>`` over ``<t>.<body>``; ``verify_signature`` is what a receiver runs.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from fhir.resources.bundle import Bundle
from sqlalchemy import func, select, update

from . import checkpoints
from .fhir import codes, valid
from .fhir import report as rp
from .models import Case, FhirNotification, FhirSubscription, utcnow
from .runtime import Runtime

log = logging.getLogger(__name__)

BACKOFF_FIRST_S, BACKOFF_MAX_S = 5, 300
GIVE_UP_AFTER = timedelta(days=3)
CLAIM = timedelta(seconds=60)       # a worker's lease on a row it is sending
SEND_TIMEOUT_S = 10
HEADER = "X-DermaTriage-Signature"


def notification(rt: Runtime, sub: FhirSubscription, n: FhirNotification, base_url: str) -> dict:
    """The R5 notification Bundle: a SubscriptionStatus, then (full-resource) the report."""
    focus = f"{base_url}fhir/DiagnosticReport/{n.case_id}/_history/{n.report_version}"
    status = {"resourceType": "SubscriptionStatus", "status": "active", "type": "event-notification",
              "eventsSinceSubscriptionStart": str(sub.events), "topic": codes.TOPIC,
              "subscription": {"reference": f"{base_url}fhir/Subscription/{sub.id}"},
              "notificationEvent": [{"eventNumber": str(n.event_number), "timestamp": n.created_at.isoformat(),
                                     "focus": {"reference": focus}}]}
    entries = [{"fullUrl": f"urn:uuid:{n.id}", "resource": status}]
    if sub.content == "full-resource":
        with rt.read() as session:
            facts = rp.load(session, session.get(Case, n.case_id))
        version = next(v for v in rp.timeline(facts) if v.number == n.report_version)
        entries.append({"fullUrl": focus, "resource": rp.report(facts, version, base_url)})
    return valid(Bundle, {"resourceType": "Bundle", "type": "subscription-notification",
                             "timestamp": utcnow().isoformat(timespec="seconds"), "entry": entries})


# --- signing ------------------------------------------------------------------------------
def sign(rt: Runtime, body: bytes, at: int) -> str:
    key = checkpoints.private_key(rt)
    sig = key.sign(f"{at}.".encode() + body)
    return f"t={at},kid={checkpoints.key_id(key.public_key())},sig={base64.b64encode(sig).decode()}"


def verify_signature(public_pem: bytes, header: str, body: bytes, now: float, tolerance_s: int = 300) -> bool:
    """What a receiver runs: the signature is ours and not older than ``tolerance_s``."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        at = int(fields["t"])
        checkpoints.load_public(public_pem).verify(base64.b64decode(fields["sig"]), f"{at}.".encode() + body)
    except (KeyError, ValueError, InvalidSignature):
        return False
    return abs(now - at) <= tolerance_s


# --- delivery -----------------------------------------------------------------------------
def _post(url: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, attempts - 1)))


def deliver_due(rt: Runtime, now: datetime | None = None, base_url: str | None = None, limit: int = 200) -> dict:
    """Send what is due, oldest first. Per subscription in event order: only a run that
    starts at its first pending event is taken, and the first failure holds the events after
    it until its own retry (a later event never overtakes an earlier one)."""
    now = now or utcnow()
    base = base_url if base_url is not None else rt.settings.public_url
    with rt.transaction() as s:
        first = dict(s.execute(select(FhirNotification.subscription_id, func.min(FhirNotification.event_number))
                               .where(FhirNotification.next_attempt_at.is_not(None))
                               .group_by(FhirNotification.subscription_id)).all())
        due = s.scalars(select(FhirNotification).where(FhirNotification.next_attempt_at <= now)
                        .order_by(FhirNotification.subscription_id, FhirNotification.event_number)
                        .limit(limit).with_for_update(skip_locked=True)).all()
        claimed, expect = [], {}
        for n in due:
            if n.event_number != expect.get(n.subscription_id, first.get(n.subscription_id)):
                continue                      # an earlier event of its subscription is not due yet
            expect[n.subscription_id] = n.event_number + 1
            n.next_attempt_at = now + CLAIM
            claimed.append(n.id)
    sent = failed = gave_up = 0
    blocked: dict[str, datetime | None] = {}
    for nid in claimed:
        with rt.read() as s:
            n = s.get(FhirNotification, nid)
            sub = s.get(FhirSubscription, n.subscription_id)
        if sub.status != "active":
            continue
        if sub.id in blocked:
            _hold(rt, nid, blocked[sub.id])
            continue
        error = None
        try:
            body = json.dumps(notification(rt, sub, n, base)).encode()
            at = int(now.timestamp())
            status = _post(sub.endpoint, body, {"Content-Type": "application/fhir+json",
                                                HEADER: sign(rt, body, at)})
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (OSError, ValueError) as exc:       # refused, timed out, DNS: the receiver is down
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            with rt.transaction() as s:
                s.execute(update(FhirNotification).where(FhirNotification.id == nid).values(
                    delivered_at=now, next_attempt_at=None, attempts=FhirNotification.attempts + 1,
                    last_error=None))
            sent += 1
            continue
        failed += 1
        retry_at = _reschedule(rt, nid, now, error)
        gave_up += retry_at is None
        # Given up: the events after it go on; else they wait for its retry.
        blocked[sub.id] = now if retry_at is None else retry_at
    return {"examined": len(claimed), "sent": sent, "failed": failed, "gave_up": gave_up}


def _hold(rt: Runtime, nid: str, until: datetime) -> None:
    with rt.transaction() as s:
        s.execute(update(FhirNotification).where(FhirNotification.id == nid).values(next_attempt_at=until))


def _reschedule(rt: Runtime, nid: str, now: datetime, error: str) -> datetime | None:
    """The next try after a failure, or None when this event is given up."""
    with rt.transaction() as s:
        n = s.get(FhirNotification, nid)
        n.attempts += 1
        n.last_error = error
        if now - n.created_at > GIVE_UP_AFTER:
            n.next_attempt_at, n.gave_up_at = None, now
            log.error("notification %s (subscription %s, event %d) given up after %d attempts: %s",
                      n.id, n.subscription_id, n.event_number, n.attempts, error)
            return None
        n.next_attempt_at = now + backoff(n.attempts)
        return n.next_attempt_at
