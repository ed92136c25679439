"""Claiming on real PostgreSQL: concurrent dermatologists never get the same case."""

import threading


from services import queue
from services.errors import Conflict
from services.models import Case, User
from tests.factories import queued_case


def queued_cases(rt, n):
    return [queued_case(rt, f"P{i}", p_bcc=i / n) for i in range(n)]


def dermatologists(rt, n):
    from services.users import create_user
    with rt.sessions() as s, s.begin():
        return [create_user(s, f"claimer{i}", "password123", "dermatologist") for i in range(n)]


def test_concurrent_claims_of_one_case_give_it_to_exactly_one(full_stack):
    rt = full_stack.runtime()
    (case_id,) = queued_cases(rt, 1)
    derms = dermatologists(rt, 8)
    barrier = threading.Barrier(len(derms))
    won, lost = [], []

    def attempt(user):
        barrier.wait()
        try:
            queue.claim(rt, user, case_id)
            won.append(user.username)
        except Conflict:
            lost.append(user.username)

    threads = [threading.Thread(target=attempt, args=(u,)) for u in derms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    with rt.sessions() as s:
        case = s.get(Case, case_id)
        assert case.status == "claimed" and s.get(User, case.claimed_by).username == won[0]


def test_many_claimers_many_cases_no_case_twice(full_stack):
    rt = full_stack.runtime()
    ids = queued_cases(rt, 12)
    derms = dermatologists(rt, 6)
    claims: dict[str, list[str]] = {}
    lock = threading.Lock()

    def work(user):
        for case_id in ids:          # everyone tries every case, in the same order
            try:
                queue.claim(rt, user, case_id)
                with lock:
                    claims.setdefault(case_id, []).append(user.username)
            except Conflict:
                pass

    threads = [threading.Thread(target=work, args=(u,)) for u in derms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == sorted(ids)
    assert all(len(v) == 1 for v in claims.values())
    assert queue.list_queue(rt, derms[0]).entries == []
