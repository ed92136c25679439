"""Helpers and factories for the tests, in one module (fixtures live in the conftest files).

Nothing here is a test. Test modules import from here, never from one another.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select

from services import migrate, risk
from services.config import Settings
from services.diagnosis import artifact
from services.diagnosis.network import Architecture, BCCPatternNet
from services.diagnosis.patterns import PATTERNS
from services.diagnosis.preprocess import PREPROCESSING_VERSION
from services.models import Case, User, utcnow
from services.runtime import Runtime
from services.vocabulary import CaseStatus

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
ACCOUNTS = {"gp1": "gp", "gp2": "gp", "derm1": "dermatologist", "derm2": "dermatologist",
            "auditor1": "auditor", "admin1": "admin"}
CASE_FIELDS = {"patient_pseudonym": "P-001", "age": "71", "sex": "female", "body_site": "nose",
               "duration_months": "8", "changed": "true", "bleeding": "false",
               "gp_question": "Pearly papule, BCC?"}


# --- images ------------------------------------------------------------------------------
def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_with_gps() -> bytes:
    """A synthetic dermoscopic picture (the scope gate reads it as one) carrying GPS and
    camera metadata, 400 x 300."""
    from services.modelling.synthetic import generate

    img = Image.fromarray(np.ascontiguousarray(generate(1, seed=0, size=400).images[0][50:350]))
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}   # GPS IFD
    exif[0x010F] = "PhoneMaker"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


# --- models ------------------------------------------------------------------------------
SMALL = Architecture(width_mult=0.35, output_stride=16, input_size=96)


def make_card(**over) -> artifact.ModelCard:
    fields = dict(name="test-model", version="0.0.1", weights_sha256="",
                  architecture=SMALL.to_dict(), preprocessing_version=PREPROCESSING_VERSION,
                  patterns=list(PATTERNS), thresholds={c: 0.5 for c in PATTERNS},
                  bcc_threshold=0.5, training_data={"source": "random init"}, metrics={},
                  intended_use="tests only")
    fields.update(over)
    return artifact.ModelCard(**fields)


def random_model(arch: Architecture = SMALL, seed: int = 0) -> BCCPatternNet:
    """Random weights with BatchNorm statistics that keep activations alive, so Grad-CAM
    maps are non-trivial for every target."""
    torch.manual_seed(seed)
    model = BCCPatternNet(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.2)
            torch.nn.init.normal_(m.bias, 0, 0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.2, 0.2)
    return model.eval()


def small_model_file(folder: Path, name: str = "small.pt") -> Path:
    path = Path(folder) / name
    artifact.save(random_model(), make_card(), path)
    return path


# --- processes and ports ---------------------------------------------------------------------
def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 20) -> bool:
    return bool(poll(lambda: port_open(host, port), timeout, raise_on_timeout=False))


def poll(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition",
         raise_on_timeout: bool = True):
    """Wait for a condition another process brings about (no fixed sleeps)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    if raise_on_timeout:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return None


wait_until = poll


