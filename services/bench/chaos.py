"""Chaos run of the full stack on this machine: nothing lost, nothing duplicated, few re-sends.

PostgreSQL (a temporary database), a Redis server of the run's own (so it can be stopped;
it keeps nothing on disk, so an outage also loses every message it held), objects on local
disk, gunicorn and two analysis workers as separate processes. Clients submit N cases with
real HAM10000 images through the API while the run SIGKILLs one worker (and starts a new one)
once a tenth of the cases are analysed (so it dies holding jobs), and stops Redis for
``outage_s`` at half of the submissions. Then it waits until every accepted case is
analysed. Figures:
accepted / analysed / failed / lost   cases (lost: accepted, never analysed within the wait)
duplicated                            images with more than one prediction, audit records
                                      beyond one per prediction
messages_per_job                      broker messages sent per job (intake + sweeper re-sends;
                                      some are lost with the broker's memory in the outage)
deliveries_per_job                    messages workers received per job
redundant_deliveries_per_job          deliveries beyond the first, per job
skipped_deliveries                    deliveries that found the job done or alive elsewhere
starts_per_job                        times a worker began the job (a killed run is restarted)
server_errors                         5xx answers to submissions
submit_ms_during_outage               p50 / p95 / max of submissions sent while Redis was down
recovered_within_s                    longest time from the SIGKILL to the end of a job that the
                                      killed worker was running (target: lease + sweep interval)
after_the_kill_s                      for each such job: when it was re-sent, restarted and
                                      finished, in seconds after the SIGKILL
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import PROJECT_ROOT
from .pipeline import _free_port, _images, _wait_http


def _redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
    end = time.time() + 10
    import socket
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def bench_chaos(n: int, model: Path, shared: Path, postgres_admin_url: str, outage_s: float = 20,
                lease_s: int = 30, sweep_s: int = 5, clients: int = 4, wait_s: float = 900) -> dict:
    import requests
    from sqlalchemy import create_engine, func, select, text

    from .. import migrate
    from ..config import Settings
    from ..models import AnalysisJob, Case, CaseImage, ExplanationRecord, Prediction, utcnow
    from ..runtime import Runtime
    from ..users import create_user

    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    images = _images(shared, max(50, min(n, 500)))
    db = f"dermatriage_chaos_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{db}"'))
    redis_port = _free_port()
    redis = {"proc": _redis(redis_port)}
    tmp = Path(tempfile.mkdtemp(prefix="dt-chaos-"))
    env = {**os.environ, "DERMATRIAGE_DATA_DIR": str(tmp), "DERMATRIAGE_MODEL_PATH": str(model),
           "SECRET_KEY": uuid.uuid4().hex * 2, "SWEEP_INTERVAL_S": str(sweep_s), "JOB_LEASE_S": str(lease_s),
           "DATABASE_URL": postgres_admin_url.rsplit("/", 1)[0] + f"/{db}",
           "BROKER_URL": f"redis://127.0.0.1:{redis_port}/0", "QUEUE_CACHE_S": "0"}
    settings = Settings.from_env(env)
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    with rt.transaction() as s:
        create_user(s, "chaos-gp", "chaos-password", "gp")
    port = _free_port()
    cli = [sys.executable, "-m", "services.cli"]
    logs = open(tmp / "processes.log", "ab")

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cli + args, env=env, cwd=PROJECT_ROOT, stdout=logs, stderr=subprocess.STDOUT,
                                start_new_session=True)
    worker_args = ["worker", "--concurrency", "4", "--loglevel", "WARNING"]
    web = start(["web", "--port", str(port), "--workers", "2"])
    workers = [start(worker_args), start(worker_args)]
    events: list[dict] = []
    base = f"http://127.0.0.1:{port}"
    t_start = time.perf_counter()
    try:
        _wait_http(base + "/healthz")
        token = requests.post(base + "/api/v1/auth/token",
                              json={"username": "chaos-gp", "password": "chaos-password"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        accepted: list[str] = []
        refused = [0]
        server_errors = [0]
        outage = {"from": None, "to": None}
        timeline: list[tuple[float, float]] = []
        lock = threading.Lock()
        submit_ms: list[float] = []

        def submit(i: int) -> None:
            t = time.perf_counter()
            try:
                r = requests.post(base + "/api/v1/cases", headers=headers, timeout=60,
                                  data={"patient_pseudonym": f"C{i}", "age": "60", "sex": "female",
                                        "body_site": "back"},
                                  files={"images": (f"{i}.jpg", images[i % len(images)], "image/jpeg")})
            except requests.RequestException:
                r = None
            with lock:
                submit_ms.append(1000 * (time.perf_counter() - t))
                timeline.append((t, 1000 * (time.perf_counter() - t)))
                if r is not None and r.status_code == 201:
                    accepted.append(r.json()["id"])
                else:
                    refused[0] += 1
                    if r is None or r.status_code >= 500:
                        server_errors[0] += 1

        killed = {}

        def analysed_so_far() -> int:
            with rt.read() as s:
                return s.scalar(select(func.count()).select_from(Case).where(Case.queued_at.is_not(None)))

        def kill_worker() -> None:
            while analysed_so_far() < max(1, n // 10):
                time.sleep(0.2)
            killed["at"] = utcnow()
            _stop(workers[0], signal.SIGKILL)
            events.append({"event": "worker SIGKILL", "at_s": round(time.perf_counter() - t_start, 1),
                           "analysed_so_far": analysed_so_far()})
            time.sleep(2)
            workers[0] = start(worker_args)

        def broker_outage() -> None:
            while len(accepted) < n // 2:
                time.sleep(0.05)
            _stop(redis["proc"], signal.SIGKILL)
            outage["from"] = time.perf_counter()
            events.append({"event": f"broker down {outage_s:.0f} s (messages lost)",
                           "at_s": round(time.perf_counter() - t_start, 1), "accepted_so_far": len(accepted)})
            time.sleep(outage_s)
            redis["proc"] = _redis(redis_port)
            outage["to"] = time.perf_counter()
            events.append({"event": "broker back", "at_s": round(time.perf_counter() - t_start, 1)})
        agents = [threading.Thread(target=f, daemon=True) for f in (kill_worker, broker_outage)]
        for agent in agents:
            agent.start()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(submit, range(n)))
        intake_s = time.perf_counter() - t_start
        for agent in agents:
            agent.join(outage_s + 120)
        end = time.time() + wait_s
        done = 0
        while time.time() < end:
            with rt.read() as s:
                done = s.scalar(select(func.count()).select_from(Case).where(
                    Case.id.in_(accepted), Case.queued_at.is_not(None)))
            if done == len(accepted):
                break
            time.sleep(1)
        total_s = time.perf_counter() - t_start
        with rt.read() as s:
            statuses = dict(s.execute(select(Case.status, func.count()).where(Case.id.in_(accepted))
                                      .group_by(Case.status)).all())
            jobs = s.execute(select(AnalysisJob.dispatches, AnalysisJob.attempts, AnalysisJob.deliveries)
                             .where(AnalysisJob.case_id.in_(accepted))).all()
            restarted = s.execute(select(AnalysisJob.finished_at, AnalysisJob.dispatched_at,
                                         AnalysisJob.started_at).where(
                AnalysisJob.case_id.in_(accepted), AnalysisJob.attempts > 1)).all()
            per_image = s.execute(select(Prediction.image_id, func.count()).group_by(Prediction.image_id)
                                  .having(func.count() > 1)).all()
            predictions = s.scalar(select(func.count()).select_from(Prediction))
            records = s.scalar(select(func.count()).select_from(ExplanationRecord))
            images_n = s.scalar(select(func.count()).select_from(CaseImage))
        during = sorted(ms for t, ms in timeline
                        if outage["from"] and outage["from"] <= t <= (outage["to"] or outage["from"]))
        since_kill = {name: [(row[i] - killed["at"]).total_seconds() for row in restarted
                             if row[i] and killed.get("at")]
                      for i, name in enumerate(("finished", "resent", "restarted"))}
        recovered = since_kill["finished"]
        messages = [d for d, _, _ in jobs]
        starts = [a for _, a, _ in jobs]
        deliveries = [v for _, _, v in jobs]
        analysed = statuses.get("analysed", 0)
        return {
            "cases": n, "accepted": len(accepted), "refused": refused[0], "analysed": analysed,
            "failed": statuses.get("analysis_failed", 0), "lost": len(accepted) - done,
            "duplicated": {"images_with_several_predictions": len(per_image),
                           "records_beyond_predictions": records - predictions},
            "images": images_n,
            "messages_per_job": round(statistics.mean(messages), 3) if messages else None,
            "jobs_resent": sum(1 for m in messages if m > 1),
            "max_messages": max(messages) if messages else None,
            "deliveries_per_job": round(statistics.mean(deliveries), 3) if deliveries else None,
            "redundant_deliveries_per_job": round(statistics.mean(v - 1 for v in deliveries), 3)
            if deliveries else None,
            "skipped_deliveries": sum(deliveries) - sum(starts),
            "starts_per_job": round(statistics.mean(starts), 3) if starts else None,
            "server_errors": server_errors[0],
            "jobs_restarted_after_the_kill": len(restarted),
            "recovered_within_s": round(max(recovered), 1) if recovered else None,
            "after_the_kill_s": {k: sorted(round(v, 1) for v in vals) for k, vals in since_kill.items()},
            "submit_ms_during_outage": ({"n": len(during), "p50": round(statistics.median(during), 1),
                                         "p95": round(during[int(0.95 * (len(during) - 1))], 1),
                                         "max": round(during[-1], 1)} if during else None),
            "submit_ms_p50": round(statistics.median(submit_ms), 1),
            "submit_ms_p95": round(sorted(submit_ms)[int(0.95 * (len(submit_ms) - 1))], 1),
            "intake_s": round(intake_s, 1), "total_s": round(total_s, 1),
            "analysed_per_s": round(analysed / total_s, 2),
            "events": events,
            "settings": {"lease_s": lease_s, "sweep_s": sweep_s, "workers": 2, "worker_threads": 4,
                         "object_store": "local disk", "outage_s": outage_s},
        }
    finally:
        for p in [web, *workers]:
            _stop(p)
        _stop(redis["proc"])
        rt.engine.dispose()
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        admin.dispose()
