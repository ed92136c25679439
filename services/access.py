"""The access log: who read which patient data, when and from where (and every account
action), in an append-only table that auditors query by case and by user.

Clinical record-keeping asks for it (EU AI Act Art. 12 and 19, 21 CFR 11.10(e), SCIENCE.md
s.5): a read that leaves no trace cannot be accounted for. Writing it is part of serving the
read: if the log cannot be written, the read fails too.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from . import permissions
from .models import AccessEvent, User, utcnow
from .runtime import Runtime
from .vocabulary import AccessAction

MAX_ROWS = 1000


def record(rt: Runtime, user: User | None, action: AccessAction, client: str, case_id: str | None = None,
           subject: str | None = None, username: str | None = None) -> None:
    with rt.transaction() as s:
        s.add(AccessEvent(at=utcnow(), user_id=user.id if user else None,
                          username=(user.username if user else username or "?")[:80],
                          role=(user.role.value if user else "-"), action=action.value,
                          case_id=case_id, subject=(subject or None) and subject[:200],
                          client=(client or "?")[:64]))


def record_many(rt: Runtime, user: User, action: AccessAction, client: str, case_ids: list[str],
                subject: str) -> None:
    """One row per case a single request read (a FHIR search returns many reports), in one
    transaction."""
    if not case_ids:
        return
    now = utcnow()
    with rt.transaction() as s:
        s.add_all([AccessEvent(at=now, user_id=user.id, username=user.username[:80], role=user.role.value,
                               action=action.value, case_id=case_id, subject=subject[:200],
                               client=(client or "?")[:64]) for case_id in case_ids])


def query(rt: Runtime, auditor: User | None, case_id: str | None = None, username: str | None = None,
          since: datetime | None = None, limit: int = 200) -> list[dict]:
    """Newest first; filter by case, by user, from a time."""
    if auditor is not None:
        permissions.require(auditor, permissions.VERIFY_AUDIT)
    q = select(AccessEvent).order_by(AccessEvent.at.desc(), AccessEvent.id.desc()).limit(min(limit, MAX_ROWS))
    if case_id:
        q = q.where(AccessEvent.case_id == case_id)
    if username:
        q = q.where(AccessEvent.username == username)
    if since:
        q = q.where(AccessEvent.at >= since)
    with rt.read() as s:
        return [{"at": e.at.isoformat(), "user": e.username, "role": e.role, "action": e.action,
                 "case_id": e.case_id, "subject": e.subject, "client": e.client}
                for e in s.scalars(q)]
