"""Worker process entry: `dermatriage worker` runs `celery -A workers.worker worker ...`.

It builds the same composition root as the web (services.runtime.build) and registers the
tasks on that runtime's Celery application. Periodic jobs start once the worker is ready,
in workers that consume the cpu queue: a GPU worker started with ``--queues analysis`` does
inference only.
"""

from __future__ import annotations

import threading

from celery.signals import worker_ready, worker_shutdown

from services.config import CPU_QUEUE
from services.runtime import build

from . import periodic, tasks

runtime = build()
celery = app = runtime.celery
tasks.register(celery, runtime)
_stop = threading.Event()


def consumed_queues(consumer) -> set[str]:
    return {q.name for q in consumer.task_consumer.queues}


@worker_ready.connect
def _start_periodic(sender=None, **_):
    if sender is None or CPU_QUEUE in consumed_queues(sender):
        periodic.start(runtime, _stop)


@worker_shutdown.connect
def _stop_periodic(**_):
    _stop.set()
