"""The dermatologist's referral queue, and claiming a case exactly once."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (and_, case as sql_case, func, literal, not_, or_, select, text, true,
                        union_all, update)

from . import params, permissions, risk
from .errors import Conflict, NotFound, ValidationError
from .models import WAITING_SQL, Case, User, utcnow
from .runtime import Runtime
from .vocabulary import QUEUED_STATUSES, BodySite, CaseStatus, RiskTier, Role


# --- the referral order ----------------------------------------------------------------------
# A waiting case is analysed (or its analysis failed), unclaimed. The queue serves first the
# cases whose escalation time has come (by deadline), then the rest (by risk). The split
# depends on the current time, so no single index gives the order; instead the order is the
# concatenation of six index-ordered scans, one per (half, tier), each served by a partial
# index on the waiting rows and each stopping after `limit` rows:
# - escalated, per tier: deadline order. Within a tier the escalation lead (due_at - escalate_at)
#   is the fixed share of the tier's SLA (risk.py), so "escalate_at <= now" is the prefix
#   "due_at <= now + lead" of that tier's deadline index.
# - the rest, per tier in tier order: risk order. Tiers are disjoint score bands (urgent >=
#   70 > routine >= 35 > low), so risk order is urgent's rows, then routine's, then low's.
# The two halves partition the waiting rows exactly (one predicate and its negation), so no
# case can fall out of the queue, even one scored under another escalation share.
WAITING = (text(WAITING_SQL),)
TIER_ORDER = [tier for tier, _floor, _sla in risk.TIERS]
LEADS = {tier: sla * (1 - risk.ESCALATE_SHARE) for tier, _floor, sla in risk.TIERS}


@dataclass(frozen=True)
class QueueFilter:
    """Optional filters of the queue (None: any)."""

    tier: RiskTier | None = None
    needs_attention: bool | None = None
    ai_available: bool | None = None
    body_site: BodySite | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "QueueFilter":
        """From query-string values; a bad one is a ValidationError naming the field."""
        return cls(tier=params.choice(args, "tier", RiskTier),
                   needs_attention=params.flag(args, "needs_attention", None),
                   ai_available=params.flag(args, "ai_available", None),
                   body_site=params.choice(args, "body_site", BodySite))

    def clauses(self) -> list:
        out = []
        for column, value in ((Case.risk_tier, self.tier), (Case.needs_attention, self.needs_attention),
                              (Case.ai_available, self.ai_available), (Case.body_site, self.body_site)):
            if value is not None:
                out.append(column == value)
        return out


@dataclass(frozen=True)
class QueuePage:
    entries: list[dict]
    next_cursor: str | None     # pass as `after` for the next page
    as_of: datetime             # the time the order was computed for (kept across pages)


@dataclass(frozen=True)
class _Key:
    """A row's place in the order: escalated rows first (by deadline), then by risk."""

    escalated: bool
    due_at: datetime | None
    risk_score: float
    queued_at: datetime | None
    case_id: str
    position: int = 0

    def encode(self, as_of: datetime) -> str:
        raw = json.dumps([int(self.escalated), _iso(self.due_at), self.risk_score,
                          _iso(self.queued_at), self.case_id, _iso(as_of), self.position])
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> tuple["_Key", datetime | None]:
        try:
            raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            esc, due, score, queued, case_id, as_of, position = raw
            return (cls(bool(esc), _dt(due), float(score), _dt(queued), str(case_id), int(position)),
                    _dt(as_of))
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError) as exc:
            raise ValidationError("after must be a cursor this queue gave out", "after") from exc


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _after(key: _Key | None, escalated_half: bool):
    """Rows of one half that come after the cursor; None when that whole half is behind it."""
    if key is None or (key.escalated and not escalated_half):
        return true()
    if not key.escalated and escalated_half:
        return None
    tail = or_(Case.queued_at > key.queued_at,
               and_(Case.queued_at == key.queued_at, Case.id > key.case_id))
    by_risk = or_(Case.risk_score < key.risk_score, and_(Case.risk_score == key.risk_score, tail))
    if not escalated_half:
        return and_(Case.risk_score <= key.risk_score, by_risk)
    return and_(Case.due_at >= key.due_at,
                or_(Case.due_at > key.due_at, and_(Case.due_at == key.due_at, by_risk)))


