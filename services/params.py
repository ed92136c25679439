"""Typed values from request mappings (form fields, query strings). A bad value is a
ValidationError that names its field; web/ hands over the raw mapping and never parses."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from .errors import ValidationError
from .vocabulary import values

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def _raw(form: Mapping, name: str) -> str:
    value = form.get(name)
    return "" if value is None else str(value).strip()


def flag(form: Mapping, name: str, empty: bool | None = False) -> bool | None:
    """true/false (1/0, yes/no, on/off); ``empty`` when the field is absent or blank."""
    raw = _raw(form, name).lower()
    if not raw:
        return empty
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise ValidationError(f"{name} must be true or false", name)


def choice(form: Mapping, name: str, enum: type[StrEnum]) -> StrEnum | None:
    """One of the enum's values, or None when the field is absent or blank."""
    raw = _raw(form, name)
    if not raw:
        return None
    if raw not in values(enum):
        raise ValidationError(f"{name} must be one of {', '.join(values(enum))}", name)
    return enum(raw)


def whole_number(form: Mapping, name: str, empty: int | None = None) -> int | None:
    """ASCII digits only: Python's int() would also take "1_0", "+5", " 7" and Arabic-Indic
    digits, none of which a person means as a number in a form."""
    raw = _raw(form, name)
    if not raw:
        return empty
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise ValidationError(f"{name} must be a whole number (digits 0-9)", name)
    return int(raw)


def date(form: Mapping, name: str):
    """An ISO date or date-time (UTC when no zone is given), or None when absent."""
    from datetime import datetime, timezone
    raw = _raw(form, name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an ISO date such as 2026-12-01 or 2026-12-01T08:00", name) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
