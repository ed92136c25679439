"""Server-rendered pages for people: login, GP intake, case view, referral queue, audit."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from flask import (Blueprint, Flask, Response, current_app, flash, g, jsonify, redirect, render_template,
                   request, session, url_for)

from services import (access, audit, cases, checkpoints, image_check, labelling, monitoring, params, permissions, queue,
                      registry, review_input, reviews, users)
from services.errors import DermaTriageError, ValidationError
from services.vocabulary import (DIAGNOSIS_NAMES, MANAGEMENT_NAMES, AccessAction, BodySite, Diagnosis, Management,
                                 RiskTier, Role, values)

from .auth import client_address, csrf_ok, csrf_token, log_in, logged, login_required, page_user, runtime
from .errors import render_error

bp = Blueprint("pages", __name__)
HOME = {Role.GP: "pages.my_cases", Role.DERMATOLOGIST: "pages.referral_queue",
        Role.AUDITOR: "pages.audit_page", Role.ADMIN: "pages.admin_page"}


@bp.app_context_processor
def inject():
    return {"csrf_token": csrf_token, "user": g.get("user")}


@bp.before_request
def check_csrf():
    if request.method == "POST" and not csrf_ok():
        return render_error(400, "csrf", "the form's security token is missing or out of date; "
                                         "reload the page and try again")


def safe_next(target: str) -> str | None:
    r"""A path on this site to return to after login, or None. Browsers drop tabs and newlines
    from URLs and read a backslash as a slash, so "/\t/evil.example" and "/\evil.example" lead
    off-site: any control character or backslash, plain or percent-encoded, disqualifies it."""
    if not target or any(ord(c) < 0x20 or c in "\x7f\\" for c in target + unquote(target)):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@bp.get("/")
def index():
    user = page_user()
    if user is None:
        return redirect(url_for("pages.login"))
    return redirect(url_for(HOME[user.role]))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        try:
            user = users.authenticate(runtime(), request.form.get("username", ""),
                                      request.form.get("password", ""), client_address())
        except DermaTriageError as exc:
            if exc.status != 429:
                raise
            flash(exc.message)
            response = current_app.make_response((render_template("login.html"), 429))
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if user is None:
            flash("Wrong username or password.")
            return render_template("login.html"), 401
        log_in(user)
        return redirect(safe_next(request.args.get("next", "")) or url_for(HOME[user.role]))
    return render_template("login.html")


@bp.post("/logout")
def logout():
    """Ends every session and token of the account, not only this cookie."""
    user = page_user()
    if user is not None:
        users.log_out(runtime(), user, client_address())
    session.clear()
    return redirect(url_for("pages.login"))


@bp.get("/cases")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def my_cases():
    return render_template("cases.html", cases=cases.list_cases(runtime(), g.user))


@bp.route("/cases/new", methods=["GET", "POST"])
@login_required(permissions.SUBMIT_CASES)
def new_case():
    if request.method == "GET":
        return render_template("new_case.html", form={}, sites=cases.BODY_SITES)
    uploads = [cases.Upload(f.filename or "image", f.read(), "dermoscopic")
               for f in request.files.getlist("dermoscopic") if f.filename]
    uploads += [cases.Upload(f.filename or "image", f.read(), "clinical")
                for f in request.files.getlist("clinical") if f.filename]
    try:
        case = cases.submit_case(runtime(), g.user, request.form, uploads)
    except DermaTriageError as exc:
        flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
        return render_template("new_case.html", form=request.form, sites=cases.BODY_SITES), exc.status
    flash("Case submitted. The analysis will appear here shortly.")
    return redirect(url_for("pages.case_detail", case_id=case.id))


@bp.post("/cases/new/check")
@login_required(permissions.SUBMIT_CASES)
def check_image():
    """The form's instant check of one picked image (JSON for new_case.js)."""
    upload = request.files.get("image")
    if upload is None:
        raise ValidationError("send one file field 'image'", "image")
    return jsonify(image_check.check_image(runtime(), g.user, upload.read()))


@bp.get("/cases/<case_id>")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_CASE)
def case_detail(case_id):
    rt = runtime()
    case = cases.get_case(rt, g.user, case_id)
    review = None if g.user.role == Role.GP else reviews.get_review(rt, g.user, case_id)
    return render_template("case.html", case=case, review=review)


