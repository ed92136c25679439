"""The analysis task and the periodic outbox sweep, as Celery tasks."""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from flask import current_app

from services import analysis, jobs
from services.runtime import Runtime

log = logging.getLogger(__name__)
_model_lock = threading.Lock()


def runtime() -> Runtime:
    return current_app.extensions["dermatriage"]


def analyser():
    """The process's engine behind a micro-batcher, created on first use.

    Created lazily inside the worker process (never in a parent that forks), so CUDA is
    initialised only where it is used."""
    ext = current_app.extensions
    with _model_lock:
        if "analyser" not in ext:
            from services.batching import MicroBatcher
            from services.diagnosis.engine import Engine

            settings = runtime().settings
            engine = Engine.load(settings.model_path)
            card = engine.card
            ext["analyser"] = (
                MicroBatcher(engine.analyse, settings.batch_max, settings.batch_wait_ms),
                analysis.ModelInfo(card.name, card.version, card.weights_sha256,
                                   dict(card.thresholds), card.bcc_threshold),
            )
            log.info("model %s %s loaded on %s", card.name, card.version, engine.device)
    return ext["analyser"]


def send_analysis(job_id: str) -> None:
    # retry=False: if the broker is down, fail now and leave the job to the sweeper rather
    # than hold the GP's request open.
    analyse_job.apply_async((job_id,), retry=False)


@shared_task(bind=True, name="dermatriage.analyse_job", acks_late=True,
             reject_on_worker_lost=True, max_retries=None)
def analyse_job(self, job_id: str) -> str:
    rt = runtime()
    batcher, model = analyser()
    try:
        return analysis.run_job(rt, job_id, batcher.run, model)
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


@shared_task(name="dermatriage.sweep_jobs")
def sweep_jobs() -> dict:
    return jobs.sweep(runtime(), send_analysis)
