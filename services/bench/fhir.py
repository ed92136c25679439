"""FHIR at work: referrals through /fhir against the JSON API, and report reads at scale.

Creates its own PostgreSQL database (dropped at the end) and a temporary data folder, starts
the real web server (``dermatriage web``, gunicorn) on them, and measures:
- referrals per second, the same HAM10000 images sent alternately as a FHIR transaction
  Bundle (base64 inside JSON) and as the JSON API's multipart form, one client, one at a
  time; ``fhir_over_api`` is the ratio of the two rates (goal: at least 0.8);
- with ``cases`` analysed cases seeded beside them (cases, images and predictions shaped as
  the worker writes them, by INSERT ... SELECT), p50/p95 of reading one DiagnosticReport
  (the report, its contained Observations and Device, rebuilt from the rows), of the JSON
  API's case read for comparison, and of two searches (by patient, by status with paging).
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .queue import _percentiles

SEED_CASES = """
INSERT INTO cases (id, gp_id, patient_pseudonym, patient_key, age, sex, body_site, changed, bleeding,
                   gp_question, status, ai_available, risk_score, risk_tier, risk_reasons, needs_attention,
                   due_at, escalate_at, queued_at, created_at)
SELECT md5('c' || g), :gp, 'S' || (g % 20000), md5(:gp || 'S' || (g % 20000))::varchar(32), 20 + g % 70,
       CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END, 'back', false, g % 7 = 0, '', 'analysed', true,
       round((random() * 100)::numeric, 1), 'routine', '["model: routine"]'::json, false,
       now() + interval '5 days', now() + interval '4 days', received + interval '2 minutes', received
FROM (SELECT g, now() - random() * interval '60 days' AS received FROM generate_series(1, :n) AS g) AS s
"""
SEED_IMAGES = """
INSERT INTO case_images (id, case_id, position, object_key, sha256, size, media_type, width, height, kind)
SELECT md5('i' || g), md5('c' || g), 0, 'images/seed-' || g || '.jpg', md5('i' || g) || md5('j' || g),
       60000, 'image/jpeg', 600, 450, 'dermoscopic'
FROM generate_series(1, :n) AS g
"""
SEED_PREDICTIONS = """
INSERT INTO predictions (id, image_id, case_id, model_name, model_version, model_sha256, preprocessing_version,
                         bcc_probability, diagnosis, diagnosis_probabilities, pattern_probabilities,
                         patterns_present, clinical, map_numbers, maps, map_array, quality, scope, created_at)
SELECT md5('p' || g), md5('i' || g), md5('c' || g), 'dermatriage-real', '2.4.0', repeat('a', 64), 'dt-pre-2',
       random(), 'non-BCC', CAST(:dx AS json), CAST(:patterns AS json), '["PN"]'::json, CAST(:clinical AS json),
       '{}'::json, '{}'::json, CAST(:map_array AS json), '{"issues": []}'::json,
       '{"verdict": "dermoscopic", "reason": ""}'::json, now() - interval '1 day'