@bp.get("/cases/<case_id>/images/<image_id>")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_IMAGE)
def case_image(case_id, image_id):
    data, media_type = cases.get_image(runtime(), g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>.png")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_MAP)
def case_map(case_id, prediction_id, target):
    return Response(cases.get_map(runtime(), g.user, case_id, prediction_id, target),
                    mimetype="image/png")


@bp.get("/queue")
@login_required(permissions.WORK_QUEUE)
def referral_queue():
    filters = queue.QueueFilter.from_args(request.args)
    page = queue.list_queue(runtime(), g.user, limit=50, after=request.args.get("after") or None,
                            filters=filters)
    next_url = (url_for("pages.referral_queue", **{**request.args.to_dict(), "after": page.next_cursor})
                if page.next_cursor else None)
    return render_template("queue.html", rows=page.entries, next_url=next_url,
                           counts=queue.tier_counts(runtime(), g.user, filters), filters=filters,
                           tiers=values(RiskTier), sites=values(BodySite))


@bp.post("/cases/<case_id>/claim")
@login_required(permissions.WORK_QUEUE)
def claim(case_id):
    try:
        queue.claim(runtime(), g.user, case_id)
        flash("Case claimed: it is yours to review.")
    except DermaTriageError as exc:
        flash(exc.message)
    return redirect(url_for("pages.case_detail", case_id=case_id))


@bp.get("/cases/<case_id>/predictions/<prediction_id>/crop.png")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_IMAGE)
def case_crop(case_id, prediction_id):
    return Response(cases.get_analysed_crop(runtime(), g.user, case_id, prediction_id), mimetype="image/png")


@bp.get("/cases/<case_id>/predictions/<prediction_id>/layers/<target>.png")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_MAP)
def case_layer(case_id, prediction_id, target):
    return Response(cases.get_map_layer(runtime(), g.user, case_id, prediction_id, target),
                    mimetype="image/png")


@bp.get("/cases/<case_id>/reviews/<review_id>/regions/<code>.png")
@login_required(permissions.READ_CASES)
@logged(AccessAction.READ_REGION)
def review_region(case_id, review_id, code):
    return Response(reviews.get_region(runtime(), g.user, case_id, review_id, code), mimetype="image/png")


def review_form(form) -> dict:
    """The page's fields in the shape the API takes (services.review_input.parse_review)."""
    codes = review_input.PATTERN_CODES
    return {"diagnosis": form.get("diagnosis", ""), "diagnosis_other": form.get("diagnosis_other", ""),
            "patterns": {c: form.get(f"pattern_{c}", "") for c in codes},
            "regions": {c: form[f"region_{c}"] for c in codes if form.get(f"region_{c}")},
            "management": form.get("management", ""), "message": form.get("message", ""),
            "override_reason": form.get("override_reason", ""),
            "amendment_reason": form.get("amendment_reason", "")}


def _prefill(review: dict | None) -> dict:
    if review is None:
        return {"patterns": {}}
    return {**review, "patterns": dict(review["patterns"])}


def _region(case_id: str, pid: str | None, size: int | None, layers: bool) -> dict | None:
    """The drawing surface: the analysed crop, with the map layers unless the reader is blind."""
    if pid is None or size is None:
        return None
    return {"prediction_id": pid, "size": size,
            "crop_url": url_for("pages.case_crop", case_id=case_id, prediction_id=pid),
            "layer_base": url_for("pages.case_layer", case_id=case_id, prediction_id=pid, target="T")[:-len("T.png")],
            "layer_suffix": ".png", "targets": ["BCC", *review_input.PATTERN_CODES] if layers else []}


def _review_page(mode: str, case: dict, ai: dict | None, region: dict | None, action: str,
                 head: dict | None, form: dict, labelling_set: dict | None = None, status: int = 200):
    from services.diagnosis.patterns import PATTERN_NAMES
    validated = set(ai["evidence_patterns"]) if ai else set()
    return render_template(
        "review.html", mode=mode, case=case, ai=ai, region=region, action=action,
        head=head, form=form, labelling_set=labelling_set,
        patterns=[(c, PATTERN_NAMES[c]) for c in review_input.PATTERN_CODES], validated=validated,
        diagnoses=[(d.value, DIAGNOSIS_NAMES[d]) for d in Diagnosis], diagnosis_names=DIAGNOSIS_NAMES,
        managements=[(m.value, MANAGEMENT_NAMES[m]) for m in Management]), status


