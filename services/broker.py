"""The message broker adapter: Celery as seen by the processes that send work.

The web only ever *sends* analysis jobs, by task name, so it needs Celery's client and the
task's name, never the worker's code. The workers build the same Celery application from
the same settings and register the task under that name (workers/tasks.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from celery import Celery
from kombu.transport import filesystem
from kombu.utils.json import dumps

from .config import ANALYSIS_QUEUE, CPU_QUEUE, SHADOW_QUEUE, Settings

ANALYSE_TASK = "dermatriage.analyse_job"      # analysis queue
CHECKPOINT_TASK = "dermatriage.audit_checkpoint"  # cpu queue
DELIVER_TASK = "dermatriage.deliver_notifications"  # cpu queue
SHADOW_TASK = "dermatriage.shadow_read"    # shadow queue
# Redis keeps one list per priority step (config.PRIORITY_STEPS) and serves the lowest first.
URGENT_PRIORITY, NORMAL_PRIORITY = 0, 6


log = logging.getLogger(__name__)


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel with whole-file message delivery.

    kombu creates a message's file under its final name and only then writes it, while a
    consumer polling the folder takes any file with a matching name. A worker that took one in
    between read an empty message and stopped ("Unrecoverable error: JSONDecodeError"): the
    embedded stack lost its only worker (measured: 260 of 3,000 messages read empty when
    another process polled as the worker does). Here the message is written under a name that
    no queue matches and renamed into place, which is atomic: a reader sees all of it or
    nothing. A file that still does not parse (a disk fault, a hand-made file) is logged and
    dropped instead of ending the worker; the sweeper re-sends its job after a lease.
    """

    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")   # matches no queue
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        try:
            return super()._get(queue)
        except ValueError as exc:       # the file was taken (removed) before it was parsed
            log.error("dropped an unreadable message from queue %s: %s", queue, exc)
            raise Empty() from exc


class FilesystemTransport(filesystem.Transport):
    """The embedded broker (``filesystem://``), with :class:`FilesystemChannel`."""

    Channel = FilesystemChannel


def make_celery(settings: Settings) -> Celery:
    options = settings.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if key in options:       # kombu's filesystem transport expects them to exist
            Path(options[key]).mkdir(parents=True, exist_ok=True)
    celery = Celery("dermatriage")
    celery.config_from_object(settings.celery_config())
    if settings.broker_url.startswith("filesystem"):
        # An explicit transport takes precedence over the URL's scheme (kombu.Connection).
        celery.conf.broker_transport = FilesystemTransport
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


def analysis_workers(celery: Celery, timeout: float = 1.0) -> int | None:
    """How many workers consume the analysis queue now, by Celery's own broadcast inspection
    (``active_queues``); None where the transport has no broadcast (the embedded filesystem
    broker) or nobody can be asked. A worker without a valid model stops consuming the queue
    (workers/worker.py), so this counts the workers that can analyse."""
    try:
        replies = celery.control.inspect(timeout=timeout).active_queues()
    except Exception:   # NotImplementedError on transports without fanout; connection errors
        return None
    if replies is None:
        return 0
    return sum(any(q.get("name") == ANALYSIS_QUEUE for q in queues or []) for queues in replies.values())


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


def request_shadow_reading(celery: Celery, case_id: str, version_id: str) -> None:
    """The shadow model reads a case the champion has analysed (its own queue and workers)."""
    celery.send_task(SHADOW_TASK, args=(case_id, version_id), queue=SHADOW_QUEUE, retry=False)


def request_deliveries(celery: Celery) -> None:
    """Ask a CPU worker to send the FHIR notifications that are due (after a review)."""
    celery.send_task(DELIVER_TASK, queue=CPU_QUEUE, retry=False)


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
