from flask import Blueprint, Flask, jsonify

from .auth import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Each dependency's state. 503 when the database or the object store does not answer
    (nothing can be stored); a broker outage is "degraded" with 200, because cases are still
    accepted and wait in the outbox until the sweeper can send them, and so is a broker with no
    worker that can analyse (``analysis_workers`` "none": none has a valid model), because the
    cases wait in the queue until one can."""
    checks = runtime().health()
    essential = all(checks[k] == "ok" for k in ("database", "object_store"))
    working = checks.get("broker") == "ok" and checks.get("analysis_workers") != "none"
    status = "unavailable" if not essential else "ok" if working else "degraded"
    return jsonify({"status": status, "checks": checks}), 200 if essential else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
