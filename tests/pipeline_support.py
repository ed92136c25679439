"""Stacks for the pipeline tests: the embedded default and Postgres + Redis + S3 (moto)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services import migrate
from services.config import Settings
from services.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    name: str
    env: dict
    settings: Settings = field(init=False)

    def __post_init__(self):
        self.settings = Settings.from_env(self.env)

    def runtime(self) -> Runtime:
        return Runtime(self.settings)

    def app(self):
        from web import create_app
        app = create_app(self.settings)
        app.config["TESTING"] = True
        return app

    def start_worker(self, log: Path, **extra_env) -> subprocess.Popen:
        env = {**os.environ, **self.env, **{k: str(v) for k, v in extra_env.items()},
               "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--concurrency", "4"],
                                cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)


def make_stack(kind: str, tmp: Path, model_path: Path, postgres_url=None, redis_url=None,
               s3_endpoint=None, **overrides) -> Stack:
    env = {"DERMATRIAGE_DATA_DIR": str(tmp), "DERMATRIAGE_MODEL_PATH": str(model_path),
           "SECRET_KEY": "test-secret-key-" + uuid.uuid4().hex, "SWEEP_INTERVAL_S": "1",
           "JOB_LEASE_S": "30", "DERMATRIAGE_ENV": "test"}
    if kind == "full":
        env["DATABASE_URL"] = postgres_url
        env["BROKER_URL"] = redis_url
        env["OBJECT_STORE_URL"] = f"s3://testing:testing@{s3_endpoint}/dt-{uuid.uuid4().hex[:8]}"
    env.update({k: str(v) for k, v in overrides.items()})
    stack = Stack(kind, env)
    migrate.upgrade(stack.settings.database_url)
    return stack


def reset_database(url: str) -> None:
    migrate.downgrade(url, "base")
    migrate.upgrade(url)


def wait_until(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen, sig=15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
