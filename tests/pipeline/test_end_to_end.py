"""A GP's cases go in through HTTP, a real worker process analyses them, and they come out in
the dermatologist's queue in risk order with explanations; the audit chain verifies."""

import csv
import io

from sqlalchemy import func, select

from services import audit
from services.models import Case, CaseImage, ExplanationRecord, Prediction
from tests.factories import stop, token_for, wait_until


def real_cases(ham_dir, n_bcc=3, n_other=3):
    rows = list(csv.DictReader(open(ham_dir / "metadata.csv")))
    pick = [r for r in rows if r["dx"] == "bcc"][10:10 + n_bcc] + \
           [r for r in rows if r["dx"] in ("nv", "bkl")][10:10 + n_other]
    return [(r, (ham_dir / "images" / f"{r['image_id']}.jpg").read_bytes()) for r in pick]


def test_cases_flow_from_gp_to_queue(stack, ham_dir, tmp_path):
    worker = stack.start_worker(tmp_path / "worker.log")
    try:
        client = stack.app().test_client()
        gp = token_for(client, "gp1")
        ids = []
        for i, (row, jpeg) in enumerate(real_cases(ham_dir)):
            r = client.post("/api/v1/cases", headers=gp, content_type="multipart/form-data", data={
                "patient_pseudonym": f"E2E-{i}", "age": str(int(float(row["age"] or 60))),
                "sex": row["sex"] if row["sex"] in ("male", "female") else "unknown",
                "body_site": "face" if i % 2 else "back", "bleeding": "true" if i == 0 else "false",
                "images": (io.BytesIO(jpeg), f"{row['image_id']}.jpg")})
            assert r.status_code == 201, r.json
            ids.append(r.json["id"])
        rt = stack.runtime()

        def all_analysed():
            with rt.sessions() as s:
                return s.scalar(select(func.count()).select_from(Case).where(Case.status == "analysed")) == len(ids)
        wait_until(all_analysed, timeout=120, what="all cases analysed")

        derm = token_for(client, "derm1")
        queue = client.get("/api/v1/queue", headers=derm).json["queue"]
        assert sorted(e["case_id"] for e in queue) == sorted(ids)
        scores = [e["risk_score"] for e in queue]
        assert scores == sorted(scores, reverse=True)
        assert all(e["reason"] and e["factors"] for e in queue)

        view = client.get(f"/api/v1/cases/{queue[0]['case_id']}", headers=derm).json
        (pred,) = view["predictions"]
        assert pred["clinical"]["summary"] and len(pred["maps"]) == 8
        assert set(pred["map_numbers"]["BCC"]) >= {"peak", "lesion_share", "score"}
        png = client.get(f"/api/v1/cases/{view['id']}/predictions/{pred['id']}/maps/BCC", headers=derm)
        assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
        mine = client.get(f"/api/v1/cases/{ids[0]}", headers=gp).json
        assert mine["predictions"][0]["clinical"]["summary"]

        with rt.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Prediction)) == \
                s.scalar(select(func.count()).select_from(CaseImage)) == len(ids)
            assert s.scalar(select(func.count()).select_from(ExplanationRecord)) == len(ids)
            report = audit.verify(s, rt.store)
        assert report.ok and report.records == len(ids) and report.objects == len(ids)
        assert client.get("/api/v1/audit/verify", headers=token_for(client, "auditor1")).json["ok"]
    finally:
        stop(worker)
