"""The audit trail at scale: verifying a million records, and the auditor's pages at that size.

Seeds its own PostgreSQL database with N hash-chained explanation records (payloads shaped
and sized like the real model's, ~3.9 KB), loaded with COPY, then measures:
full_verify_records_per_s     `audit verify` without re-reading map objects (full walk)
checkpoint_s                  signing the head (walks what the previous checkpoint did not cover)
page_ms                       p50 / max over 5 requests of the auditor's pages and API
                              (incremental verification included), through gunicorn
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

TARGETS = ("BCC", "PN", "UL", "BO", "MG", "ML", "SW", "AT")
DIAGNOSES = ("nv", "mel", "bcc", "akiec", "bkl", "df", "vasc")


def sample_payload(i: int) -> str:
    """An explanation record's payload with the real one's structure and size."""
    import random
    r = random.Random(i)
    num = lambda: round(r.random(), 4)  # noqa: E731
    pid = f"{i:032x}"
    payload = {
        "kind": "explanation", "case_id": f"c{i:031x}", "prediction_id": pid, "image_id": f"i{i:031x}",
        "image_sha256": hashlib.sha256(pid.encode()).hexdigest(),
        "model": {"name": "dermatriage-real", "version": "2.0.0", "weights_sha256": "a" * 64},
        "preprocessing_version": "dt-pre-2",
        "outputs": {"bcc_probability": num(), "pattern_probabilities": {t: num() for t in TARGETS[1:]},
                    "patterns_present": ["PN"], "diagnosis_probabilities": {d: num() for d in DIAGNOSES}},
        "thresholds": {"patterns": {t: num() for t in TARGETS[1:]}, "bcc": num(),
                       "operating_points": {"mel": num(), "akiec": num()}},
        "calibration": {"BCC": {"a": num(), "b": num()}, "PN": {"a": num(), "b": num()},
                        "AT": {"a": num(), "b": num()},
                        "diagnosis": {"scale": [num() for _ in DIAGNOSES], "bias": [num() for _ in DIAGNOSES]}},
        "clinical": {"summary": "Likely basal cell carcinoma (AI probability 71%): supported by arborizing "
                                "telangiectasia (64%); also flagged, but not validated on real images and not "
                                "used as evidence: blue-gray ovoid nests (55%).", "diagnosis": "BCC",
                     "agreement": True, "evidence_patterns": ["PN", "AT"], "rule_diagnosis": "BCC",
                     "supporting": [{"code": "AT", "probability": num()}], "contradicting": [],
                     "unvalidated": [{"code": "BO", "probability": num()}]},
        "map_numbers": {t: {"peak": num(), "peak_x": num(), "peak_y": num(), "lesion_share": num(),
                            "hot_area": num(), "score": num(), "mean": num(), "centroid_x": num(),
                            "centroid_y": num(), "spread": num()} for t in TARGETS},
        "maps": {}, "map_array": {"key": f"maps/i{i:031x}/dermatriage-real-2.0.0/maps.npz",
                                  "sha256": hashlib.sha256(pid.encode() + b"m").hexdigest(),
                                  "targets": list(TARGETS), "shape": [8, 224, 224]},
        "quality": {"sharpness": num(), "brightness": num(), "dark_clipped": num(), "bright_clipped": num(),
                    "issues": []},
        "image": {"width": 600, "height": 450, "media_type": "image/jpeg", "crop_box": [75, 0, 525, 450]},
        "lesion_mask_method": "otsu-lab", "worker": "analysis@gpu-1", "device": "cuda:0",
        "timings_ms": {"decode": num(), "forward": num(), "maps": num(), "numbers": num()},
        "recorded_at": "2026-12-04T05:00:00+00:00",
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _seed(url: str, n: int) -> float:
    """COPY n chained records; returns the mean payload size."""
    import psycopg
    from ..audit import GENESIS

    prev, size = GENESIS, 0
    now = datetime.now(timezone.utc).isoformat()
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy("COPY explanation_records (kind, case_id, prediction_id, payload, prev_hash, "
                      "record_hash, created_at) FROM STDIN") as copy:
            for i in range(n):
                payload = sample_payload(i)
                size += len(payload)
                h = hashlib.sha256((prev + payload).encode()).hexdigest()
                copy.write_row(("explanation", f"c{i:031x}", f"{i:032x}", payload, prev, h, now))
                prev = h
        cur.execute("ANALYZE explanation_records")
    return size / n


def bench_audit(n: int, admin_url: str) -> dict:
    from sqlalchemy import create_engine, text

    from .. import checkpoints, migrate
    from ..config import Settings
    from ..runtime import Runtime
    from ..users import create_user

    name = f"dt_bench_audit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="dt-bench-audit-"))
    try:
        migrate.upgrade(url)
        t0 = time.perf_counter()
        mean_size = _seed(url, n)
        seed_s = time.perf_counter() - t0
        settings = Settings.from_env({"DATABASE_URL": url, "DERMATRIAGE_DATA_DIR": str(tmp),
                                      "SECRET_KEY": uuid.uuid4().hex * 2, "DERMATRIAGE_ENV": "test",
                                      "DERMATRIAGE_MODEL_PATH": str(tmp / "none.pt")})
        rt = Runtime(settings)
        with rt.transaction() as s:
            create_user(s, "bench-auditor", "bench-auditor-password", "auditor")
        t0 = time.perf_counter()
        report = checkpoints.verify(rt, None, full=True, check_objects=False)
        verify_s = time.perf_counter() - t0
        assert report["ok"], report
        t0 = time.perf_counter()
        checkpoints.make_checkpoint(rt)
        checkpoint_s = time.perf_counter() - t0

        # The pages through a real server (`dermatriage web`, gunicorn), as an auditor sees them.
        import os
        import re
        import signal
        import subprocess
        import sys

        import requests

        from ..config import PROJECT_ROOT
        from .pipeline import _free_port, _wait_http
        port = _free_port()
        env = {**os.environ, "DATABASE_URL": url, "DERMATRIAGE_DATA_DIR": str(tmp),
               "SECRET_KEY": settings.secret_key, "DERMATRIAGE_ENV": "test",
               "DERMATRIAGE_MODEL_PATH": str(tmp / "none.pt")}
        server = subprocess.Popen([sys.executable, "-m", "services.cli", "web", "--port", str(port),
                                   "--workers", "1"], env=env, cwd=PROJECT_ROOT,
                                  stdout=open(tmp / "web.log", "ab"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/healthz")
            api = requests.Session()
            token = api.post(base + "/api/v1/auth/token", json={
                "username": "bench-auditor", "password": "bench-auditor-password"}).json()["token"]
            api.headers["Authorization"] = f"Bearer {token}"
            page = requests.Session()
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get(base + "/login").text).group(1)
            page.post(base + "/login", data={"username": "bench-auditor", "password": "bench-auditor-password",
                                             "csrf_token": csrf})

            def timed(session, path: str) -> dict:
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    r = session.get(base + path)
                    times.append(1000 * (time.perf_counter() - t))
                    assert r.status_code == 200 and "/login" not in r.url, (path, r.status_code)
                return {"p50": round(statistics.median(times), 1), "max": round(max(times), 1)}
            mid = n // 2
            pages = {
                "/audit (incremental verify + newest records)": timed(page, "/audit"),
                f"/audit?case_id=c{mid:031x}": timed(page, f"/audit?case_id=c{mid:031x}"),
                "/audit?before=N/2 (an older page)": timed(page, f"/audit?before={mid}"),
                f"/audit/records/{mid}": timed(page, f"/audit/records/{mid}"),
                "GET /api/v1/audit/verify": timed(api, "/api/v1/audit/verify"),
                "GET /api/v1/audit/records?limit=50": timed(api, "/api/v1/audit/records?limit=50"),
            }
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)
        rt.engine.dispose()
        return {"records": n, "mean_payload_bytes": round(mean_size), "seed_s": round(seed_s, 1),
                "full_verify_s": round(verify_s, 1),
                "full_verify_records_per_s": round(n / verify_s),
                "checkpoint_s": round(checkpoint_s, 1), "page_ms": pages}
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

