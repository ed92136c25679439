"""Server-rendered pages for people: login, GP intake, case view, referral queue, audit."""

from __future__ import annotations

from flask import (Blueprint, Response, flash, g, redirect, render_template, request,
                   url_for)

from services import audit, cases, queue, users
from services.errors import ServiceError
from services.models import User

from .auth import csrf_ok, csrf_token, log_in, login_required, page_user, runtime

bp = Blueprint("pages", __name__)
HOME = {"gp": "pages.my_cases", "dermatologist": "pages.referral_queue",
        "auditor": "pages.audit_page", "admin": "pages.admin_page"}


@bp.app_context_processor
def inject():
    return {"csrf_token": csrf_token, "user": g.get("user")}


@bp.before_request
def check_csrf():
    if request.method == "POST" and not csrf_ok():
        return error_page("the form's security token is missing or out of date; reload the page and try again", 400)


def error_page(message: str, status: int):
    return render_template("error.html", message=message, status=status), status


@bp.get("/")
def index():
    user = page_user()
    if user is None:
        return redirect(url_for("pages.login"))
    return redirect(url_for(HOME[user.role]))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "POST":
        with runtime().sessions() as s:
            user = users.authenticate(s, request.form.get("username", ""), request.form.get("password", ""))
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
    from flask import session
    session.clear()
    return redirect(url_for("pages.login"))


@bp.get("/cases")
@login_required("gp", "dermatologist", "auditor")
def my_cases():
    with runtime().sessions() as s:
        rows = cases.list_cases(s, g.user)
    return render_template("cases.html", cases=rows)


@bp.route("/cases/new", methods=["GET", "POST"])
@login_required("gp")
def new_case():
    if request.method == "GET":
        return render_template("new_case.html", form={}, sites=cases.BODY_SITES)
    from services.jobs import dispatch
    from workers.tasks import send_analysis

    rt = runtime()
    uploads = [cases.Upload(f.filename or "image", f.read(), "dermoscopic")
               for f in request.files.getlist("dermoscopic") if f.filename]
    uploads += [cases.Upload(f.filename or "image", f.read(), "clinical")
                for f in request.files.getlist("clinical") if f.filename]
    try:
        case = cases.submit_case(rt, g.user, request.form, uploads,
                                 dispatch=lambda job_id: dispatch(rt, job_id, send_analysis))
    except ServiceError as exc:
        flash(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
        return render_template("new_case.html", form=request.form, sites=cases.BODY_SITES), exc.status
    flash("Case submitted. The analysis will appear here shortly.")
    return redirect(url_for("pages.case_detail", case_id=case.id))


@bp.get("/cases/<case_id>")
@login_required("gp", "dermatologist", "auditor")
def case_detail(case_id):
    with runtime().sessions() as s:
        view = cases.get_case(s, g.user, case_id)
    return render_template("case.html", case=view)


@bp.get("/cases/<case_id>/images/<image_id>")
@login_required("gp", "dermatologist", "auditor")
def case_image(case_id, image_id):
    rt = runtime()
    with rt.sessions() as s:
        data, media_type = cases.get_image(s, rt, g.user, case_id, image_id)
    return Response(data, mimetype=media_type)


@bp.get("/cases/<case_id>/predictions/<prediction_id>/maps/<target>.png")
@login_required("gp", "dermatologist", "auditor")
def case_map(case_id, prediction_id, target):
    rt = runtime()
    with rt.sessions() as s:
        data = cases.get_map(s, rt, g.user, case_id, prediction_id, target)
    return Response(data, mimetype="image/png")


@bp.get("/queue")
@login_required("dermatologist")
def referral_queue():
    with runtime().sessions() as s:
        rows = queue.list_queue(s, g.user)
    return render_template("queue.html", rows=rows)


@bp.post("/cases/<case_id>/claim")
@login_required("dermatologist")
def claim(case_id):
    try:
        with runtime().sessions() as s, s.begin():
            queue.claim(s, g.user, case_id)
        flash("Case claimed: it is yours to review.")
    except ServiceError as exc:
        flash(exc.message)
    return redirect(url_for("pages.case_detail", case_id=case_id))


@bp.get("/audit")
@login_required("auditor")
def audit_page():
    rt = runtime()
    with rt.sessions() as s:
        report = audit.verify(s, rt.store).to_dict()
    return render_template("audit.html", report=report)


@bp.get("/admin")
@login_required("admin")
def admin_page():
    with runtime().sessions() as s:
        accounts = s.query(User).order_by(User.username).all()
    return render_template("admin.html", accounts=accounts, health=runtime().health())
