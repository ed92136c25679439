"""End-to-end pipeline benchmark: real HTTP intake, a real worker, real images.

For each stack it starts the web server (gunicorn) and an analysis worker as separate
processes on a fresh database, and runs two phases with HAM10000 images through the JSON API:

- live: N cases submitted from a few client threads while the worker analyses them (intake
  and analysis share the machine's cores, as on a one-box install);
- backlog: the worker is stopped, N cases are submitted, and a fresh worker drains them (the
  worker's own throughput: broker, store, model, group-committed writes, nothing else on the
  cores). Timed from the first job's start (after the model is loaded) to the last case queued.

Figures per phase:
cases_per_s           cases analysed and queued per second
latency_p50/p95_s     submit-to-queued per case (live phase; server clock)
over_engine           cases_per_s / engine_images_per_s (one image per case)
intake_rps            cases accepted per second of client wall time (live phase)
engine_images_per_s   the engine alone on the same images, batched as the worker batches,
                      measured in the same run before the stacks start
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import PROJECT_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(shared: Path, n: int) -> list[bytes]:
    folder = shared / "ham10000-224"
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    return [(folder / "images" / f"{r['image_id']}.jpg").read_bytes() for r in rows[:n]]


def _wait_http(url: str, timeout: float = 60) -> None:
    import requests
    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def run_stack(name: str, env_extra: dict, n: int, images: list[bytes], model: Path,
              clients: int = 4) -> dict:
    import requests
    from sqlalchemy import func, select
    from .. import migrate
    from ..config import Settings
    from ..models import AnalysisJob, Case
    from ..runtime import Runtime
    from ..users import create_user

    tmp = Path(tempfile.mkdtemp(prefix=f"dt-bench-{name}-"))
    env = {**os.environ, "DERMATRIAGE_DATA_DIR": str(tmp), "DERMATRIAGE_MODEL_PATH": str(model),
           "SECRET_KEY": uuid.uuid4().hex * 2, "SWEEP_INTERVAL_S": "2", **env_extra}
    settings = Settings.from_env(env)
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings)
    with rt.transaction() as s:
        create_user(s, "bench-gp", "bench-password", "gp")
    port = _free_port()
    cli = [sys.executable, "-m", "services.cli"]
    logs = open(tmp / "processes.log", "ab")

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cli + args, env=env, cwd=PROJECT_ROOT, stdout=logs,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker_args = ["worker", "--concurrency", "8", "--loglevel", "WARNING"]
    web = start(["web", "--port", str(port), "--workers", "2"])
    procs = [web, start(worker_args)]
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/healthz")
        token = requests.post(base + "/api/v1/auth/token",
                              json={"username": "bench-gp", "password": "bench-password"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        session = requests.Session()

        def submit(i: int) -> str:
            r = session.post(base + "/api/v1/cases", headers=headers, timeout=60,
                             data={"patient_pseudonym": f"B{i}", "age": "60", "sex": "female",
                                   "body_site": "back"},
                             files={"images": (f"{i}.jpg", images[i % len(images)], "image/jpeg")})
            r.raise_for_status()
            return r.json()["id"]

        # Warm the worker (model load) with one case outside the measurement.
        warm = submit(10_000)
        _wait_status(rt, [warm], 120, procs[1], tmp / "processes.log")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            ids = list(pool.map(submit, range(n)))
        intake_s = time.perf_counter() - t0
        _wait_status(rt, ids, 600, procs[1], tmp / "processes.log")
        with rt.read() as s:
            rows = s.execute(select(Case.created_at, Case.queued_at).where(Case.id.in_(ids))).all()
        lat = sorted((q - c).total_seconds() for c, q in rows)
        span = (max(q for _, q in rows) - min(c for c, _ in rows)).total_seconds()
        live = {"cases_per_s": round(n / span, 2), "intake_rps": round(n / intake_s, 2),
                "latency_p50_s": round(statistics.median(lat), 3),
                "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3)}

        _terminate(procs[1])
        with ThreadPoolExecutor(clients) as pool:
            backlog_ids = list(pool.map(submit, range(n, 2 * n)))
        procs.append(start(worker_args))
        _wait_status(rt, backlog_ids, 600, procs[2], tmp / "processes.log")
        with rt.read() as s:
            first = s.scalar(select(func.min(AnalysisJob.started_at)).where(AnalysisJob.case_id.in_(backlog_ids)))
            last = s.scalar(select(func.max(Case.queued_at)).where(Case.id.in_(backlog_ids)))
        backlog = {"cases_per_s": round(n / (last - first).total_seconds(), 2)}
        return {"stack": name, "cases": n, "client_threads": clients, "live": live, "backlog": backlog}
    finally:
        for p in procs:
            _terminate(p)


def _terminate(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _wait_status(rt, ids: list[str], timeout: float, worker: subprocess.Popen, log: Path) -> None:
    """Until every case is queued; a worker that exits ends the wait at once, and either
    failure carries the end of the processes' log (the run's folder is temporary)."""
    from sqlalchemy import func, select
    from ..models import Case
    end = time.time() + timeout
    while True:
        with rt.read() as s:
            done = s.scalar(select(func.count()).select_from(Case).where(
                Case.id.in_(ids), Case.queued_at.is_not(None)))
        if done == len(ids):
            return
        if worker.poll() is not None:
            problem = f"the worker exited (code {worker.returncode}) with {done} of {len(ids)} cases queued"
            break
        if time.time() > end:
            problem = f"only {done} of {len(ids)} cases were queued within {timeout}s"
            break
        time.sleep(0.1)
    tail = log.read_bytes()[-4000:].decode(errors="replace")
    raise RuntimeError(f"{problem}; the end of {log}:\n{tail}")


def bench_pipeline(n: int, stacks: list[str], model: Path, shared: Path, postgres_admin_url: str,
                   redis_url: str) -> dict:
    images = _images(shared, max(n, 50))
    engine_rate = _engine_rate(model, images[:n])
    results = []
    for name in stacks:
        if name == "embedded":
            results.append(run_stack("embedded", {}, n, images, model))
            continue
        from sqlalchemy import create_engine, text
        db = f"dermatriage_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{db}"'))
        # The S3 stand-in runs in its own process, as MinIO would: inside this one it would
        # share the interpreter lock with the client threads whose submissions it times.
        s3_port = _free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_http(f"http://127.0.0.1:{s3_port}/")
            results.append(run_stack("postgres+redis+s3(moto)", {
                "DATABASE_URL": postgres_admin_url.rsplit("/", 1)[0] + f"/{db}",
                "BROKER_URL": redis_url,
                "OBJECT_STORE_URL": f"s3://bench:bench@127.0.0.1:{s3_port}/bench"}, n, images, model))
        finally:
            _terminate(moto)
            with admin.connect() as c:
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))
                c.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
            admin.dispose()
    for r in results:
        for phase in ("live", "backlog"):
            r[phase]["over_engine"] = round(r[phase]["cases_per_s"] / engine_rate, 3)
    return {"engine_images_per_s": engine_rate, "results": results,
            "note": "2 gunicorn workers x 4 threads, 1 worker process x 8 threads (both queues), "
                    "micro-batched CPU inference, one image per case, S3 = moto in its own process; "
                    "live: intake and analysis "
                    "at once; backlog: a fresh worker drains cases submitted while it was stopped"}


def _engine_rate(model: Path, images: list[bytes], batch: int = 16) -> float:
    """Images/s of Engine.analyse alone (maps, numbers, explanation), in batches of 16."""
    from ..diagnosis.engine import Engine
    engine = Engine.load(model, "cpu")
    engine.analyse(images[:2])
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        engine.analyse(images[i:i + batch])
    rate = len(images) / (time.perf_counter() - t0)
    del engine
    return round(rate, 1)
