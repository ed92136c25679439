"""The outbox: analysis jobs are rows committed with their case, then sent to the broker.

``dispatch`` sends one job right after intake through the runtime's dispatcher port. If the
broker is down the job simply stays ``pending``; ``sweep`` (run periodically by every
worker, and by `dermatriage jobs sweep`) re-sends pending jobs, jobs whose message was lost
(queued too long) and jobs whose worker died (running past the lease), and gives up on jobs
that used all their attempts. Sending twice is safe: the analysis is idempotent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, case, or_, select, update

from .analysis import fail_job
from .models import AnalysisJob, utcnow
from .runtime import Runtime
from .vocabulary import JobStatus

log = logging.getLogger(__name__)
PENDING_GRACE = timedelta(seconds=5)    # leave fresh jobs to the intake's own dispatch


def dispatch(rt: Runtime, job_id: str) -> bool:
    try:
        rt.send_job(job_id)
    except Exception as exc:   # any broker/transport error: the sweeper will retry
        log.warning("broker unavailable, job %s stays pending: %s", job_id, exc)
        return False
    with rt.transaction() as s:
        s.execute(update(AnalysisJob).where(AnalysisJob.id == job_id)
                  .values(dispatched_at=utcnow(), dispatches=AnalysisJob.dispatches + 1,
                          status=case((AnalysisJob.status == JobStatus.PENDING, JobStatus.QUEUED.value),
                                      else_=AnalysisJob.status)))
    return True


def sweep(rt: Runtime, now=None) -> dict:
    now = now or utcnow()
    lease = timedelta(seconds=rt.settings.job_lease_s)
    with rt.read() as s:
        stale = s.scalars(select(AnalysisJob).where(or_(
            and_(AnalysisJob.status == JobStatus.PENDING, AnalysisJob.created_at < now - PENDING_GRACE),
            and_(AnalysisJob.status == JobStatus.QUEUED, AnalysisJob.dispatched_at < now - lease),
            and_(AnalysisJob.status == JobStatus.QUEUED, AnalysisJob.dispatched_at.is_(None)),
            and_(AnalysisJob.status == JobStatus.RUNNING, AnalysisJob.started_at < now - lease),
        )).limit(500)).all()
        candidates = [(j.id, j.status, j.attempts) for j in stale]
    sent = failed = 0
    for job_id, status, attempts in candidates:
        if attempts >= rt.settings.max_task_attempts:
            fail_job(rt, job_id, f"gave up after {attempts} attempts (last state {status})")
            failed += 1
        elif dispatch(rt, job_id):
            sent += 1
    return {"examined": len(candidates), "sent": sent, "failed": failed}
