"""The referral queue at scale: PostgreSQL seeded with a million cases, the real web server,
the real queue API.

It creates its own database (dropped at the end), seeds it with ``INSERT ... SELECT`` over
``generate_series`` (random risk scores, tiers, deadlines over the last 20 days; a given
share of the cases waiting, the rest claimed), starts ``dermatriage web`` (gunicorn) on it
and measures, for each waiting share:
- p50/p95 of ``GET /api/v1/queue`` (first page of 100, one client, keep-alive), every
  request computed;
- the same for the second page (``?after=``) and for a filtered page (``tier=routine``);
- requests/s and p50/p95 with 20 concurrent pollers for ``seconds`` seconds, against a server
  that computes every request and against one with the product's default first-page cache
  (``QUEUE_CACHE_S=1``);
- the page's query alone at the database, index-backed and the naive query the queue used
  before (ORDER BY on a time-dependent key, which no index can serve), alternating in one
  loop on the same data, and their ratio.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..config import PROJECT_ROOT
from .pipeline import _free_port, _wait_http

SEED = """
INSERT INTO cases (id, gp_id, patient_pseudonym, age, sex, body_site, changed, bleeding,
                   gp_question, status, ai_available, risk_score, risk_tier, risk_reasons,
                   needs_attention, due_at, escalate_at, queued_at, claimed_by, claimed_at,
                   created_at)
SELECT md5(g::text), :gp, 'B' || g, 20 + g % 70,
       CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
       (ARRAY['back', 'face', 'scalp', 'chest', 'upper_limb', 'lower_limb'])[1 + g % 6], false, g % 7 = 0, '',
       CASE WHEN NOT waiting THEN 'claimed' WHEN g % 40 = 0 THEN 'analysis_failed' ELSE 'analysed' END,
       g % 40 <> 0, round(score::numeric, 1), tier, '[]'::json, g % 9 = 0,
       received + sla, received + sla * 0.75, received + interval '2 minutes',
       CASE WHEN waiting THEN NULL ELSE :derm END,
       CASE WHEN waiting THEN NULL ELSE received + interval '1 hour' END, received
FROM (
  SELECT g, score, received, waiting,
         CASE WHEN score >= 70 THEN 'urgent' WHEN score >= 35 THEN 'routine' ELSE 'low' END AS tier,
         CASE WHEN score >= 70 THEN interval '24 hours' WHEN score >= 35 THEN interval '5 days'
              ELSE interval '14 days' END AS sla
  FROM (SELECT g, (random() ^ 2) * 100 AS score,
               now() - random() * interval '20 days' AS received,
               random() < :waiting AS waiting
        FROM generate_series(1, :n) AS g) AS raw
) AS s
"""



def _naive_statement(now):
    """What the queue ran before migration 0004 (kept here only to be measured against)."""
    from sqlalchemy import case as sql_case, select
    from .. import queue
    from ..models import Case
    due_soon = Case.escalate_at <= now
    return (select(*queue.ENTRY_COLUMNS).where(*queue.WAITING)
            .order_by(sql_case((due_soon, 0), else_=1), sql_case((due_soon, Case.due_at), else_=None),
                      Case.risk_score.desc(), Case.queued_at).limit(100))


def _percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(s), 2),
            "p95_ms": round(1000 * s[min(len(s) - 1, int(0.95 * len(s)))], 2), "n": len(s)}


def _sequential(session, url: str, headers: dict, n: int) -> dict:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = session.get(url, headers=headers, timeout=30)
        times.append(time.perf_counter() - t)
        r.raise_for_status()
    return _percentiles(times)


def _pollers(url: str, headers: dict, clients: int, seconds: float) -> dict:
    """``clients`` threads polling over keep-alive connections. The load generator shares the
    machine with the server, so it uses the standard library's light http.client rather than
    requests (which costs several times more CPU per request)."""
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    times: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def poll():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine, bad = [], 0
        while time.perf_counter() < stop:
            t = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t)
            bad += response.status != 200
        conn.close()
        with lock:
            times.extend(mine)
            errors[0] += bad
    started = time.perf_counter()
    threads = [threading.Thread(target=poll) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests_per_s": round(len(times) / wall, 1), "errors": errors[0],
            **_percentiles(times)}


def _database_only(rt, rounds: int) -> dict:
    """The page's query alone, index-backed and naive, alternating in one loop."""
    from .. import queue
    from ..models import utcnow
    new, old = [], []
    with rt.read() as session:
        for _ in range(rounds):
            t = time.perf_counter()
            session.execute(queue.page_statement(utcnow(), None, queue.QueueFilter(), 100)).all()
            new.append(time.perf_counter() - t)
            t = time.perf_counter()
            session.execute(_naive_statement(utcnow())).all()
            old.append(time.perf_counter() - t)
    a, b = _percentiles(new), _percentiles(old)
    return {"index_backed": a, "naive_before_0004": b, "naive_over_index_backed_p50":
            round(b["p50_ms"] / max(a["p50_ms"], 1e-3), 1)}


