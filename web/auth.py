"""Who is calling: bearer tokens for the API, the session for pages; role checks.

Which roles a route admits comes from services.permissions, the same sets the use cases
enforce.
"""

from __future__ import annotations

import hmac
import secrets
from functools import wraps

from flask import current_app, g, redirect, request, session, url_for

from services import access, permissions, users
from services.errors import Forbidden, Unauthorized
from services.models import User
from services.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["dermatriage"]


def _roles(action: frozenset) -> str:
    return " or ".join(permissions.role_names(action))


def api_login_required(action: frozenset, pages_may_read: bool = False):
    """401 without a valid token, 403 with the wrong role. ``pages_may_read``: a GET may also
    come with a page session (the FHIR report a case page links)."""
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            if header.startswith("Bearer "):
                user = users.user_for_token(runtime(), header[7:].strip())
            else:
                user = page_user() if pages_may_read and request.method == "GET" else None
                if user is None:
                    raise Unauthorized("send 'Authorization: Bearer <token>' (POST /api/v1/auth/token)")
            if not permissions.allowed(user.role, action):
                raise Forbidden(f"this needs the role {_roles(action)}")
            g.user = user
            return fn(*args, **kwargs)
        return wrapper
    return decorator


def client_address() -> str:
    """Where a request comes from, for the throttle and the access log. Behind a reverse proxy
    wrap the app in werkzeug's ProxyFix so that this is the client, not the proxy."""
    return request.remote_addr or "?"


def page_user() -> User | None:
    """The session's account while the session is valid: not logged out or revoked (session
    version), not idle longer than SESSION_IDLE_S, not older than SESSION_MAX_S."""
    uid = session.get("uid")
    if uid is None:
        return None
    rt = runtime()
    now = rt.clock()
    born, seen = session.get("born", 0), session.get("seen", 0)
    if now - born > rt.settings.session_max_s or now - seen > rt.settings.session_idle_s:
        session.clear()
        return None
    user = users.user_for_session(rt, uid, session.get("pw"), session.get("ver"))
    if user is None:
        session.clear()
        return None
    if now - seen > 60:          # refresh the idle clock at most once a minute (cookie writes)
        session["seen"] = int(now)
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
    now = int(runtime().clock())
    session.clear()
    session["uid"] = user.id
    session["pw"] = user.password_hash[-16:]
    session["ver"] = user.session_version
    session["born"] = session["seen"] = now
    session["csrf"] = secrets.token_urlsafe(32)


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok() -> bool:
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    return bool(sent and expected) and hmac.compare_digest(sent, expected)


def logged(action):
    """Record a successful read of patient data in the access log (who, when, from where,
    which case and what in it). Put it under the login decorator: it needs g.user."""
    def decorator(fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            response = fn(*args, **kwargs)
            status = response[1] if isinstance(response, tuple) else getattr(response, "status_code", 200)
            if status < 400:
                subject = "/".join(str(v) for k, v in sorted(kwargs.items()) if k != "case_id") or None
                access.record(runtime(), g.user, action, client_address(), case_id=kwargs.get("case_id"),
                              subject=subject or (request.path if not kwargs else None))
            return response
        return wrapper
    return decorator