def _halves(now: datetime, key: _Key | None, extra: list, limit: int):
    scans = []
    for tier in TIER_ORDER:
        # Two-valued even for a row without dates (FALSE AND NULL is FALSE), so that its
        # negation is exactly the other half.
        escalated = and_(Case.escalate_at.is_not(None), Case.due_at.is_not(None),
                         Case.escalate_at <= now, Case.due_at <= now + LEADS[tier])
        for is_escalated, cond, order in (
                (True, escalated, (Case.due_at, Case.risk_score.desc(), Case.queued_at, Case.id)),
                (False, not_(escalated), (Case.risk_score.desc(), Case.queued_at, Case.id))):
            after = _after(key, is_escalated)
            if after is None:
                continue
            scans.append(select(Case.id, literal(int(is_escalated)).label("escalated"), Case.due_at,
                                Case.risk_score, Case.queued_at)
                         .where(*WAITING, Case.risk_tier == tier, cond, after, *extra)
                         .order_by(*order).limit(limit).subquery())
    return scans


# What a queue entry shows: columns, not ORM objects (a page is read-only and hot).
ENTRY_COLUMNS = (Case.id, Case.status, Case.risk_score, Case.risk_tier, Case.needs_attention,
                 Case.ai_available, Case.due_at, Case.escalate_at, Case.queued_at, Case.risk_reasons,
                 Case.body_site, Case.age, Case.created_at)


def page_statement(now: datetime, key: _Key | None, filters: QueueFilter, limit: int):
    """The SELECT of one page: (Case, escalated) rows in queue order; None if nothing follows."""
    scans = _halves(now, key, filters.clauses(), limit)
    if not scans:
        return None
    # Order and cut the candidates on the index columns alone, then read the winners' rows.
    union = union_all(*[select(s.c.id, s.c.escalated, s.c.due_at, s.c.risk_score, s.c.queued_at)
                        for s in scans]).subquery()
    order = (union.c.escalated.desc(), sql_case((union.c.escalated == 1, union.c.due_at), else_=None),
             union.c.risk_score.desc(), union.c.queued_at, union.c.id)
    top = select(union).order_by(*order).limit(limit).subquery()
    return (select(*ENTRY_COLUMNS, top.c.escalated).join(top, top.c.id == Case.id)
            .order_by(top.c.escalated.desc(), sql_case((top.c.escalated == 1, top.c.due_at), else_=None),
                      top.c.risk_score.desc(), top.c.queued_at, top.c.id))


