"""Server-rendered pages for people: login, GP intake, case view, referral queue, audit."""

from __future__ import annotations

from flask import (Blueprint, Flask, Response, flash, g, redirect, render_template, request,
                   session, url_for)

from services import audit, cases, permissions, queue, users
from services.errors import DermaTriageError
from services.vocabulary import BodySite, RiskTier, Role, values

from .auth import csrf_ok, csrf_token, log_in, login_required, page_user, runtime
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


@bp.get("/")
def index():
    user = page_user()
    if user is None:
        return redirect(url_for("pages.login"))
    return redirect(url_for(HOME[user.role]))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        user = users.authenticate(runtime(), request.form.get("username", ""),
                                  request.form.get("password", ""))
        if user is None:
            flash("Wrong username or password.")
            return render_template("login.html"), 401
        log_in(user)
        target = request.args.get("next", "")
        if not target.startswith("/") or target.startswith("//"):
            target = url_for(HOME[user.role])
        return redirect(target)
    return render_template("login.html")


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("pages.login"))


@bp.get("/cases")
@login_required(permissions.READ_CASES)
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


@bp.get("/cases/<case_id>")
@login_required(permissions.READ_CASES)
def case_detail(case_id):
    return render_template("case.html", case=cases.get_case(runtime(), g.user, case_id))


@bp.get("/cases/<case_id>/images/<image_id>")
@login_required(permissions.READ_CASES)
def case_image(case_id, image_id):
    data, media_type = cases.get_image(runtime(), g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>.png")
@login_required(permissions.READ_CASES)
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


@bp.get("/audit")
@login_required(permissions.VERIFY_AUDIT)
def audit_page():
    return render_template("audit.html", report=audit.verify_chain(runtime(), g.user).to_dict())


@bp.get("/admin")
@login_required(permissions.ADMINISTER)
def admin_page():
    rt = runtime()
    return render_template("admin.html", accounts=users.list_accounts(rt, g.user), health=rt.health())


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
