"""Every error becomes one response here: JSON under /api/, an error page elsewhere.

The product's errors (services.errors.DermaTriageError) already say what went wrong and with
which status; Flask's own HTTP errors (unknown URL, wrong method, request too large) are
given the same shape.
"""

from __future__ import annotations

import json

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from services.errors import DermaTriageError
from services.fhir import FHIR_JSON
from services.fhir.errors import outcome


def wants_json() -> bool:
    return (request.path.startswith(("/api/", "/dicomweb/"))
            or request.accept_mimetypes.best == "application/json")


def is_fhir() -> bool:
    return request.path == "/fhir" or request.path.startswith("/fhir/")


def render_error(status: int, code: str, message: str, field: str | None = None):
    if is_fhir():
        # FHIR clients read an OperationOutcome; ``expression`` names the element at fault.
        return Response(json.dumps(outcome(status, message, field)), status=status, mimetype=FHIR_JSON), status
    if wants_json():
        body = {"error": code, "message": message}
        if field:
            body["field"] = field
        return jsonify(body), status
    return render_template("error.html", message=message, status=status), status


def _http_message(exc: HTTPException) -> tuple[str, str]:
    if exc.code == 404:
        return "not_found", (f"no such resource {request.path}" if wants_json() or is_fhir() else "page not found")
    if exc.code == 405:
        return "method_not_allowed", (f"{request.method} is not allowed on {request.path}"
                                      if wants_json() or is_fhir() else "method not allowed")
    if exc.code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return "too_large", (f"the images are larger than {limit} MB in all; "
                             "send fewer or smaller images")
    return (exc.name or "error").lower().replace(" ", "_"), exc.description or exc.name


def init_app(app: Flask) -> None:
    @app.errorhandler(DermaTriageError)
    def product_error(exc: DermaTriageError):
        response, status = render_error(exc.status, exc.code, exc.message, exc.field)
        if getattr(exc, "retry_after", None):
            response = current_app.make_response((response, status))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code, message = _http_message(exc)
        return render_error(exc.code or 500, code, message, "images" if exc.code == 413 else None)
