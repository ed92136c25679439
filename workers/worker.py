"""Worker process entry: `dermatriage worker` (or `celery -A workers.worker worker`).

Pool: threads. One process holds one copy of the model (one CUDA context on a GPU box), the
threads feed its micro-batcher, and nothing forks after the model is loaded.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from web import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
log = logging.getLogger(__name__)
_stop = threading.Event()


def _sweep_forever() -> None:
    from services import jobs
    from workers.tasks import send_analysis

    rt = flask_app.extensions["dermatriage"]
    while not _stop.wait(rt.settings.sweep_interval_s):
        try:
            with flask_app.app_context():
                result = jobs.sweep(rt, send_analysis)
            if result["examined"]:
                log.info("outbox sweep: %s", result)
        except Exception:
            log.exception("outbox sweep failed; will try again")


@worker_ready.connect
def _start_sweeper(**_):
    threading.Thread(target=_sweep_forever, name="outbox-sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_):
    _stop.set()
