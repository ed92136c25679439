"""The outbox: analysis jobs are rows committed with their case, then sent to the broker.

``dispatch`` sends one job right after intake through the runtime's dispatcher port. If the
broker is down the job simply stays ``pending``; ``sweep`` (run periodically by every
worker, and by `dermatriage jobs sweep`) re-sends pending jobs, jobs whose message was lost
and jobs whose worker died, and gives up on jobs that used all their attempts. Sending twice
is safe (the analysis is idempotent) but costs a delivery, so the sweeper re-sends only what
is lost, once per lease:
- running: lost when the worker's heartbeat (or the start, for a short job) is older than a
  lease. The re-send puts the job back to ``queued`` with a new ``dispatched_at``, so the next
  sweeps leave it alone for a lease instead of sending it again every sweep.
- queued: a job waiting its turn in a long backlog is not lost. Its message is in the broker
  while the broker's analysis queue holds messages; only when the queue is empty (every
  message delivered) is a job still queued a lease after its dispatch lost, e.g. to a broker
  restart without persistence. When the broker cannot be asked, nothing queued is re-sent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, case, func, or_, select, update

from .analysis import fail_job
from .models import AnalysisJob, utcnow
from .runtime import Runtime
from .vocabulary import JobStatus

log = logging.getLogger(__name__)
PENDING_GRACE = timedelta(seconds=5)    # leave fresh jobs to the intake's own dispatch


def dispatch(rt: Runtime, job_id: str, now=None) -> bool:
    try:
        rt.send_job(job_id)
    except Exception as exc:   # any broker/transport error: the sweeper will retry
        log.warning("broker unavailable, job %s stays pending: %s", job_id, exc)
        return False
    with rt.transaction() as s:
        s.execute(update(AnalysisJob).where(AnalysisJob.id == job_id)
                  .values(dispatched_at=now or utcnow(), dispatches=AnalysisJob.dispatches + 1,
                          status=case((AnalysisJob.status == JobStatus.PENDING, JobStatus.QUEUED.value),
                                      else_=AnalysisJob.status)))
    return True


def sweep(rt: Runtime, now=None) -> dict:
    now = now or utcnow()
    lease = timedelta(seconds=rt.settings.job_lease_s)
    alive_at = func.coalesce(AnalysisJob.heartbeat_at, AnalysisJob.started_at)
    lost = [and_(AnalysisJob.status == JobStatus.PENDING, AnalysisJob.created_at < now - PENDING_GRACE),
            and_(AnalysisJob.status == JobStatus.RUNNING, alive_at < now - lease)]
    with rt.read() as s:
        overdue = s.scalar(select(func.count()).select_from(AnalysisJob).where(
            AnalysisJob.status == JobStatus.QUEUED, or_(AnalysisJob.dispatched_at < now - lease,
                                                        AnalysisJob.dispatched_at.is_(None))))
    depth = rt.queue_depth() if overdue else None
    if overdue and depth == 0:
        lost.append(and_(AnalysisJob.status == JobStatus.QUEUED, or_(
            AnalysisJob.dispatched_at < now - lease, AnalysisJob.dispatched_at.is_(None))))
    # One transaction that locks the rows it re-sends (SKIP LOCKED on PostgreSQL; SQLite's
    # BEGIN IMMEDIATE serialises sweeps): two workers sweeping at once never both re-send a job.
    sent = 0
    give_up: list[tuple[str, int, str]] = []
    with rt.transaction() as s:
        stale = s.scalars(select(AnalysisJob).where(or_(*lost)).order_by(AnalysisJob.created_at)
                          .limit(500).with_for_update(skip_locked=True)).all()
        examined = len(stale)
        for job in stale:
            if job.attempts >= rt.settings.max_task_attempts:
                give_up.append((job.id, job.attempts, job.status.value))
                continue
            try:
                # A dead worker's job (or one whose message the broker lost) goes ahead of the
                # backlog: its case has waited its turn once already. A job never sent (the
                # broker was down at intake) takes its place in arrival order: after an outage
                # there are hundreds of those, and they must not delay the dead worker's.
                rt.send_job(job.id, urgent=job.status != JobStatus.PENDING)
            except Exception as exc:   # broker down: the rest wait for the next sweep
                log.warning("broker unavailable during the sweep: %s", exc)
                break
            # pending -> queued; a lost running job -> queued again (a fresh lease from now)
            job.status, job.dispatched_at, job.dispatches = JobStatus.QUEUED, now, job.dispatches + 1
            sent += 1
    for job_id, attempts, status in give_up:
        fail_job(rt, job_id, f"gave up after {attempts} attempts (last state {status})")
    return {"examined": examined, "sent": sent, "failed": len(give_up),
            "queued_overdue": overdue, "broker_depth": depth}
