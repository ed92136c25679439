"""FHIR R5, /fhir: HTTP only; the resources are built and checked in services/fhir and
services/subscriptions.py. Bearer tokens as the JSON API (a page session may also read, so
the case page can link its report); errors are OperationOutcomes (web/errors.py)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from flask import Blueprint, Flask, Response, g, request

from services import access, permissions, subscriptions
from services.fhir import FHIR_JSON, capability, read, referral
from services.vocabulary import AccessAction

from .auth import api_login_required, client_address, logged, runtime

bp = Blueprint("fhir", __name__, url_prefix="/fhir")


def fhir_user(action: frozenset, pages_may_read: bool = True):
    """The API's token check; FHIR reads also take a page session."""
    return api_login_required(action, pages_may_read)


def fhir(body: dict, status: int = 200, **headers) -> Response:
    response = Response(json.dumps(body), status=status, mimetype=FHIR_JSON)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _versioned(resource: dict) -> Response:
    meta = resource.get("meta") or {}
    return fhir(resource, ETag=f'W/"{meta.get("versionId", "1")}"', Last_Modified=meta.get("lastUpdated", ""))


def _base() -> str:
    return request.url_root


def _body():
    data = request.get_json(silent=True)
    if data is None:
        from services.fhir.errors import FhirError
        raise FhirError("the body is not JSON: send a FHIR resource as application/fhir+json", None, 400)
    return data


def _software_version() -> str:
    try:
        return version("dermatriage")
    except PackageNotFoundError:
        return "unknown"


@bp.get("/metadata")
def metadata():
    return fhir(capability.statement(_base(), _software_version(), "2026-12-06"))


@bp.post("")
@bp.post("/")
@fhir_user(permissions.SUBMIT_CASES, pages_may_read=False)
def transaction():
    # A transaction answers 200 with a transaction-response; each entry says 201 (created) or
    # 200 (the same referral again: the first case, nothing stored).
    _, bundle, _ = referral.submit(runtime(), g.user, _body())
    return fhir(bundle)


@bp.get("/DiagnosticReport/<case_id>")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def report(case_id: str):
    return _versioned(read.read_report(runtime(), g.user, case_id, _base()))


@bp.get("/DiagnosticReport/<case_id>/_history/<vid>")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def report_version(case_id: str, vid: str):
    return _versioned(read.read_report(runtime(), g.user, case_id, _base(), vid))


@bp.get("/DiagnosticReport/<case_id>/_history")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def report_history(case_id: str):
    return fhir(read.history(runtime(), g.user, case_id, _base()))


@bp.get("/DiagnosticReport")
@fhir_user(permissions.READ_CASES)
def search_reports():
    bundle = read.search_reports(runtime(), g.user, list(request.args.items(multi=True)), _base())
    # Each report a search returns is a case read: one access-log row per case.
    access.record_many(runtime(), g.user, AccessAction.READ_CASE, client_address(),
                       [e["resource"]["id"] for e in bundle.get("entry", [])], request.full_path)
    return fhir(bundle)


@bp.get("/Provenance/<prov_id>")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def provenance(prov_id: str):
    return fhir(read.read_provenance(runtime(), g.user, prov_id))


@bp.get("/Provenance")
@fhir_user(permissions.READ_CASES)
def search_provenance():
    bundle = read.search_provenance(runtime(), g.user, list(request.args.items(multi=True)), _base())
    cases = sorted({e["resource"]["id"].rpartition("-")[0] for e in bundle.get("entry", [])})
    access.record_many(runtime(), g.user, AccessAction.READ_CASE, client_address(), cases, request.full_path)
    return fhir(bundle)


@bp.get("/ServiceRequest/<case_id>")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def service_request(case_id: str):
    return fhir(read.read_service_request(runtime(), g.user, case_id))


@bp.get("/Patient/<key>")
@fhir_user(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def patient(key: str):
    return fhir(read.read_patient(runtime(), g.user, key))


@bp.post("/Subscription")
@fhir_user(permissions.SUBMIT_CASES, pages_may_read=False)
def subscribe():
    sub = subscriptions.create(runtime(), g.user, _body(), runtime().settings.env == "production")
    return fhir(sub, 201, Location=f"{_base()}fhir/Subscription/{sub['id']}")


@bp.get("/Subscription")
@fhir_user(permissions.SUBMIT_CASES)
def subscriptions_of_user():
    items = subscriptions.listing(runtime(), g.user)
    return fhir(read.searchset(items, f"{_base()}fhir/Subscription", len(items), _base(), "Subscription",
                               [], 0, max(1, len(items))))


@bp.get("/Subscription/<sub_id>")
@fhir_user(permissions.SUBMIT_CASES)
def subscription(sub_id: str):
    return fhir(subscriptions.read(runtime(), g.user, sub_id))


@bp.delete("/Subscription/<sub_id>")
@fhir_user(permissions.SUBMIT_CASES, pages_may_read=False)
def unsubscribe(sub_id: str):
    subscriptions.delete(runtime(), g.user, sub_id)
    return Response(status=204)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
