import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from services.models import AnalysisJob, Case, CaseImage
from services.storage import LocalDiskStore

from tests.factories import CASE_FIELDS as FIELDS
from tests.factories import encode, free_port, jpeg_with_gps, post_case, token_for


def counts(stack):
    rt = stack.runtime()
    with rt.sessions() as s:
        n = (s.scalar(select(func.count()).select_from(Case)),
             s.scalar(select(func.count()).select_from(CaseImage)),
             s.scalar(select(func.count()).select_from(AnalysisJob)))
    return n


def stored_objects(stack) -> int:
    store = stack.runtime().store
    if isinstance(store, LocalDiskStore):
        return sum(1 for p in store.root.rglob("*") if p.is_file())
    if not store.client.bucket_exists(store.bucket):
        return 0
    return sum(1 for _ in store.client.list_objects(store.bucket, recursive=True))


def test_submit_stores_case_images_and_job_with_exif_stripped(stack, ham_jpegs):
    client = stack.app().test_client()
    h = token_for(client, "gp1")
    r = post_case(client, h, images=[("images", (io.BytesIO(jpeg_with_gps()), "a.jpg")),
                                     ("images", (io.BytesIO(ham_jpegs[0]), "b.jpg"))])
    assert r.status_code == 201, r.json
    assert r.json["status"] == "received" and len(r.json["id"]) == 32
    view = client.get(f"/api/v1/cases/{r.json['id']}", headers=h).json
    assert view["patient_pseudonym"] == "P-001" and view["body_site"] == "nose" and view["changed"] is True
    assert [i["width"] for i in view["images"]] == [400, 224]
    rt = stack.runtime()
    with rt.sessions() as s:
        imgs = s.scalars(select(CaseImage).order_by(CaseImage.position)).all()
        job = s.scalar(select(AnalysisJob))
        assert job.case_id == r.json["id"] and job.status in ("pending", "queued")
    import hashlib
    for img in imgs:
        data = rt.store.get(img.object_key)
        assert hashlib.sha256(data).hexdigest() == img.sha256 and img.size == len(data)
        assert not Image.open(io.BytesIO(data)).getexif(), "EXIF metadata must be stripped"
        assert img.object_key.startswith("images/") and "lesion" not in img.object_key
    listed = client.get("/api/v1/cases", headers=h).json["cases"]
    assert [c["id"] for c in listed] == [r.json["id"]]


@pytest.mark.parametrize("change,field", [
    ({"age": "abc"}, "age"), ({"age": "130"}, "age"), ({"sex": "x"}, "sex"),
    ({"body_site": "moon"}, "body_site"), ({"patient_pseudonym": ""}, "patient_pseudonym"),
    ({"bleeding": "maybe"}, "bleeding"), ({"duration_months": "-1"}, "duration_months"),
    ({"gp_question": "x" * 2001}, "gp_question"),
])
def test_bad_fields_are_named_and_nothing_is_stored(stack, change, field):
    client = stack.app().test_client()
    r = post_case(client, token_for(client, "gp1"), {**FIELDS, **change})
    assert r.status_code == 422 and r.json["field"] == field and r.json["message"]
    assert counts(stack) == (0, 0, 0) and stored_objects(stack) == 0


@pytest.mark.parametrize("payload,field", [
    (b"not an image" * 30, "images[1]"),
    (encode(np.zeros((300, 300, 3), np.uint8), "GIF"), "images[1]"),
    (encode(np.zeros((30, 30, 3), np.uint8)), "images[1]"),
    (encode(np.full((300, 300, 3), 128, np.uint8), "PNG")[:-12], "images[1]"),   # truncated
])
def test_bad_image_is_named_and_nothing_is_stored(stack, payload, field):
    client = stack.app().test_client()
    r = post_case(client, token_for(client, "gp1"), images=[
        ("images", (io.BytesIO(jpeg_with_gps()), "ok.jpg")), ("images", (io.BytesIO(payload), "bad.bin"))])
    assert r.status_code == 422 and r.json["field"] == field and "bad.bin" in r.json["message"]
    assert counts(stack) == (0, 0, 0) and stored_objects(stack) == 0


