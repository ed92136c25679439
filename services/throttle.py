"""Login throttling per account and per client, in a store every web process shares: Redis
on the full stack (the broker's server), the database on the embedded one.

Fixed windows: at most ACCOUNT_FAILURES failed logins per account and CLIENT_FAILURES per
client address in WINDOW_S; past that, logins are refused without checking the password
(no argon2 work) until the window ends, with the seconds left as Retry-After. A success
clears the account's count. Per account stops guessing one password from many addresses;
per client stops one address trying many accounts.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from .errors import TooManyRequests
from .models import LoginThrottle, utcnow
from .runtime import Runtime

ACCOUNT_FAILURES = 5
CLIENT_FAILURES = 30
WINDOW_S = 15 * 60


def too_many(retry_after: int) -> TooManyRequests:
    return TooManyRequests(f"too many failed logins; try again in {retry_after} seconds", retry_after)


def keys(username: str, client: str) -> dict[str, int]:
    return {f"account:{username.strip().lower()[:80]}": ACCOUNT_FAILURES, f"client:{client[:64]}": CLIENT_FAILURES}


def _redis_or_none(rt: Runtime, use):
    """Run ``use(redis)``; None (use the database instead) without Redis or when it is down:
    a broker outage must not stop people logging in, nor let guesses through unbounded."""
    r = rt.redis
    if r is None:
        return None
    import redis
    try:
        return use(r)
    except redis.RedisError:
        return None


def check(rt: Runtime, username: str, client: str) -> None:
    """Raise TooManyRequests (429) when any key is over its limit."""
    limits = keys(username, client)

    def over(r):
        counts = r.mget([f"dt:login:{k}" for k in limits])
        for (key, limit), count in zip(limits.items(), counts):
            if count is not None and int(count) >= limit:
                return max(1, int(r.ttl(f"dt:login:{key}")))
        return 0
    retry = _redis_or_none(rt, over)
    if retry:
        raise too_many(retry)
    if retry == 0:
        return
    now = utcnow()
    with rt.read() as s:
        rows = s.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(list(limits)))).all()
    for row in rows:
        left = WINDOW_S - (now - row.window_start).total_seconds()
        if left > 0 and row.failures >= limits[row.key]:
            raise too_many(max(1, int(left)))


def failed(rt: Runtime, username: str, client: str) -> None:
    def count(r):
        pipe = r.pipeline()
        for key in keys(username, client):
            pipe.incr(f"dt:login:{key}")
            pipe.expire(f"dt:login:{key}", WINDOW_S, nx=True)
        pipe.execute()
        return True
    if _redis_or_none(rt, count):
        return
    now = utcnow()
    with rt.transaction() as s:
        for key in keys(username, client):
            row = s.get(LoginThrottle, key, with_for_update=True)
            if row is None:
                s.add(LoginThrottle(key=key, window_start=now, failures=1))
            elif now - row.window_start >= timedelta(seconds=WINDOW_S):
                row.window_start, row.failures = now, 1
            else:
                row.failures += 1


def succeeded(rt: Runtime, username: str) -> None:
    key = next(iter(keys(username, "")))
    _redis_or_none(rt, lambda r: r.delete(f"dt:login:{key}"))
    with rt.transaction() as s:      # the database's count too (it served during any outage)
        row = s.get(LoginThrottle, key)
        if row is not None:
            s.delete(row)


# argon2 takes ~50 ms of a core per check. Unbounded, a burst of guesses occupies every web
# thread and core and starves unrelated requests (health checks, pages). One check at a time
# per process; a request that cannot start one within ARGON2_WAIT_S is told to retry.
_argon2_slot = threading.BoundedSemaphore(1)
ARGON2_WAIT_S = 3.0


def password_check_slot():
    class _Slot:
        def __enter__(self):
            if not _argon2_slot.acquire(timeout=ARGON2_WAIT_S):
                raise TooManyRequests("the service is busy checking passwords; please retry shortly", 2)

        def __exit__(self, *exc):
            _argon2_slot.release()
    return _Slot()
