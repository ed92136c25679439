"""The product's one error model.

Every failure a caller can act on is a ``DermaTriageError``: it carries an HTTP-like
``status``, a stable ``code`` for API clients, a message a person can act on and, for bad
input, the ``field`` at fault. web/ translates it once for JSON and once for pages; the CLI
prints the message. Adapters (database, object store, model files) raise these, never their
driver's exceptions, so no caller needs to know which library failed.
"""

from __future__ import annotations


class DermaTriageError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        out = {"error": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class ValidationError(DermaTriageError):
    status = 422
    code = "invalid"


class Unauthorized(DermaTriageError):
    status = 401
    code = "unauthorized"


class Forbidden(DermaTriageError):
    status = 403
    code = "forbidden"


class NotFound(DermaTriageError):
    status = 404
    code = "not_found"


class Conflict(DermaTriageError):
    status = 409
    code = "conflict"


class TooManyRequests(DermaTriageError):
    """Slow down: ``retry_after`` seconds (sent as the Retry-After header)."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int, field: str | None = None):
        super().__init__(message, field)
        self.retry_after = retry_after


class Unavailable(DermaTriageError):
    """A dependency (database, object store, broker) cannot be reached: retry later."""

    status = 503
    code = "unavailable"


class ConfigurationError(DermaTriageError):
    """Settings that must not be used (e.g. production with the default secret key)."""

    status = 500
    code = "misconfigured"


class ModelIntegrityError(DermaTriageError):
    """The weights on disk are not the ones the model card describes, or no model is there."""

    status = 500
    code = "model_integrity"
