"""Accounts, password hashing (argon2) and API bearer tokens."""

from __future__ import annotations

import time
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Unauthorized, ValidationError
from .models import User
from .runtime import Runtime
from .vocabulary import Role, values

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps timing the same either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def create_user(session: Session, username: str, password: str, role: str) -> User:
    username = username.strip()
    if role not in values(Role):
        raise ValidationError(f"role must be one of {', '.join(values(Role))}", "role")
    if not username or len(username) > 80:
        raise ValidationError("username must be 1-80 characters", "username")
    if len(password) < 8:
        raise ValidationError("password must be at least 8 characters", "password")
    if session.scalar(select(User).where(User.username == username)):
        raise ValidationError(f"user {username!r} already exists", "username")
    user = User(username=username, password_hash=_hasher.hash(password), role=Role(role), active=True)
    session.add(user)
    session.flush()
    return user


def authenticate(rt: Runtime, username: str, password: str) -> User | None:
    with rt.read() as session:
        user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user if user and user.active else None


def _serializer(secret_key: str, clock: Callable[[], float]) -> URLSafeTimedSerializer:
    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())
    return URLSafeTimedSerializer(secret_key, salt="dermatriage-api-token", signer=Signer)


def issue_token(secret_key: str, user: User, clock: Callable[[], float] = time.time) -> str:
    # The hash's tail ties a token to the current password: changing it revokes tokens.
    return _serializer(secret_key, clock).dumps({"uid": user.id, "pw": user.password_hash[-16:]})


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
    if user is None or not user.active or user.password_hash[-16:] != data.get("pw"):
        raise Unauthorized("invalid token")
    return user


def user_for_session(rt: Runtime, uid, password_tag) -> User | None:
    """The account behind a page session, if it is still valid (active, same password)."""
    with rt.read() as session:
        user = session.get(User, uid)
    if user is None or not user.active or password_tag != user.password_hash[-16:]:
        return None
    return user


def list_accounts(rt: Runtime, admin: User) -> list[User]:
    from . import permissions
    permissions.require(admin, permissions.ADMINISTER)
    with rt.read() as session:
        return list(session.scalars(select(User).order_by(User.username)))
