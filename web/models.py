"""The model registry's pages (/models): the versions, their events, the comparison of the
champion and the shadow with the cases they disagree on, and the ML engineer's promote,
shadow and rollback forms. HTTP only: services/registry.py and services/comparison.py."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, flash, g, redirect, render_template, request, url_for

from services import comparison, permissions, registry
from services.errors import DermaTriageError
from services.vocabulary import AccessAction

from .auth import csrf_ok, logged, login_required, runtime
from .errors import render_error

bp = Blueprint("models", __name__, url_prefix="/models")


@bp.before_request
def check_csrf():
    if request.method == "POST" and not csrf_ok():
        return render_error(400, "csrf", "the form's security token is missing or out of date; "
                                         "reload the page and try again")


def _by() -> str:
    return f"{g.user.username} (web)"


@bp.get("")
@login_required(permissions.VIEW_MODELS)
def registry_page():
    rt = runtime()
    items = registry.versions(rt)
    champion = next((v for v in items if v["status"] == registry.CHAMPION), None)
    shadow = next((v for v in items if v["status"] == registry.SHADOW), None)
    return render_template("models.html", versions=items, champion=champion, shadow=shadow,
                           events=registry.events(rt, 50), floors=registry.FLOORS)


@bp.get("/compare")
@login_required(permissions.VIEW_MODELS)
def compare_page():
    rt = runtime()
    try:
        a = registry.show(rt, request.args.get("champion", ""))
        b = registry.show(rt, request.args.get("shadow", ""))
    except DermaTriageError as exc:
        return render_error(exc.status, exc.code, exc.message, exc.field)
    result = comparison.compare(rt, a["id"], b["id"], rt.settings.promotion_margin,
                                rt.settings.promotion_min_reviewed)
    return render_template("compare.html", result=result, champion=a, shadow=b)


@bp.get("/compare/cases/<case_id>/image")
@login_required(permissions.VIEW_MODELS)
@logged(AccessAction.READ_IMAGE)
def compared_image(case_id: str):
    data, media = comparison.thumbnail(runtime(), g.user, case_id)
    return Response(data, mimetype=media)


def _act(fn, *args, done: str, **kwargs):
    try:
        result = fn(runtime(), *args, **kwargs)
        flash(done.format(**result))
    except DermaTriageError as exc:
        flash(f"Refused: {exc.message}")
    return redirect(url_for("models.registry_page"))


@bp.post("/promote")
@login_required(permissions.CHANGE_MODELS)
def promote():
    f = request.form
    return _act(registry.promote, f.get("version", ""), _by(), f.get("reason", ""),
                override=f.get("override") == "on", done="{action}: {name} {version} is the champion")


@bp.post("/shadow")
@login_required(permissions.CHANGE_MODELS)
def shadow():
    f = request.form
    return _act(registry.shadow, f.get("version", ""), _by(), f.get("reason", ""),
                done="shadow: {name} {version} reads live cases beside the champion")


@bp.post("/rollback")
@login_required(permissions.CHANGE_MODELS)
def rollback():
    return _act(registry.rollback, _by(), request.form.get("reason", ""),
                done="rollback: {name} {version} is the champion again")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