@bp.route("/cases/<case_id>/review", methods=["GET", "POST"])
@login_required(permissions.WORK_QUEUE)
@logged(AccessAction.READ_REVIEW)
def review_case(case_id):
    rt = runtime()
    if request.method == "POST":
        try:
            reviews.record_review(rt, g.user, case_id, review_form(request.form))
            flash("Review recorded; the GP can read your answer.")
            return redirect(url_for("pages.case_detail", case_id=case_id))
        except DermaTriageError as exc:
            if exc.status not in (409, 422):
                raise
            flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
            form, status = review_form(request.form), exc.status
    else:
        form, status = None, 200
    state = reviews.get_review(rt, g.user, case_id)
    head = next((r for r in state["reviews"] if r["id"] == state["current"]), None)
    if state["claimed_by"] != g.user.username:
        flash("Claim the case from the queue before reviewing it.")
        return redirect(url_for("pages.case_detail", case_id=case_id))
    ai = state["ai"]
    region = _region(case_id, ai and ai["prediction_id"], state["region_size"], layers=True)
    return _review_page("clinical", cases.get_case(rt, g.user, case_id), ai, region,
                        url_for("pages.review_case", case_id=case_id), head,
                        form or _prefill(head), status=status)


@bp.post("/cases/<case_id>/release")
@login_required(permissions.WORK_QUEUE)
def release(case_id):
    try:
        queue.release_claim(runtime(), g.user, case_id)
        flash("Claim released: the case is back in the queue.")
    except DermaTriageError as exc:
        flash(exc.message)
    return redirect(url_for("pages.referral_queue"))


@bp.post("/admin/cases/<case_id>/reassign")
@login_required(permissions.ADMINISTER)
def reassign(case_id):
    try:
        result = queue.reassign_claim(runtime(), g.user, case_id, request.form.get("dermatologist", ""))
        flash(f"Case reassigned to {result['claimed_by']}.")
    except DermaTriageError as exc:
        flash(exc.message)
    return redirect(url_for("pages.admin_page"))


@bp.route("/labelling", methods=["GET", "POST"])
@login_required(permissions.LABELLING)
def labelling_sets():
    rt = runtime()
    if request.method == "POST":
        permissions.require(g.user, permissions.ADMINISTER)
        try:
            created = labelling.create_set(
                rt, g.user, request.form.get("name", ""),
                [r.strip() for r in request.form.get("readers", "").split(",") if r.strip()],
                request.form.get("cases", "").replace(",", " ").split(),
                request.form.get("blind_to_ai") == "on")
            flash(f"Labelling set {created['name']} created.")
            return redirect(url_for("pages.labelling_set", ref=created["id"]))
        except DermaTriageError as exc:
            flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
    return render_template("labelling.html", sets=labelling.list_sets(rt, g.user))


@bp.get("/labelling/<ref>")
@login_required(permissions.LABELLING)
def labelling_set(ref):
    rt = runtime()
    lset = labelling.get_set(rt, g.user, ref)
    merged = labelling.consensus(rt, g.user, ref) if g.user.role != Role.DERMATOLOGIST else None
    return render_template("labelling_set.html", lset=lset, merged=merged)


@bp.route("/labelling/<ref>/cases/<case_id>", methods=["GET", "POST"])
@login_required(permissions.WORK_QUEUE)
@logged(AccessAction.LABEL_CASE)
def label_case(ref, case_id):
    rt = runtime()
    form, status = None, 200
    if request.method == "POST":
        try:
            labelling.record_labels(rt, g.user, ref, case_id, review_form(request.form))
            flash("Labels saved.")
            return redirect(url_for("pages.labelling_set", ref=ref))
        except DermaTriageError as exc:
            if exc.status not in (409, 422):
                raise
            flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
            form, status = review_form(request.form), exc.status
    view = labelling.labelling_case(rt, g.user, ref, case_id)
    lset, ai = view["labelling_set"], view["ai"]
    region = _region(case_id, view["region_image"], view["region_size"], layers=not lset["blind_to_ai"])
    return _review_page("labelling", view, ai, region, url_for("pages.label_case", ref=ref, case_id=case_id),
                        view["my_labels"], form or _prefill(view["my_labels"]), labelling_set=lset,
                        status=status)