def stop(proc: subprocess.Popen, sig=15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


class FakeClock:
    """A wall clock that tests move by hand (Runtime.clock)."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- stacks --------------------------------------------------------------------------------
@dataclass
class Stack:
    """One configuration of the product (embedded, or Postgres + Redis + S3) for a test."""

    name: str
    env: dict
    settings: Settings = field(init=False)

    def __post_init__(self):
        self.settings = Settings.from_env(self.env)

    def runtime(self, **wiring) -> Runtime:
        return Runtime(self.settings, **wiring)

    def app(self, **wiring):
        from web import create_app
        app = create_app(runtime=self.runtime(**wiring))
        app.config["TESTING"] = True
        return app

    def with_env(self, **changes) -> "Stack":
        return Stack(self.name, {**self.env, **{k: str(v) for k, v in changes.items()}})

    def start_worker(self, log: Path, queues: str = "analysis,cpu", **extra_env) -> subprocess.Popen:
        env = {**os.environ, **self.env, **{k: str(v) for k, v in extra_env.items()},
               "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--concurrency", "4",
                                 "--queues", queues],
                                cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)


def make_stack(kind: str, tmp: Path, model_path: Path, postgres_url=None, redis_url=None,
               s3_endpoint=None, **overrides) -> Stack:
    env = {"DERMATRIAGE_DATA_DIR": str(tmp), "DERMATRIAGE_MODEL_PATH": str(model_path),
           "SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex, "SWEEP_INTERVAL_S": "1",
           "JOB_LEASE_S": "30", "DERMATRIAGE_ENV": "test", "QUEUE_CACHE_S": "0"}
    if kind == "full":
        env["DATABASE_URL"] = postgres_url
        env["BROKER_URL"] = redis_url
        env["OBJECT_STORE_URL"] = f"s3://testing:testing@{s3_endpoint}/dt-{uuid.uuid4().hex[:8]}"
    env.update({k: str(v) for k, v in overrides.items()})
    stack = Stack(kind, env)
    migrate.upgrade(stack.settings.database_url)
    return stack


def empty_database(url: str) -> None:
    """Nothing in the PostgreSQL database (a downgrade would refuse to drop review records)."""
    from sqlalchemy import create_engine, text
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def forget_login_failures(redis_url: str) -> None:
    """Throttle counts live in the shared Redis for 15 minutes: each full-stack test starts clean."""
    import redis
    r = redis.Redis.from_url(redis_url)
    keys = r.keys("dt:login:*")
    if keys:
        r.delete(*keys)


def reset_database(url: str) -> None:
    empty_database(url)
    migrate.upgrade(url)


def create_accounts(rt: Runtime) -> None:
    from services.users import create_user
    with rt.transaction() as s:
        for name, role in ACCOUNTS.items():
            create_user(s, name, PASSWORD, role)


def user(rt: Runtime, username: str) -> User:
    with rt.read() as s:
        return s.scalar(select(User).where(User.username == username))


# --- API -----------------------------------------------------------------------------------
def login(app, username: str):
    """A page client logged in through the real form (with its CSRF token)."""
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as sess:
        csrf = sess["csrf"]
    r = client.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": csrf})
    assert r.status_code == 302, r.get_data(as_text=True)
    return client


def token_for(client, username: str) -> dict:
    r = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.json
    return {"Authorization": f"Bearer {r.json['token']}"}


def post_case(client, headers, fields=CASE_FIELDS, images=None):
    images = images if images is not None else [("images", (io.BytesIO(jpeg_with_gps()), "lesion.jpg"))]
    data = dict(fields)
    data.update({k: v for k, v in images} if len(images) == 1 else {})
    if len(images) != 1:
        data["images"] = [v for _, v in images]
    return client.post("/api/v1/cases", data=data, headers=headers, content_type="multipart/form-data")


# --- rows ------------------------------------------------------------------------------------
def queued_case(rt: Runtime, pseudonym: str = "P", p_bcc: float = 0.5,
                received: datetime | None = None, gp: str = "gp1", bleeding: bool = False,
                status: CaseStatus = CaseStatus.ANALYSED) -> str:
    """A case as the worker leaves it: analysed, scored by the real risk rule, queued."""
    received = received or utcnow()
    r = risk.assess([risk.ImageFinding(p_bcc, [], True, [])], bleeding=bleeding, changed=False,
                    body_site="back", age=60, received_at=received)
    with rt.transaction() as s:
        owner = s.scalar(select(User).where(User.username == gp))
        case = Case(gp_id=owner.id, patient_pseudonym=pseudonym, age=60, sex="male", body_site="back",
                    changed=False, bleeding=bleeding, gp_question="", status=status,
                    ai_available=True, needs_attention=False, risk_score=r.score, risk_tier=r.tier,
                    risk_reasons=r.reasons, due_at=r.due_at, escalate_at=r.escalate_at,
                    queued_at=received, created_at=received)
        s.add(case)
        s.flush()
        return case.id


def mark_queued(rt: Runtime, case_id: str, score: float = 50.0) -> str:
    """Put a freshly submitted case in the queue as if analysed; returns its first image id."""
    with rt.transaction() as s:
        c = s.get(Case, case_id)
        c.status, c.risk_score, c.risk_tier = CaseStatus.ANALYSED, score, "routine"
        c.due_at, c.escalate_at, c.queued_at = (utcnow() + timedelta(days=5),
                                                utcnow() + timedelta(days=4), utcnow())
        return c.images[0].id


# --- analysed cases and reviews -------------------------------------------------------------
def model_info(engine):
    from services import analysis
    c = engine.card
    return analysis.ModelInfo(c.name, c.version, c.weights_sha256, dict(c.thresholds), c.bcc_threshold)


def analysed_case(stack: Stack, engine, images: list[bytes], gp: str = "gp1", **fields) -> str:
    """A case submitted through the API and analysed in-process by ``engine``."""
    from services import analysis
    from services.models import AnalysisJob

    client = stack.app().test_client()
    headers = token_for(client, gp)
    r = post_case(client, headers, fields={**CASE_FIELDS, **fields},
                  images=[("images", (io.BytesIO(b), f"{i}.jpg")) for i, b in enumerate(images)])
    assert r.status_code == 201, r.json
    rt = stack.runtime()
    with rt.sessions() as s:
        job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == r.json["id"]))
    assert analysis.run_job(rt, job_id, engine.analyse, model_info(engine)) == "done"
    return r.json["id"]


def mask_data_url(size: int, box: tuple[int, int, int, int]) -> str:
    """A region drawn as the review page sends it: an RGBA PNG, opaque inside ``box``."""
    import base64
    rgba = np.zeros((size, size, 4), np.uint8)
    x0, y0, x1, y1 = box
    rgba[y0:y1, x0:x1] = (0, 220, 255, 128)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def review_body(**over) -> dict:
    body = {"diagnosis": "bcc", "patterns": {c: "unsure" for c in PATTERNS},
            "management": "biopsy", "message": "Likely BCC: please refer for biopsy.",
            "override_reason": "clinical features of BCC"}
    body.update(over)
    return body


# --- DICOM ---------------------------------------------------------------------------------
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "DOE^JANE", "NHS-943-476-5919", "19580214"


def dicom_file(rgb: np.ndarray, sop: str = "1.2.840.10008.5.1.4.1.1.77.1.7", syntax: str = "explicit",
               burned_in: bool = False, study_uid: str | None = None, accession: str = "ACC-1", **attrs) -> bytes:
    """A DICOM Part 10 photograph as a device would send it, with a patient's name, identifier
    and birth date in the header (what intake must not keep). ``syntax``: explicit (little
    endian, uncompressed), jpeg (JPEG baseline) or any transfer syntax UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = {"explicit": ExplicitVRLittleEndian, "jpeg": JPEGBaseline8Bit}.get(syntax, syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.PatientAge, ds.PatientSex, ds.BodyPartExamined = "067Y", "F", "NOSE"
    ds.Manufacturer, ds.ManufacturerModelName = "DermLite", "DL5"
    ds.InstitutionName, ds.AccessionNumber, ds.Modality = "St Elsewhere Practice", accession, "XC"
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if meta.TransferSyntaxUID == ExplicitVRLittleEndian:
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = np.ascontiguousarray(rgb, np.uint8).tobytes()
    else:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([encode(rgb, "JPEG", quality=95)])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- FHIR ----------------------------------------------------------------------------------
def referral_bundle(images: list[bytes], identifier: str = "REF-1", media: str = "image/jpeg",
                    birth_year: str = "1955", **patient_extra) -> dict:
    """A referral as an EHR sends it: a transaction Bundle with a ServiceRequest, a
    pseudonymous Patient and one DocumentReference per image (the first inline, the others
    as Binary entries the attachment points at)."""
    import base64
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:ehr:pseudonym", "value": "EHR-P-7"}],
               "gender": "female", "birthDate": birth_year, **patient_extra}
    entries = [
        {"fullUrl": "urn:uuid:patient-1", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:referral-1", "request": {"method": "POST", "url": "ServiceRequest"}, "resource": {
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "urn:ehr:referral", "value": identifier}],
            "subject": {"reference": "urn:uuid:patient-1"},
            "bodySite": [{"coding": [{"system": "https://fhir.dermatriage.org/CodeSystem/body-site",
                                      "code": "nose"}]}],
            "reason": [{"concept": {"coding": [{"system": "https://fhir.dermatriage.org/CodeSystem/red-flag",
                                                "code": "bleeding"}]}}],
            "note": [{"text": "Pearly papule, 6 months."}]}},
    ]
    for i, data in enumerate(images):
        b64 = base64.b64encode(data).decode()
        attachment = {"contentType": media, "title": f"lesion-{i}.jpg"}
        if i == 0:
            attachment["data"] = b64
        else:
            attachment["url"] = f"urn:uuid:binary-{i}"
            entries.append({"fullUrl": f"urn:uuid:binary-{i}", "request": {"method": "POST", "url": "Binary"},
                            "resource": {"resourceType": "Binary", "contentType": media, "data": b64}})
        entries.append({"fullUrl": f"urn:uuid:doc-{i}", "request": {"method": "POST", "url": "DocumentReference"},
                        "resource": {"resourceType": "DocumentReference", "status": "current",
                                     "subject": {"reference": "urn:uuid:patient-1"},
                                     "content": [{"attachment": attachment}]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def fhir_post(client, headers, body, path: str = "/fhir"):
    import json
    return client.post(path, data=body if isinstance(body, (bytes, str)) else json.dumps(body),
                       headers={**headers, "Content-Type": "application/fhir+json"})
