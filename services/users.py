"""Accounts, password hashing (argon2) and API bearer tokens."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ROLES, User

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps timing the same either way.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class UserError(ValueError):
    pass


class TokenError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def create_user(session: Session, username: str, password: str, role: str) -> User:
    username = username.strip()
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not username or len(username) > 80:
        raise UserError("username must be 1-80 characters")
    if len(password) < 8:
        raise UserError("password must be at least 8 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise UserError(f"user {username!r} already exists")
    user = User(username=username, password_hash=_hasher.hash(password), role=role, active=True)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user if user and user.active else None


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="dermatriage-api-token")


def issue_token(secret_key: str, user: User) -> str:
    # The hash's tail ties a token to the current password: changing it revokes tokens.
    return _serializer(secret_key).dumps({"uid": user.id, "pw": user.password_hash[-16:]})


def user_for_token(session: Session, secret_key: str, token: str, max_age_s: int) -> User:
    try:
        data = _serializer(secret_key).loads(token, max_age=max_age_s)
    except SignatureExpired as exc:
        raise TokenError("token expired") from exc
    except BadSignature as exc:
        raise TokenError("invalid token") from exc
    user = session.get(User, data.get("uid")) if isinstance(data, dict) else None
    if user is None or not user.active or user.password_hash[-16:] != data.get("pw"):
        raise TokenError("invalid token")
    return user
