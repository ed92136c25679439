"""Celery bound to the Flask app, as in Flask's own Celery pattern (celery_init_app)."""

from __future__ import annotations

from pathlib import Path

from celery import Celery, Task
from flask import Flask

from services.config import Settings


def celery_config(settings: Settings) -> dict:
    options = settings.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if key in options:       # kombu's filesystem transport expects them to exist
            Path(options[key]).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_ignore_result": True,
        # A task is acknowledged only after it finished; if the worker dies mid-task the
        # message goes back (the sweeper covers transports that cannot redeliver).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "analysis",
        "worker_hijack_root_logger": False,
        "imports": ("workers.tasks",),
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(app.config["CELERY"])
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
