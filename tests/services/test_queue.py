from datetime import timedelta

from sqlalchemy import select

from services import queue
from services.models import Case, utcnow
from tests.factories import queued_case, user


def add_case(rt, pseudonym, p_bcc, received, **flags):
    queued_case(rt, pseudonym, p_bcc, received, bleeding=flags.get("bleeding", False))
    return pseudonym


def order(rt, now):
    rows = queue.list_queue(rt, user(rt, "derm1"), now=now)
    with rt.read() as s:
        names = {c.id: c.patient_pseudonym for c in s.scalars(select(Case))}
    return [names[r["case_id"]] for r in rows], rows


def test_risk_order_then_ageing_moves_old_low_risk_case_ahead(stack):
    rt = stack.runtime()
    now = utcnow()
    add_case(rt, "old-low", 0.10, now - timedelta(days=1))
    add_case(rt, "new-urgent", 0.95, now - timedelta(minutes=5))
    add_case(rt, "new-routine", 0.50, now - timedelta(minutes=2))
    names, rows = order(rt, now)
    assert names == ["new-urgent", "new-routine", "old-low"]
    assert rows[0]["reason"].startswith("risk 95")
    # Eleven days later the low-risk case (14-day deadline) is close to its deadline: it goes
    # first even though newer urgent cases keep arriving.
    later = now + timedelta(days=11)
    add_case(rt, "newest-urgent", 0.99, later - timedelta(minutes=1))
    names, rows = order(rt, later)
    # All three older cases are near or past their deadlines and are served by deadline.
    assert names == ["new-urgent", "new-routine", "old-low", "newest-urgent"]
    overdue = [r for r in rows if "served first" in r["reason"]]
    assert [r["position"] for r in overdue] == list(range(1, len(overdue) + 1))
    assert names.index("old-low") < names.index("newest-urgent")


def test_claimed_cases_leave_the_queue(stack):
    rt = stack.runtime()
    add_case(rt, "a", 0.9, utcnow())
    names, rows = order(rt, utcnow())
    queue.claim(rt, user(rt, "derm1"), rows[0]["case_id"])
    assert order(rt, utcnow())[0] == []
