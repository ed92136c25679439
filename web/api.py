"""JSON API, /api/v1. Bearer tokens only (no cookies), so no CSRF surface."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, jsonify, request

from services import access, audit, cases, checkpoints, image_check, labelling, monitoring, params, permissions, queue, reviews, users
from services.errors import Unauthorized, ValidationError
from services.vocabulary import AccessAction, Agreement, RecordKind

from .auth import api_login_required, client_address, logged, runtime

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.post("/auth/token")
def token():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
            or not isinstance(body.get("password"), str):
        raise ValidationError('send JSON {"username": ..., "password": ...}', "body")
    rt = runtime()
    user = users.authenticate(rt, body["username"], body["password"], client_address())
    if user is None:
        raise Unauthorized("wrong username or password")
    return jsonify({"token": users.token_for(rt, user),
                    "expires_in": rt.settings.token_max_age_s, "role": user.role})


def uploads_from_request() -> list[cases.Upload]:
    files = request.files.getlist("images")
    kinds = request.form.getlist("kinds")
    out = []
    for i, f in enumerate(files):
        # No kind given: a DICOM object's class decides, anything else is dermoscopic.
        kind = kinds[i] if i < len(kinds) and kinds[i] else ""
        out.append(cases.Upload(f.filename or f"image {i}", f.read(), kind))
    return out


@bp.post("/cases")
@api_login_required(permissions.SUBMIT_CASES)
def submit():
    if not request.content_type or not request.content_type.startswith("multipart/form-data"):
        raise ValidationError("send multipart/form-data with case fields and one or more 'images'", "body")
    case = cases.submit_case(runtime(), g.user, request.form, uploads_from_request())
    return jsonify({"id": case.id, "status": case.status}), 201


@bp.post("/images/check")
@api_login_required(permissions.SUBMIT_CASES)
def check_image():
    upload = request.files.get("image")
    if upload is None:
        raise ValidationError("send multipart/form-data with one file field 'image'", "image")
    return jsonify(image_check.check_image(runtime(), g.user, upload.read()))


@bp.get("/cases")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def list_cases():
    return jsonify({"cases": cases.list_cases(runtime(), g.user)})


@bp.get("/cases/<case_id>")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def get_case(case_id):
    return jsonify(cases.get_case(runtime(), g.user, case_id))


@bp.get("/cases/<case_id>/images/<image_id>")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_IMAGE)
def get_image(case_id, image_id):
    data, media_type = cases.get_image(runtime(), g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_MAP)
def get_map(case_id, prediction_id, target):
    return Response(cases.get_map(runtime(), g.user, case_id, prediction_id, target),
                    mimetype="image/png")


@bp.get("/cases/<case_id>/predictions/<prediction_id>/crop")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_IMAGE)
def get_crop(case_id, prediction_id):
    return Response(cases.get_analysed_crop(runtime(), g.user, case_id, prediction_id), mimetype="image/png")


@bp.get("/cases/<case_id>/predictions/<prediction_id>/layers/<target>")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_MAP)
def get_layer(case_id, prediction_id, target):
    return Response(cases.get_map_layer(runtime(), g.user, case_id, prediction_id, target),
                    mimetype="image/png")


@bp.post("/cases/<case_id>/claim")
@api_login_required(permissions.WORK_QUEUE)
def claim(case_id):
    return jsonify(queue.claim(runtime(), g.user, case_id))


@bp.post("/cases/<case_id>/release")
@api_login_required(permissions.WORK_QUEUE)
def release(case_id):
    return jsonify(queue.release_claim(runtime(), g.user, case_id))


@bp.post("/cases/<case_id>/reassign")
@api_login_required(permissions.ADMINISTER)
def reassign(case_id):
    body = json_body()
    return jsonify(queue.reassign_claim(runtime(), g.user, case_id, str(body.get("dermatologist") or "")))


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError("send a JSON object (Content-Type: application/json)", "body")
    return body


@bp.post("/cases/<case_id>/review")
@api_login_required(permissions.WORK_QUEUE)
def post_review(case_id):
    """Record the review of a case you have claimed; again, with amendment_reason, to amend it."""
    return jsonify(reviews.record_review(runtime(), g.user, case_id, json_body())), 201


@bp.get("/cases/<case_id>/review")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_REVIEW)
def get_review(case_id):
    return jsonify(reviews.get_review(runtime(), g.user, case_id))


@bp.get("/cases/<case_id>/reviews/<review_id>/regions/<code>")
@api_login_required(permissions.READ_CASES)
@logged(AccessAction.READ_REGION)
def get_region(case_id, review_id, code):
    return Response(reviews.get_region(runtime(), g.user, case_id, review_id, code), mimetype="image/png")


@bp.get("/labelling/sets")
@api_login_required(permissions.LABELLING)
def list_sets():
    return jsonify({"sets": labelling.list_sets(runtime(), g.user)})


@bp.post("/labelling/sets")
@api_login_required(permissions.ADMINISTER)
def create_set():
    body = json_body()
    readers, case_ids = body.get("readers"), body.get("cases", [])
    if not isinstance(readers, list) or not all(isinstance(r, str) for r in readers):
        raise ValidationError("readers must be a list of dermatologists' usernames", "readers")
    if not isinstance(case_ids, list) or not all(isinstance(c, str) for c in case_ids):
        raise ValidationError("cases must be a list of case ids", "cases")
    blind = params.flag({"blind_to_ai": str(body.get("blind_to_ai", ""))}, "blind_to_ai")
    return jsonify(labelling.create_set(runtime(), g.user, str(body.get("name") or ""), readers,
                                        case_ids, blind)), 201


@bp.get("/labelling/sets/<ref>")
@api_login_required(permissions.LABELLING)
def get_set(ref):
    return jsonify(labelling.get_set(runtime(), g.user, ref))


@bp.post("/labelling/sets/<ref>/cases")
@api_login_required(permissions.ADMINISTER)
def add_set_cases(ref):
    case_ids = json_body().get("cases")
    if not isinstance(case_ids, list) or not all(isinstance(c, str) for c in case_ids):
        raise ValidationError("cases must be a list of case ids", "cases")
    return jsonify(labelling.add_cases(runtime(), g.user, ref, case_ids))


@bp.get("/labelling/sets/<ref>/cases/<case_id>")
@api_login_required(permissions.WORK_QUEUE)
@logged(AccessAction.LABEL_CASE)
def get_labelling_case(ref, case_id):
    return jsonify(labelling.labelling_case(runtime(), g.user, ref, case_id))


@bp.post("/labelling/sets/<ref>/cases/<case_id>/labels")
@api_login_required(permissions.WORK_QUEUE)
def post_labels(ref, case_id):
    return jsonify(labelling.record_labels(runtime(), g.user, ref, case_id, json_body())), 201


@bp.get("/labelling/sets/<ref>/consensus")
@api_login_required(permissions.LABELLING)
def get_consensus(ref):
    return jsonify(labelling.consensus(runtime(), g.user, ref))


@bp.get("/monitoring")
@api_login_required(permissions.MONITOR)
def get_monitoring():
    """Human-AI monitoring per model version; ``?format=csv`` for a spreadsheet."""
    report = monitoring.report(runtime(), g.user)
    if request.args.get("format") == "csv":
        return Response(monitoring.to_csv(report), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=monitoring.csv"})
    return jsonify(report)


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



@bp.get("/audit/access")
@api_login_required(permissions.VERIFY_AUDIT)
def get_access_log():
    """Who read what: ``?case_id=`` and/or ``?user=``, newest first, ``limit`` up to 1000."""
    return jsonify({"access": access.query(runtime(), g.user, request.args.get("case_id") or None,
                                           request.args.get("user") or None,
                                           limit=params.whole_number(request.args, "limit", 200))})


@bp.post("/auth/logout")
@api_login_required(permissions.ANYONE)
def api_logout():
    """End every session and token of the caller's account."""
    users.log_out(runtime(), g.user, client_address())
    return jsonify({"ended": True})


