"""Celery wiring: thin tasks that call services/ (see services/analysis.py, services/jobs.py)."""
