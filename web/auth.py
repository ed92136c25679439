"""Who is calling: bearer tokens for the API, the session for pages; role checks."""

from __future__ import annotations

import hmac
import secrets
from functools import wraps

from flask import current_app, g, jsonify, redirect, request, session, url_for

from services import users
from services.models import User


def runtime():
    return current_app.extensions["dermatriage"]


def api_user() -> User | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    rt = runtime()
    with rt.sessions() as s:
        return users.user_for_token(s, rt.settings.secret_key, header[7:].strip(),
                                    rt.settings.token_max_age_s)


def api_login_required(*roles: str):
    """401 without a valid token, 403 with the wrong role."""
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                user = api_user()
            except users.TokenError as exc:
                return jsonify({"error": "unauthorized", "message": exc.reason}), 401
            if user is None:
                return jsonify({"error": "unauthorized",
                                "message": "send 'Authorization: Bearer <token>' (POST /api/v1/auth/token)"}), 401
            if roles and user.role not in roles:
                return jsonify({"error": "forbidden",
                                "message": f"this needs the role {' or '.join(roles)}"}), 403
            g.user = user
            return fn(*args, **kwargs)
        return wrapper
    return decorator


def page_user() -> User | None:
    uid = session.get("uid")
    if uid is None:
        return None
    with runtime().sessions() as s:
        user = s.get(User, uid)
    if user is None or not user.active or session.get("pw") != user.password_hash[-16:]:
        session.clear()
        return None
    return user


def login_required(*roles: str):
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            user = page_user()
            if user is None:
                return redirect(url_for("pages.login", next=request.path))
            if roles and user.role not in roles:
                from .pages import error_page
                return error_page(f"this page is for the role {' or '.join(roles)}", 403)
            g.user = user
            return fn(*args, **kwargs)
        return wrapper
    return decorator


def log_in(user: User) -> None:
    session.clear()
    session["uid"] = user.id
    session["pw"] = user.password_hash[-16:]
    session["csrf"] = secrets.token_urlsafe(32)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok() -> bool:
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    return bool(sent and expected) and hmac.compare_digest(sent, expected)