@bp.get("/audit/verify")
@api_login_required(permissions.VERIFY_AUDIT)
def verify():
    """Incremental (since the last verified head) unless ``?full=true``; checkpoints always."""
    return jsonify(checkpoints.verify(runtime(), g.user, full=params.flag(request.args, "full")))


@bp.get("/audit/records")
@api_login_required(permissions.VERIFY_AUDIT)
def audit_records():
    """``?kind=explanation|review&case_id=&model_version=&since=&until=&agreement=agree|override
    &before=SEQ&limit=``, newest first; ``next`` is the ``before`` of the next page."""
    a = request.args
    return jsonify(audit.browse(runtime(), g.user, kind=params.choice(a, "kind", RecordKind),
                                case_id=a.get("case_id") or None, model_version=a.get("model_version") or None,
                                since=params.date(a, "since"), until=params.date(a, "until"),
                                agreement=params.choice(a, "agreement", Agreement),
                                before=params.whole_number(a, "before"),
                                limit=params.whole_number(a, "limit", 50)))


@bp.get("/audit/records/<int:seq>")
@api_login_required(permissions.VERIFY_AUDIT)
def audit_record(seq):
    return jsonify(checkpoints.get_record(runtime(), g.user, seq))


@bp.get("/audit/export")
@api_login_required(permissions.VERIFY_AUDIT)
def audit_export():
    """The self-contained bundle (zip): records.jsonl, checkpoints.jsonl, public_key.pem."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit-bundle.zip"
        checkpoints.export_bundle(runtime(), g.user, path)
        data = path.read_bytes()
    access.record(runtime(), g.user, AccessAction.EXPORT, client_address(), subject="audit bundle")
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": "attachment; filename=dermatriage-audit-bundle.zip"})


@bp.get("/audit/public-key")
def audit_public_key():
    """The checkpoints' verification key (PEM), for anyone: compare it with the one the
    operator published before trusting a bundle."""
    return Response(checkpoints.public_pem(checkpoints.public_key(runtime())), mimetype="application/x-pem-file")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
