"""The dermatologist's referral queue, and claiming a case exactly once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case as sql_case, select, update

from . import permissions
from .errors import Conflict, NotFound
from .models import Case, User, utcnow
from .runtime import Runtime
from .vocabulary import QUEUED_STATUSES, CaseStatus


def _order(now: datetime):
    due_soon = Case.escalate_at <= now
    return (sql_case((due_soon, 0), else_=1), sql_case((due_soon, Case.due_at), else_=None),
            Case.risk_score.desc(), Case.queued_at)


def list_queue(rt: Runtime, user: User, limit: int = 100, now: datetime | None = None) -> list[dict]:
    permissions.require(user, permissions.WORK_QUEUE)
    now = now or utcnow()
    with rt.read() as session:
        rows = session.scalars(select(Case).where(Case.status.in_(QUEUED_STATUSES),
                                                  Case.claimed_by.is_(None))
                               .order_by(*_order(now)).limit(limit)).all()
    return [queue_entry(c, i + 1, now) for i, c in enumerate(rows)]


def queue_entry(case: Case, position: int, now: datetime) -> dict:
    if case.escalate_at and case.escalate_at <= now:
        late = now - case.due_at
        why = (f"overdue by {_hours(late)}" if late.total_seconds() > 0
               else f"deadline in {_hours(-late)}") + f" ({case.risk_tier} review deadline): served first"
    else:
        why = f"risk {case.risk_score:g} ({case.risk_tier})"
        if case.risk_reasons:
            why += f": {case.risk_reasons[0]}"
    return {"position": position, "case_id": case.id, "status": case.status,
            "risk_score": case.risk_score, "tier": case.risk_tier,
            "needs_attention": case.needs_attention, "ai_available": case.ai_available,
            "due_at": case.due_at.isoformat() if case.due_at else None,
            "reason": why, "factors": case.risk_reasons or [],
            "body_site": case.body_site, "age": case.age, "received_at": case.created_at.isoformat()}


def _hours(delta) -> str:
    h = delta.total_seconds() / 3600
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def claim(rt: Runtime, user: User, case_id: str) -> dict:
    """Give the case to this dermatologist, or fail with 409 if anyone has it.

    Postgres: SELECT ... FOR UPDATE SKIP LOCKED makes concurrent claimers skip a row another
    transaction is claiming; the conditional UPDATE is the final guard (and SQLite's)."""
    permissions.require(user, permissions.WORK_QUEUE)
    with rt.transaction() as session:
        exists = session.get(Case, case_id)
        if exists is None:
            raise NotFound(f"no case {case_id}")
        row = session.scalar(select(Case).where(Case.id == case_id, Case.status.in_(QUEUED_STATUSES),
                                                Case.claimed_by.is_(None))
                             .with_for_update(skip_locked=True))
        if row is None:
            raise Conflict("case is already claimed or not in the queue")
        result = session.execute(update(Case).where(Case.id == case_id, Case.claimed_by.is_(None))
                                 .values(claimed_by=user.id, claimed_at=utcnow(),
                                         status=CaseStatus.CLAIMED))
        if result.rowcount != 1:
            raise Conflict("case is already claimed")
    return {"case_id": case_id, "claimed_by": user.username, "status": CaseStatus.CLAIMED.value}
