"""Worker process entry: `dermatriage worker` runs `celery -A workers.worker worker ...`.

It builds the same composition root as the web (services.runtime.build) and registers the
tasks on that runtime's Celery application; periodic jobs start once the worker is ready.
"""

from __future__ import annotations

import threading

from celery.signals import worker_ready, worker_shutdown

from services.runtime import build

from . import periodic, tasks

runtime = build()
celery = app = runtime.celery
tasks.register(celery, runtime)
_stop = threading.Event()


@worker_ready.connect
def _start_periodic(**_):
    periodic.start(runtime, _stop)


@worker_shutdown.connect
def _stop_periodic(**_):
    _stop.set()
