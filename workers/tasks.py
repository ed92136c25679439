"""The tasks, registered on a worker's Celery application, one per queue.

- analysis queue (GPU workers): ``analyse_job``, the model's work and nothing else;
- cpu queue: ``audit_checkpoint`` and ``deliver_notifications``, which the web requests
  after a human decision (the periodic jobs of services/ also run in workers of this
  queue, workers/periodic.py);
- shadow queue: ``shadow_read``, the shadow model's reading of a case the champion has
  analysed (services/shadow.py), on workers of its own.

Tasks are closures over the worker's runtime rather than module-level ``shared_task``s: the
runtime is built once per process by the entry point (workers/worker.py), and the web never
imports this module (it sends tasks by name, services/broker.py).
"""

from __future__ import annotations

import logging

from celery import Celery

from services import analysis, checkpoints, deliveries, shadow
from services.broker import ANALYSE_TASK, CHECKPOINT_TASK, DELIVER_TASK, SHADOW_TASK
from services.runtime import Runtime

log = logging.getLogger(__name__)


def register(celery: Celery, rt: Runtime) -> None:
    @celery.task(bind=True, name=ANALYSE_TASK, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)
    def analyse_job(self, job_id: str) -> str:
        try:
            outcome = analysis.analyse_with_champion(rt, job_id)
            if outcome == "done":
                shadow.request(rt, job_id)
            return outcome
        except analysis.TRANSIENT as exc:
            attempts = analysis.record_error(rt, job_id, f"{type(exc).__name__}: {exc}")
            if attempts >= rt.settings.max_task_attempts:
                analysis.fail_job(rt, job_id, f"gave up after {attempts} attempts: {exc}")
                return "failed"
            log.warning("job %s attempt %d failed (%s); retrying", job_id, attempts, exc)
            raise self.retry(exc=exc, countdown=min(60, 2 ** attempts))
        except Exception as exc:
            log.exception("job %s failed permanently", job_id)
            analysis.fail_job(rt, job_id, f"{type(exc).__name__}: {exc}")
            return "failed"

    @celery.task(name=CHECKPOINT_TASK, ignore_result=True)
    def audit_checkpoint() -> dict:
        # Idempotent and cheap when nothing is new (skipped); a lost request only means the
        # periodic checkpoint signs these records instead.
        return checkpoints.periodic_checkpoint(rt)

    @celery.task(name=SHADOW_TASK, ignore_result=True, acks_late=True)
    def shadow_read(case_id: str, version_id: str) -> str:
        # Never retried into the champion's way: a failed reading is a case the comparison
        # lacks, logged.
        try:
            return shadow.read_case(rt, case_id, version_id)
        except Exception:
            log.exception("shadow reading of case %s failed", case_id)
            return "failed"

    @celery.task(name=DELIVER_TASK, ignore_result=True)
    def deliver_notifications() -> dict:
        # Claims what it sends (services/deliveries.py): safe beside the periodic delivery.
        return deliveries.deliver_due(rt)
