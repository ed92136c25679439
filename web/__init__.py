"""HTTP only: the Flask app factory. Everything it does is a call into services/.

``create_app`` is the web's side of the composition root: it builds (or is given) the
product's Runtime (services.runtime: database, object store, analysis dispatcher over the
broker) and then runs one ``init_app`` per part, in order.
"""

from __future__ import annotations

from flask import Flask

from services.config import Settings
from services.runtime import Runtime, build

from . import api, dicomweb, errors, fhir, guards, health, models, pages


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    rt = runtime or build(settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=rt.settings.secret_key,
        MAX_CONTENT_LENGTH=rt.settings.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=rt.settings.env == "production",
    )
    app.extensions["dermatriage"] = rt
    for init_app in (errors.init_app, guards.init_app, health.init_app, api.init_app, dicomweb.init_app,
                     fhir.init_app, models.init_app, pages.init_app):
        init_app(app)
    return app
