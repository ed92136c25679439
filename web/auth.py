"""Who is calling: bearer tokens for the API, the session for pages; role checks.

Which roles a route admits comes from services.permissions, the same sets the use cases
enforce.
"""

from __future__ import annotations

import hmac
import secrets
from functools import wraps

from flask import current_app, g, redirect, request, session, url_for

from services import permissions, users
from services.errors import Forbidden, Unauthorized
from services.models import User
from services.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["dermatriage"]


def _roles(action: frozenset) -> str:
    return " or ".join(permissions.role_names(action))


def api_login_required(action: frozenset):
    """401 without a valid token, 403 with the wrong role."""
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                raise Unauthorized("send 'Authorization: Bearer <token>' (POST /api/v1/auth/token)")
            user = users.user_for_token(runtime(), header[7:].strip())
            if not permissions.allowed(user.role, action):
                raise Forbidden(f"this needs the role {_roles(action)}")
            g.user = user
            return fn(*args, **kwargs)
        return wrapper
    return decorator


def page_user() -> User | None:
    uid = session.get("uid")
    if uid is None:
        return None
    user = users.user_for_session(runtime(), uid, session.get("pw"))
    if user is None:
        session.clear()
    return user


def login_required(action: frozenset):
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            user = page_user()
            if user is None:
                return redirect(url_for("pages.login", next=request.path))
            if not permissions.allowed(user.role, action):
                raise Forbidden(f"this page is for the role {_roles(action)}")
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