FROM generate_series(1, :n) AS g
"""
PATTERNS = ("PN", "UL", "BO", "MG", "ML", "SW", "AT")


def _seed(url: str, gp_id: int, n: int) -> float:
    from sqlalchemy import create_engine, text
    rng = random.Random(0)
    params = {"gp": gp_id, "n": n,
              "dx": json.dumps({d: round(rng.random(), 4) for d in ("nv", "mel", "bcc", "akiec", "bkl", "df", "vasc")}),
              "patterns": json.dumps({c: round(rng.random(), 4) for c in PATTERNS}),
              "clinical": json.dumps({"summary": "Likely not basal cell carcinoma (AI probability 12%): pigment "
                                                 "network (81%) argues against it.", "diagnosis": "non-BCC",
                                      "evidence_patterns": ["PN", "AT"], "supporting": [], "contradicting": []}),
              "map_array": json.dumps({"key": "maps/seed.npz", "sha256": "b" * 64, "targets": ["BCC", *PATTERNS],
                                       "shape": [8, 224, 224]})}
    engine = create_engine(url)
    t0 = time.perf_counter()
    with engine.begin() as c:
        for statement in (SEED_CASES, SEED_IMAGES, SEED_PREDICTIONS):
            c.execute(text(statement), params)
        for table in ("cases", "case_images", "predictions"):
            c.execute(text(f"ANALYZE {table}"))
    engine.dispose()
    return time.perf_counter() - t0


def _bundle(image: bytes, i: int) -> bytes:
    from ..fhir import codes
    patient = {"resourceType": "Patient", "identifier": [{"value": f"BENCH-{i}"}], "gender": "female",
               "birthDate": "1960"}
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:s", "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "urn:bench", "value": f"R-{i}"}], "subject": {"reference": "urn:uuid:p"},
            "bodySite": [{"coding": [{"system": codes.CS_BODY_SITE, "code": "back"}]}]}},
        {"fullUrl": "urn:uuid:d", "request": {"method": "POST", "url": "DocumentReference"}, "resource": {
            "resourceType": "DocumentReference", "status": "current", "subject": {"reference": "urn:uuid:p"},
            "content": [{"attachment": {"contentType": "image/jpeg",
                                        "data": base64.b64encode(image).decode()}}]}}]}).encode()


def bench_fhir(n: int, cases: int, reads: int, shared: Path, admin_url: str) -> dict:
    import requests
    from sqlalchemy import create_engine, text

    from .. import migrate
    from ..config import PROJECT_ROOT, Settings
    from ..runtime import Runtime
    from ..users import create_user
    from .pipeline import _free_port, _images, _wait_http

    name = f"dt_bench_fhir_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="dt-bench-fhir-"))
    server = None
    try:
        migrate.upgrade(url)
        env = {"DATABASE_URL": url, "DERMATRIAGE_DATA_DIR": str(tmp), "SECRET_KEY": uuid.uuid4().hex * 2,
               "DERMATRIAGE_ENV": "test", "DERMATRIAGE_MODEL_PATH": str(tmp / "none.pt")}
        rt = Runtime(Settings.from_env(env))
        with rt.transaction() as s:
            gp = create_user(s, "bench-gp", "bench-gp-password", "gp")
            create_user(s, "bench-derm", "bench-derm-password", "dermatologist")
            s.flush()
            gp_id = gp.id
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "services.cli", "web", "--port", str(port),
                                   "--workers", "1"], env={**os.environ, **env}, cwd=PROJECT_ROOT,
                                  stdout=open(tmp / "web.log", "ab"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/healthz")

        def session(user: str) -> requests.Session:
            s = requests.Session()
            token = s.post(base + "/api/v1/auth/token", json={"username": user, "password": f"{user}-password"})
            s.headers["Authorization"] = f"Bearer {token.json()['token']}"
            return s
        gp_http, derm_http = session("bench-gp"), session("bench-derm")

        images = _images(shared, n + 1)
        times = {"fhir": [], "api": []}
        for i, image in enumerate(images):           # the first of each warms the server up
            for path in (("fhir", "api") if i % 2 == 0 else ("api", "fhir")):   # alternate the order
                t = time.perf_counter()
                if path == "fhir":
                    r = gp_http.post(base + "/fhir", data=_bundle(image, i),
                                     headers={"Content-Type": "application/fhir+json"})
                else:
                    r = gp_http.post(base + "/api/v1/cases", files={"images": (f"{i}.jpg", io.BytesIO(image))},
                                     data={"patient_pseudonym": f"BENCH-{i}", "age": "66", "sex": "female",
                                           "body_site": "back"})
                if i > 0:
                    times[path].append(time.perf_counter() - t)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"{path} referral {i}: {r.status_code} {r.text[:300]}")
        rates = {k: round(len(v) / sum(v), 2) for k, v in times.items()}

        seed_s = _seed(url, gp_id, cases)
        ids = [f"{random.Random(k).randint(1, cases)}" for k in range(reads)]
        import hashlib
        case_ids = [hashlib.md5(f"c{g}".encode()).hexdigest() for g in ids]

        def timed(path_of) -> dict:
            samples = []
            for cid in case_ids:
                t = time.perf_counter()
                r = derm_http.get(base + path_of(cid))
                samples.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{path_of(cid)}: {r.status_code} {r.text[:300]}")
            return _percentiles(samples)
        patient = hashlib.md5(f"{gp_id}S123".encode()).hexdigest()
        read = {"fhir_report": timed(lambda c: f"/fhir/DiagnosticReport/{c}"),
                "api_case": timed(lambda c: f"/api/v1/cases/{c}"),
                "fhir_report_again": timed(lambda c: f"/fhir/DiagnosticReport/{c}"),
                "search_by_patient": timed(lambda c: f"/fhir/DiagnosticReport?subject=Patient/{patient}"),
                "search_by_status_page": timed(lambda c: "/fhir/DiagnosticReport?status=preliminary&_count=20")}
        return {"referrals": n, "referrals_per_s": rates, "fhir_over_api": round(rates["fhir"] / rates["api"], 3),
                "referral_latency": {k: _percentiles(v) for k, v in times.items()},
                "seeded_cases": cases, "seed_s": round(seed_s, 1), "reads": reads, "read_latency": read}
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        rt_engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with rt_engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        rt_engine.dispose()
        admin.dispose()
