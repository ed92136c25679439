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
import os
import threading

from celery.signals import worker_init, worker_ready, worker_shutdown

from services import analysis
from services.config import ANALYSIS_QUEUE, CPU_QUEUE
from services.errors import DermaTriageError
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


# Exit status of a worker started for the analysis queue alone that has no valid model.
EXIT_NO_MODEL = 3


@worker_init.connect
def _load_model(**_):
    """Load the model before any message; without a valid one, take no analysis job at all.

    A worker that took jobs it cannot analyse failed every one of them, and again at every
    re-send (thousands of failures, the log growing by megabytes a minute). So it says why,
    once, and stops consuming the analysis queue: it keeps its other queues, and a worker
    started for the analysis queue alone exits, so its supervisor shows it down."""
    if not consumes(ANALYSIS_QUEUE):
        return
    try:
        analysis.load_analyser(runtime)
        return
    except DermaTriageError as exc:
        reason = exc.message
    except Exception as exc:  # a model file torch cannot read, a device that is gone
        reason = f"{type(exc).__name__}: {exc}"
    others = sorted(q for q in celery.amqp.queues.consume_from if q != ANALYSIS_QUEUE)
    log.error("this worker takes no analysis jobs: no valid model at %s (%s); check it with "
              "`dermatriage model card` and restart the worker%s", runtime.settings.model_path, reason,
              f" (it goes on with the {', '.join(others)} queue)" if others else "")
    if not others:
        logging.shutdown()
        os._exit(EXIT_NO_MODEL)
    celery.amqp.queues.deselect(ANALYSIS_QUEUE)


@worker_ready.connect
def _start_periodic(**_):
    if consumes(CPU_QUEUE):
        periodic.start(runtime, _stop)


@worker_shutdown.connect
def _stop_periodic(**_):
    _stop.set()
