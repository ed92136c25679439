"""Worker process entry: `dermatriage worker` runs `celery -A workers.worker worker ...`.

It builds the same composition root as the web (services.runtime.build) and registers the
tasks on that runtime's Celery application. A worker on the analysis queue loads its model
before it takes any message (the pool is threads: nothing forks after the load), so a job
re-sent to it after a crash is not held while a fresh worker loads. Periodic jobs start
once the worker is ready, in workers that consume the cpu queue: a GPU worker started with
``--queues analysis`` does inference only.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_init, worker_ready, worker_shutdown

from services import analysis
from services.config import ANALYSIS_QUEUE, CPU_QUEUE
from services.runtime import build

from . import periodic, tasks

runtime = build()
celery = app = runtime.celery
tasks.register(celery, runtime)
_stop = threading.Event()
log = logging.getLogger(__name__)


def consumed_queues(consumer) -> set[str]:
    return {q.name for q in consumer.task_consumer.queues}


@worker_init.connect
def _load_model(sender=None, **_):
    if sender is None or ANALYSIS_QUEUE in sender.app.amqp.queues.consume_from:
        try:
            analysis.load_analyser(runtime)
        except Exception:  # the first task tries again and fails its job visibly
            log.exception("could not load the model at start")


@worker_ready.connect
def _start_periodic(sender=None, **_):
    if sender is None or CPU_QUEUE in consumed_queues(sender):
        periodic.start(runtime, _stop)


@worker_shutdown.connect
def _stop_periodic(**_):
    _stop.set()
