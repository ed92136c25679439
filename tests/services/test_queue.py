from datetime import timedelta

from sqlalchemy import select

from services import queue
from services.models import Case, utcnow
from tests.factories import queued_case, user


def add_case(rt, pseudonym, p_bcc, received, **flags):
    queued_case(rt, pseudonym, p_bcc, received, bleeding=flags.get("bleeding", False))
    return pseudonym


def order(rt, now):
    rows = queue.list_queue(rt, user(rt, "derm1"), now=now).entries
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


def _reference(rt, now, **filters):
    """The queue's meaning, computed naively in Python over every waiting case."""
    with rt.read() as s:
        waiting = [c for c in s.scalars(select(Case)) if c.status in ("analysed", "analysis_failed")
                   and c.claimed_by is None and all(getattr(c, k) == v for k, v in filters.items())]

    def key(c):
        escalated = c.escalate_at is not None and c.escalate_at <= now
        return (0, c.due_at, -c.risk_score, c.queued_at, c.id) if escalated else \
            (1, now, -c.risk_score, c.queued_at, c.id)
    return [c.id for c in sorted(waiting, key=key)]


def _seed_random_queue(rt, n=120, seed=7):
    import random
    rng = random.Random(seed)
    now = utcnow()
    scores = [0.02, 0.3, 0.5, 0.5, 0.8, 0.95]     # ties in risk on purpose
    for i in range(n):
        received = now - timedelta(hours=rng.choice([0, 1, 1, 5, 30, 80, 200, 300, 400]))
        case_id = queued_case(rt, f"p{i}", rng.choice(scores), received, bleeding=rng.random() < 0.2,
                              status=rng.choice(["analysed", "analysed", "analysis_failed"]))
        if rng.random() < 0.1:
            with rt.transaction() as s:
                s.get(Case, case_id).claimed_by = user(rt, "derm1").id
        if rng.random() < 0.2:
            with rt.transaction() as s:
                s.get(Case, case_id).needs_attention = True
    return now


def test_index_backed_queue_pages_through_the_reference_order(stack):
    rt = stack.runtime()
    now = _seed_random_queue(rt)
    derm = user(rt, "derm1")
    for filters in ({}, {"risk_tier": "routine"}, {"needs_attention": True}):
        expected = _reference(rt, now, **filters)
        qf = queue.QueueFilter(tier=filters.get("risk_tier"), needs_attention=filters.get("needs_attention"))
        got, positions, after = [], [], None
        page = queue.list_queue(rt, derm, limit=7, now=now, filters=qf)
        while True:
            got += [e["case_id"] for e in page.entries]
            positions += [e["position"] for e in page.entries]
            if not page.next_cursor:
                break
            after = page.next_cursor
            page = queue.list_queue(rt, derm, limit=7, after=after, filters=qf)
            assert page.as_of == now        # later pages keep the first page's moment
        assert got == expected and positions == list(range(1, len(expected) + 1))
        assert len(expected) > 7
    counts = queue.tier_counts(rt, derm)
    assert sum(counts.values()) == len(_reference(rt, now)) and set(counts) == {"urgent", "routine", "low"}


def test_queue_rejects_bad_paging_and_filters(stack):
    import pytest
    from services.errors import ValidationError
    rt = stack.runtime()
    derm = user(rt, "derm1")
    for call, field in ((lambda: queue.list_queue(rt, derm, after="not-a-cursor"), "after"),
                        (lambda: queue.list_queue(rt, derm, limit=0), "limit"),
                        (lambda: queue.QueueFilter.from_args({"tier": "soon"}), "tier"),
                        (lambda: queue.QueueFilter.from_args({"needs_attention": "maybe"}), "needs_attention")):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field


def test_postgres_serves_the_queue_from_the_partial_indexes(full_stack):
    """With sequential scans priced out, every per-tier scan must be an index scan of one of
    the two partial indexes: proof that the query's predicate matches theirs."""
    from sqlalchemy import text
    rt = full_stack.runtime()
    now = _seed_random_queue(rt, n=30)
    statement = queue.page_statement(now, None, queue.QueueFilter(), 100)
    compiled = statement.compile(rt.engine)
    params = {k: str(v) if isinstance(v, str) else v for k, v in compiled.params.items()}
    with rt.read() as s:
        s.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(r[0] for r in s.connection().exec_driver_sql(f"EXPLAIN {compiled}", params))
    assert plan.count("ix_cases_waiting_deadline") == 3 and plan.count("ix_cases_waiting_risk") == 3, plan


def test_first_page_is_shared_for_a_moment_and_dropped_by_a_claim(stack):
    rt = stack.with_env(QUEUE_CACHE_S="30").runtime()
    derm = user(rt, "derm1")
    first = queued_case(rt, "a", 0.9, utcnow())
    page = queue.list_queue(rt, derm)
    queued_case(rt, "b", 0.95, utcnow())
    assert queue.list_queue(rt, derm) is page                     # served from the cache
    assert len(queue.list_queue(rt, derm, now=utcnow()).entries) == 2   # an explicit moment is live
    queue.claim(rt, derm, first)
    fresh = queue.list_queue(rt, derm)
    assert [e["case_id"] for e in fresh.entries] != [first] and len(fresh.entries) == 1
    assert queue.list_queue(stack.runtime(), derm).entries == fresh.entries  # QUEUE_CACHE_S=0: live