def bench_queue(n: int, waiting_shares: list[float], postgres_admin_url: str, seconds: float = 10,
                clients: int = 20, web_workers: int = 2, rounds: int = 100) -> dict:
    import requests
    from sqlalchemy import create_engine, text
    from .. import migrate
    from ..config import Settings
    from ..models import User
    from ..runtime import Runtime
    from ..users import create_user, token_for

    db = f"dermatriage_queue_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{db}"'))
    url = postgres_admin_url.rsplit("/", 1)[0] + f"/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="dt-bench-queue-"))
    env = {**os.environ, "DATABASE_URL": url, "DERMATRIAGE_DATA_DIR": str(tmp),
           "SECRET_KEY": uuid.uuid4().hex * 2, "DERMATRIAGE_ENV": "bench"}
    results, procs = [], []
    try:
        migrate.upgrade(url)
        rt = Runtime(Settings.from_env(env))
        with rt.transaction() as s:
            create_user(s, "bench-gp", "bench-password", "gp")
            create_user(s, "bench-derm", "bench-password", "dermatologist")
        with rt.read() as s:
            gp = s.query(User).filter_by(username="bench-gp").one()
            derm = s.query(User).filter_by(username="bench-derm").one()
        token = token_for(rt, derm)
        # Two servers side by side: every request computed (QUEUE_CACHE_S=0), and the product's
        # default, where pollers within a second share one first page.
        bases = {}
        for label, cache_s in (("uncached", "0"), ("cached_1s", "1")):
            port = _free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "services.cli", "web", "--port", str(port), "--workers",
                 str(web_workers)], env={**env, "QUEUE_CACHE_S": cache_s}, cwd=PROJECT_ROOT,
                stdout=open(tmp / f"web-{label}.log", "ab"), stderr=subprocess.STDOUT,
                start_new_session=True))
            bases[label] = f"http://127.0.0.1:{port}"
            _wait_http(bases[label] + "/healthz")
        base = bases["uncached"]
        headers = {"Authorization": f"Bearer {token}"}
        for share in waiting_shares:
            with rt.engine.begin() as c:
                c.execute(text("TRUNCATE cases CASCADE"))
                t = time.perf_counter()
                c.execute(text(SEED), {"gp": gp.id, "derm": derm.id, "waiting": share, "n": n})
                seeded = time.perf_counter() - t
            with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("VACUUM ANALYZE cases"))
                waiting = c.execute(text("SELECT count(*) FROM cases WHERE status IN "
                                         "('analysed', 'analysis_failed') AND claimed_by IS NULL")).scalar()
            session = requests.Session()
            first = session.get(base + "/api/v1/queue?limit=100", headers=headers).json()
            row = {"cases": n, "waiting": waiting, "waiting_share": share, "seed_s": round(seeded, 1),
                   "first_page": _sequential(session, base + "/api/v1/queue?limit=100", headers, rounds),
                   "second_page": _sequential(session, f"{base}/api/v1/queue?limit=100&after={first['next']}",
                                              headers, rounds),
                   "routine_only": _sequential(session, base + "/api/v1/queue?limit=100&tier=routine",
                                               headers, rounds),
                   "pollers_uncached": _pollers(base + "/api/v1/queue?limit=100", headers, clients, seconds),
                   "pollers_cached_1s": _pollers(bases["cached_1s"] + "/api/v1/queue?limit=100", headers,
                                                 clients, seconds),
                   "database_only": _database_only(rt, max(5, rounds // 5))}
            results.append(row)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        admin.dispose()
    return {"results": results, "server": f"gunicorn, {web_workers} workers x 4 threads",
            "goal": {"p95_ms": 50, "requests_per_s_20_pollers": 200}}