def test_no_image_and_not_multipart(embedded_stack):
    client = embedded_stack.app().test_client()
    h = token_for(client, "gp1")
    r = post_case(client, h, images=[])
    assert r.status_code == 422 and r.json["field"] == "images"
    r = client.post("/api/v1/cases", json=FIELDS, headers=h)
    assert r.status_code == 422 and "multipart" in r.json["message"]


def test_storage_down_gives_503_and_nothing_stored(full_stack, monkeypatch):
    broken = full_stack.with_env(OBJECT_STORE_URL=f"s3://k:s@127.0.0.1:{free_port()}/gone")
    client = broken.app().test_client()
    r = post_case(client, token_for(client, "gp1"))
    assert r.status_code == 503 and "storage" in r.json["message"]
    assert counts(full_stack) == (0, 0, 0)
    assert client.get("/healthz").status_code == 503


def test_database_down_gives_503_and_leaves_no_orphan_objects(embedded_stack, monkeypatch):
    from sqlalchemy.exc import OperationalError
    from services import cases

    client = embedded_stack.app().test_client()
    h = token_for(client, "gp1")
    original = cases.CaseImage

    def broken(**kw):
        raise OperationalError("INSERT", {}, Exception("database is gone"))
    monkeypatch.setattr(cases, "CaseImage", broken)
    r = post_case(client, h)
    monkeypatch.setattr(cases, "CaseImage", original)
    assert r.status_code == 503 and "database" in r.json["message"]
    assert counts(embedded_stack) == (0, 0, 0) and stored_objects(embedded_stack) == 0


def test_healthz_answers_for_every_dependency(stack):
    r = stack.app().test_client().get("/healthz")
    # No worker runs in this test: every dependency answers, and none can analyse.
    assert r.status_code == 200 and r.json == {"status": "degraded", "checks": {
        "database": "ok", "object_store": "ok", "broker": "ok", "analysis_workers": "none"}}


