from flask import Blueprint, Flask, jsonify

from .auth import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 only when the database and the object store answer."""
    checks = runtime().health()
    ok = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
