"""Does the worker keep up with its model? The analysis hot path against inference alone.

In one process, on a fresh embedded stack, with real HAM10000 images and the model in service:
inference_images_per_s      Engine.analyse, one image per call (as a job of one image), and
                            batched (as the micro-batcher feeds it)
hot_path_cases_per_s        analysis.run_job per case: fetch and check the image, analyse,
                            store the map array, prediction + audit record, risk and queue
overlay_ms_per_image        what the hot path no longer does: render 8 overlay PNGs and put
                            them in the store (measured here on the same results)
audit_appends_per_s         PostgreSQL only (--postgres-admin-url): explanation records
                            appended by 1, 4 and 16 concurrent writers, each in its own
                            transaction, and by 1 and 4 writers with 16 per transaction (a
                            worker's group commit of a micro-batch); p50_ms per transaction
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path


def _images(shared: Path, n: int) -> list[bytes]:
    folder = shared / "ham10000-224"
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    return [(folder / "images" / f"{r['image_id']}.jpg").read_bytes() for r in rows[:n]]


def bench_worker(n: int, model: Path, shared: Path, batch: int = 16,
                 postgres_admin_url: str | None = None) -> dict:
    from .. import analysis, cases, migrate
    from ..config import Settings
    from ..diagnosis.engine import Engine
    from ..diagnosis.render import overlay_png
    from ..models import AnalysisJob
    from ..runtime import Runtime
    from ..users import create_user
    from sqlalchemy import select

    tmp = Path(tempfile.mkdtemp(prefix="dt-bench-worker-"))
    settings = Settings.from_env({"DERMATRIAGE_DATA_DIR": str(tmp), "DERMATRIAGE_MODEL_PATH": str(model),
                                  "SECRET_KEY": "bench-" + uuid.uuid4().hex, "DERMATRIAGE_ENV": "test"})
    migrate.upgrade(settings.database_url)
    rt = Runtime(settings, dispatcher=lambda job_id: None)
    with rt.transaction() as s:
        gp = create_user(s, "bench-gp", "bench-password-1", "gp")
    images = _images(shared, n)
    fields = {"patient_pseudonym": "B", "age": "60", "sex": "female", "body_site": "back"}
    job_ids = []
    for i, data in enumerate(images):
        case = cases.submit_case(rt, gp, fields, [cases.Upload(f"{i}.jpg", data)])
        with rt.read() as s:
            job_ids.append(s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == case.id)))
    engine = Engine.load(model, "cpu")
    card = engine.card
    info = analysis.ModelInfo.of(card)
    engine.analyse(images[:2])                                   # warm-up

    t0 = time.perf_counter()
    single = [engine.analyse([img])[0] for img in images]
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        engine.analyse(images[i:i + batch])
    batched_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for job_id in job_ids:
        assert analysis.run_job(rt, job_id, engine.analyse, info) == "done"
    hot_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for k, result in enumerate(single):
        for m in result.maps:
            rt.store.put(f"bench-overlays/{k}/{m.target}.png", overlay_png(result.input_rgb, m.normalised),
                         "image/png")
    overlay_s = time.perf_counter() - t0

    out = {
        "cases": n, "model": f"{card.name} {card.version}",
        "inference_images_per_s": {"one_per_call": round(n / single_s, 1),
                                   f"batch_{batch}": round(n / batched_s, 1)},
        "hot_path_cases_per_s": round(n / hot_s, 1),
        "hot_path_over_inference_time": round(hot_s / single_s, 3),
        "overlay_ms_per_image": round(1000 * overlay_s / n, 1),
        "hot_path_with_overlays_cases_per_s": round(n / (hot_s + overlay_s), 1),
    }
    if postgres_admin_url:
        out["audit_appends_per_s"] = bench_audit(postgres_admin_url)
    return out


def bench_audit(admin_url: str, seconds: float = 4.0) -> dict:
    """Appends per second to the hash chain with 1, 4 and 16 writers on PostgreSQL."""
    from sqlalchemy import create_engine, text
    from .. import audit, migrate
    from ..db import make_engine, make_session_factory

    name = f"dt_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    results = {}
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        # writers x records per transaction: one each (a transaction per job), then 16 each
        # (a worker's group commit of one micro-batch)
        for writers, per_tx in ((1, 1), (4, 1), (16, 1), (1, 16), (4, 16)):
            counts = [0] * writers
            latencies: list[float] = []
            stop = time.perf_counter() + seconds

            def write(k: int) -> None:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    with sessions() as s, s.begin():
                        for _ in range(per_tx):
                            audit.append(s, f"case-{k}", {"kind": "explanation", "writer": k, "n": counts[k]},
                                         prediction_id=uuid.uuid4().hex)
                            counts[k] += 1
                    latencies.append(time.perf_counter() - t)
            threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            key = str(writers) if per_tx == 1 else f"{writers}x{per_tx}_per_transaction"
            results[key] = {"appends_per_s": round(sum(counts) / seconds, 1),
                            "p50_ms": round(1000 * statistics.median(latencies), 2)}
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    return results