def test_broker_down_costs_a_submission_nothing_and_health_says_degraded(full_stack):
    """kombu used to retry the connection for ~6 s per submission while Redis was down; the
    case is committed with its job before the send, so the send may fail at once."""
    import time
    stack = full_stack.with_env(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = stack.app().test_client()
    started = time.perf_counter()
    r = post_case(client, token_for(client, "gp1"))
    took = time.perf_counter() - started
    assert r.status_code == 201, r.json
    assert took < 2.0, f"a submission waited {took:.1f} s on a broker that is down"
    with stack.runtime().read() as s:
        job = s.scalar(select(AnalysisJob).where(AnalysisJob.case_id == r.json["id"]))
        assert job.status == "pending" and job.dispatches == 0      # the sweeper's to send
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json["status"] == "degraded"
    assert health.json["checks"]["broker"].startswith("unreachable")


def test_instant_check_gives_a_verdict_stores_nothing_and_is_rate_limited(embedded_stack, ham_jpegs):
    from services import image_check
    image_check._local.clear()
    client = embedded_stack.app().test_client()
    h = token_for(client, "gp1")
    before = (counts(embedded_stack), stored_objects(embedded_stack))
    r = client.post("/api/v1/images/check", data={"image": (io.BytesIO(ham_jpegs[0]), "a.jpg")},
                    headers=h, content_type="multipart/form-data")
    assert r.status_code == 200, r.json
    assert r.json["verdict"] in ("dermoscopic", "clinical", "not_a_lesion", "not_skin", "unusable")
    assert r.json["reason"] and isinstance(r.json["hints"], list) and r.json["elapsed_ms"] > 0
    drawing = np.full((200, 200, 3), 255, np.uint8)
    drawing[50:150, 90:110] = (20, 20, 200)
    r = client.post("/api/v1/images/check", data={"image": (io.BytesIO(encode(drawing, "PNG")), "d.png")},
                    headers=h, content_type="multipart/form-data")
    assert r.json["verdict"] == "not_skin" and not r.json["applicable"] and r.json["hints"]
    r = client.post("/api/v1/images/check", data={"image": (io.BytesIO(encode(drawing, "PNG")[:-20]), "t.png")},
                    headers=h, content_type="multipart/form-data")
    assert r.status_code == 200 and r.json["verdict"] == "unusable" and r.json["code"] == "corrupt"
    r = client.post("/api/v1/images/check", data={}, headers=h, content_type="multipart/form-data")
    assert r.status_code == 422 and r.json["field"] == "image"
    assert (counts(embedded_stack), stored_objects(embedded_stack)) == before
    derm = token_for(client, "derm1")
    r = client.post("/api/v1/images/check", data={"image": (io.BytesIO(ham_jpegs[0]), "a.jpg")},
                    headers=derm, content_type="multipart/form-data")
    assert r.status_code == 403
    import time
    if time.time() % 60 > 45:            # the limit counts per clock minute: start a fresh one
        time.sleep(61 - time.time() % 60)
    image_check._local.clear()
    statuses = [client.post("/api/v1/images/check", data={"image": (io.BytesIO(encode(drawing, "PNG")), "d.png")},
                            headers=h, content_type="multipart/form-data").status_code for _ in range(30)]
    assert statuses == [200] * 30
    limited = client.post("/api/v1/images/check", data={"image": (io.BytesIO(encode(drawing, "PNG")), "d.png")},
                          headers=h, content_type="multipart/form-data")
    assert limited.status_code == 429 and "image checks a minute" in limited.json["message"]
    assert int(limited.headers["Retry-After"]) >= 1


def test_dicom_photographs_are_read_mapped_and_stored_without_identifiers(stack):
    """A device's DICOM objects through the API: pixel data decoded (uncompressed and JPEG
    baseline), age, sex and body site mapped into the case where the form leaves them out,
    and what is stored carries no name, birth date or identifier."""
    from services.modelling.synthetic import generate
    from tests.factories import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, dicom_file

    rgb = generate(2, seed=4, size=320).images
    client = stack.app().test_client()
    h = token_for(client, "gp1")
    data = {"patient_pseudonym": "P-DICOM",
            "images": [(io.BytesIO(dicom_file(rgb[0])), "derm.dcm"),
                       (io.BytesIO(dicom_file(rgb[1], syntax="jpeg", sop="1.2.840.10008.5.1.4.1.1.77.1.4")),
                        "overview.dcm")]}
    r = client.post("/api/v1/cases", data=data, headers=h, content_type="multipart/form-data")
    assert r.status_code == 201, r.json
    view = client.get(f"/api/v1/cases/{r.json['id']}", headers=h).json
    assert (view["age"], view["sex"], view["body_site"]) == (67, "female", "nose")
    kinds = [(i["kind"], i["media_type"], i["origin"]["sop_class"]) for i in view["images"]]
    assert kinds == [("dermoscopic", "image/png", "Dermoscopic Photography Image Storage"),
                     ("clinical", "image/jpeg", "VL Photographic Image Storage")]
    assert view["images"][0]["origin"]["device"] == "DermLite DL5"
    for image in view["images"]:
        stored = client.get(f"/api/v1/cases/{view['id']}/images/{image['id']}", headers=h).data
        assert stored[128:132] != b"DICM"
        for secret in (PATIENT_NAME, "DOE", PATIENT_ID, BIRTH_DATE, "St Elsewhere", "ACC-1"):
            assert secret.encode() not in stored
        assert Image.open(io.BytesIO(stored)).size == (320, 320)
    assert PATIENT_NAME not in r.get_data(as_text=True) and PATIENT_NAME not in str(view)


@pytest.mark.parametrize("make,status,says", [
    (lambda rgb, f: f(rgb, syntax="1.2.840.10008.1.2.4.80"), 415, "JPEG-LS Lossless"),
    (lambda rgb, f: f(rgb, sop="1.2.840.10008.5.1.4.1.1.7"), 415, "Secondary Capture"),
    (lambda rgb, f: f(rgb, burned_in=True), 422, "burned-in annotation"),
    (lambda rgb, f: f(rgb)[:400], 422, "DICOM"),
])
def test_dicom_that_cannot_be_read_is_refused_and_nothing_is_stored(embedded_stack, make, status, says):
    from services.modelling.synthetic import generate
    from tests.factories import dicom_file

    client = embedded_stack.app().test_client()
    h = token_for(client, "gp1")
    before = (counts(embedded_stack), stored_objects(embedded_stack))
    bad = make(generate(1, seed=4, size=128).images[0], dicom_file)
    r = post_case(client, h, images=[("images", (io.BytesIO(bad), "x.dcm"))])
    assert r.status_code == status, r.json
    assert says in r.json["message"] and r.json["field"] == "images[0]"
    assert (counts(embedded_stack), stored_objects(embedded_stack)) == before