class _FirstPages:
    """Dermatologists poll the queue's first page, and it is the same page for all of them:
    within ``QUEUE_CACHE_S`` seconds they share one computation (per process). A claim made
    through this process drops the cache at once; a claim made elsewhere can leave a case
    listed for at most that long, and claiming it then answers 409 (the claim is the guard)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[tuple, tuple[float, QueuePage]] = {}

    def get(self, key: tuple, ttl: float) -> QueuePage | None:
        with self._lock:
            hit = self._pages.get(key)
        return hit[1] if hit and time.monotonic() - hit[0] < ttl else None

    def put(self, key: tuple, page: QueuePage) -> None:
        with self._lock:
            if len(self._pages) > 256:
                self._pages.clear()
            self._pages[key] = (time.monotonic(), page)

    def drop(self, database_url: str) -> None:
        with self._lock:
            for key in [k for k in self._pages if k[0] == database_url]:
                del self._pages[key]


_first_pages = _FirstPages()


def list_queue(rt: Runtime, user: User, limit: int = 100, now: datetime | None = None,
               after: str | None = None, filters: QueueFilter = QueueFilter()) -> QueuePage:
    """One page of the referral queue; ``after`` (a cursor from the previous page) continues
    it in the same order, computed for the same moment as the first page."""
    permissions.require(user, permissions.WORK_QUEUE)
    if not 1 <= limit <= 500:
        raise ValidationError("limit must be between 1 and 500", "limit")
    ttl = rt.settings.queue_cache_s
    if ttl > 0 and now is None and not after:
        cache_key = (rt.settings.database_url, filters, limit)
        page = _first_pages.get(cache_key, ttl)
        if page is None:
            page = _page(rt, limit, None, None, filters)
            _first_pages.put(cache_key, page)
        return page
    return _page(rt, limit, now, after, filters)


def _page(rt: Runtime, limit: int, now: datetime | None, after: str | None,
          filters: QueueFilter) -> QueuePage:
    key = None
    if after:
        key, now = _Key.decode(after)
    now = now or utcnow()
    statement = page_statement(now, key, filters, limit)
    if statement is None:
        return QueuePage([], None, now)
    with rt.read() as session:
        rows = session.execute(statement).all()
    start = key.position if key else 0
    entries = [queue_entry(r, start + i + 1, now, bool(r.escalated)) for i, r in enumerate(rows)]
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        next_cursor = _Key(bool(last.escalated), last.due_at, last.risk_score, last.queued_at,
                           last.id, start + len(rows)).encode(now)
    return QueuePage(entries, next_cursor, now)


def tier_counts(rt: Runtime, user: User, filters: QueueFilter = QueueFilter()) -> dict[str, int]:
    """Waiting cases per tier (the queue page's header)."""
    permissions.require(user, permissions.WORK_QUEUE)
    with rt.read() as session:
        got = dict(session.execute(select(Case.risk_tier, func.count()).where(*WAITING, *filters.clauses())
                                   .group_by(Case.risk_tier)).all())
    return {str(t): int(got.get(t, 0)) for t in TIER_ORDER}


def queue_entry(case, position: int, now: datetime, escalated: bool) -> dict:
    """One row of the queue, from a row of ENTRY_COLUMNS."""
    if escalated:
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
    _first_pages.drop(rt.settings.database_url)
    return {"case_id": case_id, "claimed_by": user.username, "status": CaseStatus.CLAIMED.value}


def release_claim(rt: Runtime, user: User, case_id: str) -> dict:
    """Give a claimed, not yet reviewed case back to the queue (its place is unchanged)."""
    permissions.require(user, permissions.WORK_QUEUE)
    with rt.transaction() as session:
        case = session.get(Case, case_id, with_for_update=True)
        if case is None:
            raise NotFound(f"no case {case_id}")
        if case.status != CaseStatus.CLAIMED or case.claimed_by != user.id:
            raise Conflict("only the dermatologist holding an unreviewed claim can release it")
        case.status = CaseStatus.ANALYSED if case.ai_available else CaseStatus.ANALYSIS_FAILED
        case.claimed_by = case.claimed_at = None
    _first_pages.drop(rt.settings.database_url)
    return {"case_id": case_id, "status": case.status.value}


def reassign_claim(rt: Runtime, admin: User, case_id: str, username: str) -> dict:
    """An administrator hands a claimed, not yet reviewed case to another dermatologist."""
    permissions.require(admin, permissions.ADMINISTER)
    with rt.transaction() as session:
        target = session.scalar(select(User).where(User.username == username))
        if target is None or target.role != Role.DERMATOLOGIST or not target.active:
            raise ValidationError(f"{username!r} is not an active dermatologist", "dermatologist")
        case = session.get(Case, case_id, with_for_update=True)
        if case is None:
            raise NotFound(f"no case {case_id}")
        if case.status != CaseStatus.CLAIMED:
            raise Conflict("only a claimed case that is not yet reviewed can be reassigned")
        case.claimed_by, case.claimed_at = target.id, utcnow()
    return {"case_id": case_id, "claimed_by": username, "status": CaseStatus.CLAIMED.value}


def claimed_cases(rt: Runtime, admin: User) -> list[dict]:
    """Claimed cases awaiting their review, oldest claim first (the administrator's view)."""
    permissions.require(admin, permissions.ADMINISTER)
    with rt.read() as session:
        names = dict(session.execute(select(User.id, User.username)).all())
        rows = session.execute(select(Case.id, Case.claimed_by, Case.claimed_at, Case.risk_tier,
                                      Case.due_at).where(Case.status == CaseStatus.CLAIMED)
                               .order_by(Case.claimed_at).limit(500)).all()
    return [{"case_id": r.id, "claimed_by": names.get(r.claimed_by), "claimed_at": r.claimed_at.isoformat(),
             "tier": r.risk_tier, "due_at": r.due_at.isoformat() if r.due_at else None} for r in rows]


def dermatologists(rt: Runtime, admin: User) -> list[str]:
    permissions.require(admin, permissions.ADMINISTER)
    with rt.read() as session:
        return list(session.scalars(select(User.username).where(
            User.role == Role.DERMATOLOGIST, User.active.is_(True)).order_by(User.username)))
