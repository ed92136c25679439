"""Celery wiring, thin: the worker process builds the product's runtime (services.runtime)
and registers tasks that call the use cases in services/ (analysis, outbox)."""
