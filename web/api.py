"""JSON API, /api/v1. Bearer tokens only (no cookies), so no CSRF surface."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, jsonify, request

from services import audit, cases, params, permissions, queue, users
from services.errors import Unauthorized, ValidationError

from .auth import api_login_required, runtime

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.post("/auth/token")
def token():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
            or not isinstance(body.get("password"), str):
        raise ValidationError('send JSON {"username": ..., "password": ...}', "body")
    rt = runtime()
    user = users.authenticate(rt, body["username"], body["password"])
    if user is None:
        raise Unauthorized("wrong username or password")
    return jsonify({"token": users.token_for(rt, user),
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
@api_login_required(permissions.SUBMIT_CASES)
def submit():
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise ValidationError("send multipart/form-data with case fields and one or more 'images'", "body")
    case = cases.submit_case(runtime(), g.user, request.form, uploads_from_request())
    return jsonify({"id": case.id, "status": case.status}), 201


@bp.get("/cases")
@api_login_required(permissions.READ_CASES)
def list_cases():
    return jsonify({"cases": cases.list_cases(runtime(), g.user)})


@bp.get("/cases/<case_id>")
@api_login_required(permissions.READ_CASES)
def get_case(case_id):
    return jsonify(cases.get_case(runtime(), g.user, case_id))


@bp.get("/cases/<case_id>/images/<image_id>")
@api_login_required(permissions.READ_CASES)
def get_image(case_id, image_id):
    data, media_type = cases.get_image(runtime(), g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>")
@api_login_required(permissions.READ_CASES)
def get_map(case_id, prediction_id, target):
    return Response(cases.get_map(runtime(), g.user, case_id, prediction_id, target),
                    mimetype="image/png")


@bp.post("/cases/<case_id>/claim")
@api_login_required(permissions.WORK_QUEUE)
def claim(case_id):
    return jsonify(queue.claim(runtime(), g.user, case_id))


@bp.get("/queue")
@api_login_required(permissions.WORK_QUEUE)
def get_queue():
    """One page of the queue: ``?limit=&after=`` (keyset paging) and the filters ``tier``,
    ``needs_attention``, ``ai_available``, ``body_site``."""
    page = queue.list_queue(runtime(), g.user, limit=params.whole_number(request.args, "limit", 100),
                            after=request.args.get("after") or None,
                            filters=queue.QueueFilter.from_args(request.args))
    return jsonify({"queue": page.entries, "next": page.next_cursor, "as_of": page.as_of.isoformat()})


@bp.get("/queue/counts")
@api_login_required(permissions.WORK_QUEUE)
def get_queue_counts():
    return jsonify({"counts": queue.tier_counts(runtime(), g.user,
                                                queue.QueueFilter.from_args(request.args))})



@bp.get("/audit/verify")
@api_login_required(permissions.VERIFY_AUDIT)
def verify():
    return jsonify(audit.verify_chain(runtime(), g.user).to_dict())


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