@bp.get("/monitoring")
@login_required(permissions.MONITOR)
def monitoring_page():
    return render_template("monitoring.html", report=monitoring.report(runtime(), g.user))


@bp.get("/audit")
@login_required(permissions.VERIFY_AUDIT)
def audit_page():
    """The auditor's workbench: the chain verified since the last verified head (a full walk
    on request), the records filtered and paged, newest first."""
    from services.vocabulary import Agreement, RecordKind
    rt, a = runtime(), request.args
    report = checkpoints.verify(rt, g.user, full=params.flag(a, "full"))
    filters = {"kind": params.choice(a, "kind", RecordKind), "case_id": a.get("case_id") or None,
               "model_version": a.get("model_version") or None, "since": params.date(a, "since"),
               "until": params.date(a, "until"), "agreement": params.choice(a, "agreement", Agreement)}
    page = audit.browse(rt, g.user, **filters, before=params.whole_number(a, "before"))
    next_url = (url_for("pages.audit_page", **{**a.to_dict(), "before": page["next"]}) if page["next"] else None)
    return render_template("audit.html", report=report, records=page["records"], next_url=next_url,
                           args=a.to_dict(), model_events=registry.events(rt, 20))


@bp.get("/audit/records/<int:seq>")
@login_required(permissions.VERIFY_AUDIT)
def audit_record(seq):
    return render_template("audit_record.html", record=checkpoints.get_record(runtime(), g.user, seq))


@bp.get("/audit/access")
@login_required(permissions.VERIFY_AUDIT)
def access_log_page():
    case_id, username = request.args.get("case_id") or None, request.args.get("user") or None
    return render_template("access_log.html", rows=access.query(runtime(), g.user, case_id, username),
                           case_id=case_id or "", username=username or "")


@bp.post("/admin/accounts")
@login_required(permissions.ADMINISTER)
def admin_accounts():
    """Create, deactivate, reset a password, revoke sessions: one form per action."""
    rt, form, client = runtime(), request.form, client_address()
    action, username = form.get("action", ""), form.get("username", "").strip()
    try:
        if action == "create":
            users.create_account(rt, g.user, username, form.get("password", ""), form.get("role", ""), client)
            flash(f"Account {username} created.")
        elif action == "deactivate":
            users.deactivate(rt, g.user, username, client)
            flash(f"Account {username} deactivated; its sessions and tokens ended.")
        elif action == "reset_password":
            users.reset_password(rt, g.user, username, form.get("password", ""), client)
            flash(f"Password of {username} reset; its sessions and tokens ended.")
        elif action == "revoke":
            users.revoke(rt, g.user, username, client)
            flash(f"Every session and token of {username} ended.")
        else:
            flash("Unknown account action.")
    except DermaTriageError as exc:
        flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
    return redirect(url_for("pages.admin_page"))


@bp.route("/account/password", methods=["GET", "POST"])
def change_password():
    user = page_user()
    if user is None:
        return redirect(url_for("pages.login", next=request.path))
    g.user = user
    if request.method == "POST":
        try:
            users.change_password(runtime(), user, request.form.get("current_password", ""),
                                  request.form.get("new_password", ""), client_address())
            session.clear()
            flash("Password changed: log in again (every other session has ended too).")
            return redirect(url_for("pages.login"))
        except DermaTriageError as exc:
            flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
    return render_template("password.html")


@bp.get("/admin")
@login_required(permissions.ADMINISTER)
def admin_page():
    rt = runtime()
    return render_template("admin.html", accounts=users.list_accounts(rt, g.user), health=rt.health(),
                           claimed=queue.claimed_cases(rt, g.user),
                           dermatologists=queue.dermatologists(rt, g.user))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
