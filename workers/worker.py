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
from services.memory import retain_freed_memory
from services.runtime import build

from . import periodic, tasks

runtime = build()
celery = app = runtime.celery
tasks.register(celery, runtime)
_stop = threading.Event()
log = logging.getLogger(__name__)


def consumes(queue: str) -> bool:
    """Whether this worker was started on ``queue`` (`-Q`); set before worker_init fires."""
    return queue in celery.amqp.queues.consume_from


@worker_init.connect
def _retain_freed_memory(**_):
    # A fresh interpreter (`python -m celery`), not the console script's process, which
    # applies these malloc settings itself (services/memory.py).
    retain_freed_memory()


@worker_init.connect
def _load_model(**_):
    if consumes(ANALYSIS_QUEUE):
        try:
            analysis.load_analyser(runtime)
        except Exception:  # the first task tries again and fails its job visibly
            log.exception("could not load the model at start")


@worker_ready.connect
def _start_periodic(**_):
    if consumes(CPU_QUEUE):
        periodic.start(runtime, _stop)


@worker_shutdown.connect
def _stop_periodic(**_):
    _stop.set()
