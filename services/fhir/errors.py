"""OperationOutcome: how every FHIR error is told (the element at fault in ``expression``)."""

from __future__ import annotations

from fhir.resources.operationoutcome import OperationOutcome

from ..errors import DermaTriageError

# HTTP status -> the OperationOutcome issue code a client's FHIR library understands.
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               409: "conflict", 410: "deleted", 413: "too-costly", 415: "not-supported",
               422: "processing", 429: "throttled", 503: "transient"}


class FhirError(DermaTriageError):
    """A refusal under /fhir, with the FHIRPath of the element at fault."""

    def __init__(self, message: str, expression: str | None = None, status: int = 422):
        super().__init__(message, expression)
        self.status, self.expression, self.code = status, expression, ISSUE_CODES.get(status, "processing")


def outcome(status: int, message: str, expression: str | None = None, severity: str = "error") -> dict:
    issue = {"severity": severity, "code": ISSUE_CODES.get(status, "processing"), "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [issue]}).model_dump(
        mode="json", exclude_none=True)
