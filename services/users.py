"""Accounts, password hashing (argon2), API bearer tokens and page sessions.

A token and a page session carry the account's ``session_version``; bumping it ends every
session and token of the account at once. Logout, a password change or reset, deactivation
and revocation all bump it. Logins are throttled per account and per client (throttle.py),
and every login, refusal and account action is written to the access log.
"""

from __future__ import annotations

import time
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import access, permissions, throttle
from .errors import NotFound, Unauthorized, ValidationError
from .models import User
from .runtime import Runtime
from .vocabulary import AccessAction, Role, values

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps timing the same either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


MIN_PASSWORD = 10


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"password must be at least {MIN_PASSWORD} characters", "password")
    if len(password) > 1024 or "\x00" in password:
        raise ValidationError("password must be at most 1024 characters, without NUL", "password")


def create_user(session: Session, username: str, password: str, role: str) -> User:
    username = username.strip()
    if role not in values(Role):
        raise ValidationError(f"role must be one of {', '.join(values(Role))}", "role")
    if not username or len(username) > 80 or not username.isprintable():
        raise ValidationError("username must be 1-80 printable characters", "username")
    _check_password(password)
    if session.scalar(select(User).where(User.username == username)):
        raise ValidationError(f"user {username!r} already exists", "username")
    user = User(username=username, password_hash=_hasher.hash(password), role=Role(role), active=True)
    session.add(user)
    session.flush()
    return user


def authenticate(rt: Runtime, username: str, password: str, client: str = "?") -> User | None:
    """The account, or None for a wrong name or password; TooManyRequests (429) when the
    account or the client has failed too often lately (no password is checked then)."""
    throttle.check(rt, username, client)
    with rt.read() as session:
        user = session.scalar(select(User).where(User.username == username))
    ok = True
    with throttle.password_check_slot():
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            ok = False
    if not ok or user is None or not user.active:
        throttle.failed(rt, username, client)
        access.record(rt, None, AccessAction.LOGIN_REFUSED, client, username=username)
        return None
    throttle.succeeded(rt, username)
    access.record(rt, user, AccessAction.LOGIN, client)
    return user


def _serializer(secret_key: str, clock: Callable[[], float]) -> URLSafeTimedSerializer:
    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())
    return URLSafeTimedSerializer(secret_key, salt="dermatriage-api-token", signer=Signer)


def issue_token(secret_key: str, user: User, clock: Callable[[], float] = time.time) -> str:
    # The hash's tail ties a token to the current password: changing it revokes tokens.
    return _serializer(secret_key, clock).dumps({"uid": user.id, "pw": user.password_hash[-16:],
                                                 "v": user.session_version})


def token_for(rt: Runtime, user: User) -> str:
    return issue_token(rt.settings.secret_key, user, rt.clock)


def user_for_token(rt: Runtime, token: str) -> User:
    try:
        data = _serializer(rt.settings.secret_key, rt.clock).loads(
            token, max_age=rt.settings.token_max_age_s)
    except SignatureExpired as exc:
        raise Unauthorized("token expired") from exc
    except BadSignature as exc:
        raise Unauthorized("invalid token") from exc
    with rt.read() as session:
        user = session.get(User, data.get("uid")) if isinstance(data, dict) else None
    if user is None or not user.active or user.password_hash[-16:] != data.get("pw") \
            or data.get("v") != user.session_version:
        raise Unauthorized("invalid token")
    return user


def user_for_session(rt: Runtime, uid, password_tag, version=None) -> User | None:
    """The account behind a page session, if it is still valid (active, same password, not
    ended since)."""
    with rt.read() as session:
        user = session.get(User, uid)
    if user is None or not user.active or password_tag != user.password_hash[-16:] \
            or version != user.session_version:
        return None
    return user


# --- ending sessions and managing accounts ----------------------------------------------------
def _account(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username).with_for_update())
    if user is None:
        raise NotFound(f"no account {username!r}")
    return user


def log_out(rt: Runtime, user: User, client: str) -> None:
    """End this account's sessions and tokens everywhere (a copied cookie stops working)."""
    with rt.transaction() as s:
        s.get(User, user.id, with_for_update=True).session_version += 1
    access.record(rt, user, AccessAction.LOGOUT, client)


def create_account(rt: Runtime, admin: User | None, username: str, password: str, role: str,
                   client: str) -> User:
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
    with rt.transaction() as s:
        user = create_user(s, username, password, role)
    access.record(rt, admin, AccessAction.ACCOUNT_CREATE, client, subject=f"{username} ({role})",
                  username="operator (cli)")
    return user


def deactivate(rt: Runtime, admin: User | None, username: str, client: str) -> None:
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
        if admin.username == username:
            raise ValidationError("an administrator cannot deactivate their own account", "username")
    with rt.transaction() as s:
        user = _account(s, username)
        user.active = False
        user.session_version += 1
    access.record(rt, admin, AccessAction.ACCOUNT_DEACTIVATE, client, subject=username,
                  username="operator (cli)")


def reset_password(rt: Runtime, admin: User | None, username: str, password: str, client: str) -> None:
    """A new password (ends the account's sessions and tokens)."""
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
    _check_password(password)
    with rt.transaction() as s:
        user = _account(s, username)
        user.password_hash = _hasher.hash(password)
        user.session_version += 1
    throttle.succeeded(rt, username)
    access.record(rt, admin, AccessAction.ACCOUNT_PASSWORD, client, subject=username,
                  username="operator (cli)")


def change_password(rt: Runtime, user: User, old: str, new: str, client: str) -> None:
    """The account holder's own change: the old password first."""
    if authenticate(rt, user.username, old, client) is None:
        raise ValidationError("the current password is wrong", "current_password")
    _check_password(new)
    with rt.transaction() as s:
        me = _account(s, user.username)
        me.password_hash = _hasher.hash(new)
        me.session_version += 1
    access.record(rt, user, AccessAction.ACCOUNT_PASSWORD, client, subject=user.username)


def revoke(rt: Runtime, admin: User | None, username: str, client: str) -> None:
    """End every session and token of an account (it stays active)."""
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
    with rt.transaction() as s:
        _account(s, username).session_version += 1
    access.record(rt, admin, AccessAction.ACCOUNT_REVOKE, client, subject=username,
                  username="operator (cli)")


def list_accounts(rt: Runtime, admin: User) -> list[User]:
    from . import permissions
    permissions.require(admin, permissions.ADMINISTER)
    with rt.read() as session:
        return list(session.scalars(select(User).order_by(User.username)))
