"""HTTP only: the Flask app factory. Everything it does is a call into services/."""

from __future__ import annotations

from flask import Flask, jsonify, request

from services.config import Settings
from sqlalchemy.exc import OperationalError

from services.errors import NotFound, ServiceError, Unavailable
from services.storage import ObjectNotFound, StorageError
from services.runtime import Runtime


def create_app(settings: Settings | None = None) -> Flask:
    from workers.celery_app import celery_config, celery_init_app

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.env == "production",
        CELERY=celery_config(settings),
    )
    app.extensions["dermatriage"] = Runtime(settings)
    celery_init_app(app)

    from . import api, health, pages
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        if request.path.startswith("/api/"):
            return jsonify(exc.to_dict()), exc.status
        return pages.error_page(exc.message, exc.status)

    @app.errorhandler(OperationalError)
    def database_down(exc):
        return service_error(Unavailable("the database is unavailable; please retry shortly"))

    @app.errorhandler(StorageError)
    def storage_down(exc):
        if isinstance(exc, ObjectNotFound):
            return service_error(NotFound("the stored file is missing"))
        return service_error(Unavailable("image storage is unavailable; please retry shortly"))

    @app.errorhandler(413)
    def too_large(_):
        msg = f"request larger than {settings.max_upload_bytes // (1024 * 1024)} MB"
        if request.path.startswith("/api/"):
            return jsonify({"error": "too_large", "message": msg}), 413
        return pages.error_page(msg, 413)

    @app.errorhandler(404)
    def not_found(_):
        if request.path.startswith("/api/"):
            return jsonify({"error": "not_found", "message": f"no such resource {request.path}"}), 404
        return pages.error_page("page not found", 404)

    @app.errorhandler(405)
    def not_allowed(_):
        if request.path.startswith("/api/"):
            return jsonify({"error": "method_not_allowed",
                            "message": f"{request.method} is not allowed on {request.path}"}), 405
        return pages.error_page("method not allowed", 405)

    return app
