from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services import config


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    d = config.shared_data_dir() / "ham10000-224"
    if not (d / "images").is_dir():
        pytest.skip(f"real HAM10000 images not found at {d} (shared data absent)")
    return d


@pytest.fixture(scope="session")
def ham_jpegs(ham_dir) -> list[bytes]:
    """A few real dermoscopic JPEGs, the first BCCs and non-BCCs of the metadata."""
    import csv

    rows = list(csv.DictReader(open(ham_dir / "metadata.csv")))
    pick = [r for r in rows if r["dx"] == "bcc"][:4] + [r for r in rows if r["dx"] == "nv"][:4]
    return [(ham_dir / "images" / f"{r['image_id']}.jpg").read_bytes() for r in pick]


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


# --- real components: PostgreSQL, Redis, S3 (moto) ------------------------------------------
import os
import shutil
import socket
import subprocess
import time
import uuid

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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


def _start_postgres() -> None:
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
                       check=False, capture_output=True)


def _start_redis(port: int = 6379) -> subprocess.Popen | None:
    if shutil.which("redis-server") is None:
        return None
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                    "--save", "", "--appendonly", "no"], check=False, capture_output=True)


def wait_for_port(host: str, port: int, timeout: float = 20) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if port_open(host, port):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    if not port_open("127.0.0.1", 5432):
        _start_postgres()
        if not wait_for_port("127.0.0.1", 5432):
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started")
    name = f"dermatriage_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url():
    if not port_open("127.0.0.1", 6379):
        _start_redis()
        if not wait_for_port("127.0.0.1", 6379):
            pytest.fail("Redis is not reachable on 127.0.0.1:6379 and could not be started")
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1: the MinIO SDK code runs against it unchanged.
    moto checks neither signatures nor expiry, so no test here claims to."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


# --- stacks ------------------------------------------------------------------------------
PASSWORD = "correct horse battery"
ACCOUNTS = {"gp1": "gp", "gp2": "gp", "derm1": "dermatologist", "derm2": "dermatologist",
            "auditor1": "auditor", "admin1": "admin"}


@pytest.fixture(scope="session")
def pipeline_model(tmp_path_factory) -> Path:
    """The demo model when built (make install), else a small valid model artifact."""
    path = config.model_path()
    if path.exists():
        return path
    from services.diagnosis import artifact
    from tests.diagnosis.conftest import make_card, random_model
    path = tmp_path_factory.mktemp("model") / "small.pt"
    artifact.save(random_model(), make_card(), path)
    return path


def _stack(kind, tmp_path, request, **overrides):
    from tests.pipeline_support import make_stack, reset_database
    if kind == "full":
        pg = request.getfixturevalue("postgres_url")
        stack = make_stack("full", tmp_path, request.getfixturevalue("pipeline_model"), pg,
                           request.getfixturevalue("redis_url"), request.getfixturevalue("s3_server"),
                           **overrides)
        reset_database(pg)
    else:
        stack = make_stack("embedded", tmp_path, request.getfixturevalue("pipeline_model"), **overrides)
    rt = stack.runtime()
    from services.users import create_user
    with rt.sessions() as s, s.begin():
        for name, role in ACCOUNTS.items():
            create_user(s, name, PASSWORD, role)
    return stack


@pytest.fixture(params=["embedded", "full"])
def stack(request, tmp_path):
    return _stack(request.param, tmp_path, request)


@pytest.fixture
def full_stack(request, tmp_path):
    return _stack("full", tmp_path, request)


@pytest.fixture
def embedded_stack(request, tmp_path):
    return _stack("embedded", tmp_path, request)


def token_for(client, username: str) -> dict:
    r = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.json
    return {"Authorization": f"Bearer {r.json['token']}"}
