"""Fixtures: real data, real components (PostgreSQL, Redis, S3 via moto) and product stacks.

Helpers and factories are in tests/factories.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from services import config
from tests.factories import (forget_login_failures, make_stack, port_open, reset_database, create_accounts,
                             small_model_file, free_port, wait_for_port)

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    d = config.shared_data_dir() / "ham10000-224"
    if not (d / "images").is_dir():
        pytest.skip(f"real HAM10000 images not found at {d} (shared data absent)")
    return d


@pytest.fixture(scope="session")
def ham_jpegs(ham_dir) -> list[bytes]:
    """A few real dermoscopic JPEGs, the first BCCs and non-BCCs of the metadata."""
    rows = list(csv.DictReader(open(ham_dir / "metadata.csv")))
    pick = [r for r in rows if r["dx"] == "bcc"][:4] + [r for r in rows if r["dx"] == "nv"][:4]
    return [(ham_dir / "images" / f"{r['image_id']}.jpg").read_bytes() for r in pick]


# --- real components: PostgreSQL, Redis, S3 (moto) ------------------------------------------
def _start_postgres() -> None:
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
                       check=False, capture_output=True)


def _start_redis(port: int = 6379) -> None:
    if shutil.which("redis-server") is not None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                        "--save", "", "--appendonly", "no"], check=False, capture_output=True)


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


@pytest.fixture
def private_redis():
    """A Redis server of this test's own, so it can be stopped without harming others."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    port = free_port()

    def start():
        proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                 "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        assert wait_for_port("127.0.0.1", port), "private redis did not start"
        return proc
    state = {"proc": start()}
    yield port, state, start
    if state["proc"].poll() is None:
        state["proc"].terminate()
        state["proc"].wait(10)


# --- stacks ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pipeline_model(tmp_path_factory) -> Path:
    """The demo model when built (make test), else a small valid model artifact."""
    path = config.demo_model_path()
    if path.exists():
        return path
    return small_model_file(tmp_path_factory.mktemp("model"))


@pytest.fixture
def make_product(request, tmp_path):
    """make_product(kind, **env overrides): a migrated stack with the test accounts."""
    def make(kind: str, **overrides):
        model = request.getfixturevalue("pipeline_model")
        if kind == "full":
            pg = request.getfixturevalue("postgres_url")
            stack = make_stack("full", tmp_path, model, pg, request.getfixturevalue("redis_url"),
                               request.getfixturevalue("s3_server"), **overrides)
            reset_database(pg)
            forget_login_failures(request.getfixturevalue("redis_url"))
        else:
            stack = make_stack("embedded", tmp_path, model, **overrides)
        create_accounts(stack.runtime())
        return stack
    return make


@pytest.fixture(params=["embedded", "full"])
def stack(request, make_product):
    return make_product(request.param)


@pytest.fixture
def full_stack(make_product):
    return make_product("full")


@pytest.fixture
def embedded_stack(make_product):
    return make_product("embedded")


@pytest.fixture(scope="session")
def demo_engine():
    from services.diagnosis.engine import Engine
    path = config.demo_model_path()
    if not path.exists():
        pytest.fail(f"demo model missing at {path}: `make test` builds it (make demo-model)")
    return Engine.load(path, "cpu")
