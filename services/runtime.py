"""The composition root: every process builds its adapters here, from settings, once.

``build`` wires the database, the object store and the analysis dispatcher (a port: a
callable that sends one job id; by default the Celery broker). The web's app factory and
the worker's entry point both call it, so both run on the same wiring; tests inject their
own dispatcher. Use cases receive the Runtime and open their own sessions through
``read``/``transaction``.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from . import db
from .config import Settings

CAPACITY_TTL_S = 10.0     # how long /healthz reuses its count of workers that can analyse
from .storage import ObjectStore, StorageError, open_store

Dispatcher = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    dispatcher: Dispatcher | None = None
    # Wall clock in seconds (token ages); tests move a fake one instead of sleeping.
    clock: Callable[[], float] = field(default=time.time)
    # How many analysis messages wait in the broker (None: cannot tell); tests inject one.
    depth_probe: Callable[[], int | None] | None = None

    @cached_property
    def engine(self) -> Engine:
        return db.make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine)

    @cached_property
    def read_sessions(self) -> sessionmaker[Session]:
        return db.make_session_factory(self.engine, read_only=True)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings.object_store_url)

    @cached_property
    def redis(self):
        """A Redis client where the broker is Redis (login throttling shares it), else None."""
        if not self.settings.broker_url.startswith(("redis://", "rediss://")):
            return None
        import redis
        return redis.Redis.from_url(self.settings.broker_url, socket_timeout=2, socket_connect_timeout=2)

    @cached_property
    def celery(self):
        from .broker import make_celery
        return make_celery(self.settings)

    @cached_property
    def sender(self):
        from .broker import make_sender
        return make_sender(self.settings)

    def read(self) -> AbstractContextManager[Session]:
        return db.read(self.read_sessions)

    def transaction(self) -> AbstractContextManager[Session]:
        return db.transaction(self.sessions)

    def send_job(self, job_id: str, urgent: bool = False) -> None:
        """Hand one analysis job to the workers; raises if the broker cannot take it.
        ``urgent``: ahead of the jobs already waiting, where the dispatcher can do that."""
        if self.dispatcher is None:
            from .broker import CeleryDispatcher
            self.dispatcher = CeleryDispatcher(self.sender)
        send = getattr(self.dispatcher, "urgent", None) if urgent else None
        (send or self.dispatcher)(job_id)

    def _ask(self, what: str, send) -> bool:
        """Best effort: False when the broker cannot take the request; the periodic job does
        the same work a little later, so nothing is lost."""
        try:
            send(self.sender)
            return True
        except Exception as exc:  # any transport error
            log.info("could not request %s: %s", what, exc)
            return False

    def request_deliveries(self) -> bool:
        """Ask a CPU worker to send due FHIR notifications now (else at the next sweep)."""
        from .broker import request_deliveries
        return self._ask("notification delivery", request_deliveries)

    def request_checkpoint(self) -> bool:
        """Ask a CPU worker to sign an audit checkpoint now (else the periodic one does)."""
        from .broker import request_checkpoint
        return self._ask("an audit checkpoint", request_checkpoint)

    def queue_depth(self) -> int | None:
        """Messages waiting in the broker's analysis queue, or None when it cannot be asked."""
        if self.depth_probe is not None:
            return self.depth_probe()
        try:
            from .broker import queue_depth
            return queue_depth(self.sender)
        except Exception:  # any transport error: the broker is down or does not say
            return None

    def health(self) -> dict[str, str]:
        """'ok' or the reason, for the database, the object store and the broker."""
        out = {}
        try:
            with self.engine.execution_options(**{db.READ_ONLY: True}).connect() as conn:
                conn.execute(text("SELECT 1"))
            out["database"] = "ok"
        except Exception as exc:  # any driver error means "not reachable" here
            out["database"] = f"unreachable: {type(exc).__name__}"
        try:
            self.store.ping()
            out["object_store"] = "ok"
        except (StorageError, OSError) as exc:
            out["object_store"] = f"unreachable: {exc}"
        try:
            from .broker import ping
            ping(self.sender)
            out["broker"] = "ok"
        except Exception as exc:  # any transport error: jobs wait in the outbox meanwhile
            out["broker"] = f"unreachable: {type(exc).__name__}"
        if out["broker"] == "ok":
            out["analysis_workers"] = self.analysis_capacity()
        return out

    def analysis_capacity(self) -> str:
        """"N" workers that can analyse (a valid model, consuming the analysis queue), "none",
        or "unknown" where the broker cannot be asked (the embedded one). Asked at most every
        ``CAPACITY_TTL_S`` seconds: the inspection broadcasts to every worker."""
        from .broker import analysis_workers

        now = time.monotonic()
        cached = getattr(self, "_capacity", None)
        if cached is None or now - cached[0] > CAPACITY_TTL_S:
            n = analysis_workers(self.sender)
            cached = (now, "unknown" if n is None else str(n) if n else "none")
            self._capacity = cached
        return cached[1]


def build(settings: Settings | None = None, dispatcher: Dispatcher | None = None,
          clock: Callable[[], float] = time.time) -> Runtime:
    return Runtime(settings or Settings.from_env(), dispatcher, clock)
