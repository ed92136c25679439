"""Periodic jobs, declared in one place, run by threads of every worker process.

A thread per job rather than Celery beat: the embedded default has no beat process, and
each job is safe to run from several workers at once (the sweep is idempotent).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from services import checkpoints, deliveries, jobs
from services.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    name: str
    interval_s: Callable[[Runtime], float]
    run: Callable[[Runtime], dict]


PERIODIC = (
    Periodic("outbox sweep", lambda rt: rt.settings.sweep_interval_s, jobs.sweep),
    Periodic("audit checkpoint", lambda rt: rt.settings.checkpoint_interval_s, checkpoints.periodic_checkpoint),
    # FHIR rest-hook notifications: retries with backoff happen here (each row says when).
    Periodic("notification delivery", lambda rt: rt.settings.sweep_interval_s, deliveries.deliver_due),
)


def start(rt: Runtime, stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for job in PERIODIC:
        def loop(job=job):
            while not stop.wait(job.interval_s(rt)):
                try:
                    result = job.run(rt)
                    if result.get("examined"):
                        log.info("%s: %s", job.name, result)
                except Exception:
                    log.exception("%s failed; will try again", job.name)
        thread = threading.Thread(target=loop, name=job.name, daemon=True)
        thread.start()
        threads.append(thread)
    return threads
