"""JSON API, /api/v1. Bearer tokens only (no cookies), so no CSRF surface."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from services import audit, cases, queue, users
from services.errors import ValidationError

from .auth import api_login_required, runtime

bp = Blueprint("api", __name__, url_prefix="/api/v1")
READERS = ("gp", "dermatologist", "auditor")


@bp.post("/auth/token")
def token():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
            or not isinstance(body.get("password"), str):
        raise ValidationError('send JSON {"username": ..., "password": ...}', "body")
    rt = runtime()
    with rt.sessions() as s:
        user = users.authenticate(s, body["username"], body["password"])
    if user is None:
        return jsonify({"error": "unauthorized", "message": "wrong username or password"}), 401
    return jsonify({"token": users.issue_token(rt.settings.secret_key, user),
                    "expires_in": rt.settings.token_max_age_s, "role": user.role})


def uploads_from_request() -> list[cases.Upload]:
    files = request.files.getlist("images")
    kinds = request.form.getlist("kinds")
    out = []
    for i, f in enumerate(files):
        kind = kinds[i] if i < len(kinds) and kinds[i] else "dermoscopic"
        out.append(cases.Upload(f.filename or f"image {i}", f.read(), kind))
    return out


@bp.post("/cases")
@api_login_required("gp")
def submit():
    from workers.tasks import send_analysis
    from services.jobs import dispatch

    rt = runtime()
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise ValidationError("send multipart/form-data with case fields and one or more 'images'", "body")
    case = cases.submit_case(rt, g.user, request.form, uploads_from_request(),
                             dispatch=lambda job_id: dispatch(rt, job_id, send_analysis))
    return jsonify({"id": case.id, "status": case.status}), 201


@bp.get("/cases")
@api_login_required(*READERS)
def list_cases():
    with runtime().sessions() as s:
        return jsonify({"cases": cases.list_cases(s, g.user)})


@bp.get("/cases/<case_id>")
@api_login_required(*READERS)
def get_case(case_id):
    with runtime().sessions() as s:
        return jsonify(cases.get_case(s, g.user, case_id))


@bp.get("/cases/<case_id>/images/<image_id>")
@api_login_required(*READERS)
def get_image(case_id, image_id):
    rt = runtime()
    with rt.sessions() as s:
        data, media_type = cases.get_image(s, rt, g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>")
@api_login_required(*READERS)
def get_map(case_id, prediction_id, target):
    rt = runtime()
    with rt.sessions() as s:
        data = cases.get_map(s, rt, g.user, case_id, prediction_id, target)
    return Response(data, mimetype="image/png")


@bp.post("/cases/<case_id>/claim")
@api_login_required("dermatologist")
def claim(case_id):
    with runtime().sessions() as s, s.begin():
        return jsonify(queue.claim(s, g.user, case_id))


@bp.get("/queue")
@api_login_required("dermatologist")
def get_queue():
    with runtime().sessions() as s:
        return jsonify({"queue": queue.list_queue(s, g.user)})


@bp.get("/audit/verify")
@api_login_required("auditor")
def verify():
    rt = runtime()
    with rt.sessions() as s:
        return jsonify(audit.verify(s, rt.store).to_dict())
