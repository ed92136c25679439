"""The message broker adapter: Celery as seen by the processes that send work.

The web only ever *sends* analysis jobs, by task name, so it needs Celery's client and the
task's name, never the worker's code. The workers build the same Celery application from
the same settings and register the task under that name (workers/tasks.py).
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from .config import ANALYSIS_QUEUE, CPU_QUEUE, Settings

ANALYSE_TASK = "dermatriage.analyse_job"      # analysis queue
CHECKPOINT_TASK = "dermatriage.audit_checkpoint"  # cpu queue
# Redis keeps one list per priority step (config.PRIORITY_STEPS) and serves the lowest first.
URGENT_PRIORITY, NORMAL_PRIORITY = 0, 6


def make_celery(settings: Settings) -> Celery:
    options = settings.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if key in options:       # kombu's filesystem transport expects them to exist
            Path(options[key]).mkdir(parents=True, exist_ok=True)
    celery = Celery("dermatriage")
    celery.config_from_object(settings.celery_config())
    return celery


def make_sender(settings: Settings) -> Celery:
    """Celery for sending only, which fails at once when the broker is down. Without
    ``max_retries=0`` kombu retries the connection for ~6 s despite ``retry=False``, holding a
    GP's request and a web thread for nothing: the outbox row is already committed and the
    sweeper re-sends it when the broker is back."""
    celery = make_celery(settings)
    celery.conf.broker_transport_options = {**settings.broker_transport_options, "max_retries": 0}
    return celery


def ping(celery: Celery) -> None:
    """Raise unless the broker accepts a connection (one try, no waiting between tries)."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=1)


class CeleryDispatcher:
    """The analysis dispatcher port (``Runtime.send_job``) backed by the broker."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def __call__(self, job_id: str, priority: int = NORMAL_PRIORITY) -> None:
        # retry=False: if the broker is down, fail now and leave the job to the sweeper
        # rather than hold the GP's request open.
        self.celery.send_task(ANALYSE_TASK, args=(job_id,), queue=ANALYSIS_QUEUE, retry=False,
                              priority=priority)

    def urgent(self, job_id: str) -> None:
        """A re-send: taken before every job already waiting (Redis; the embedded
        filesystem transport has no priorities and keeps arrival order)."""
        self(job_id, URGENT_PRIORITY)


def request_checkpoint(celery: Celery) -> None:
    """Ask a CPU worker to sign a checkpoint now (the web does after a human decision, so
    that a review is under a signature within seconds, not at the next periodic one)."""
    celery.send_task(CHECKPOINT_TASK, queue=CPU_QUEUE, retry=False)


def queue_depth(celery: Celery) -> int:
    """Messages waiting in the analysis queue (raises when the broker cannot be asked).

    Not a passive declare: Redis keeps no key for an empty queue, and a passive declare of it
    fails as if the queue did not exist. Declaring the queue the workers consume is harmless."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=1)
        return conn.default_channel.queue_declare(queue=ANALYSIS_QUEUE).message_count
