"""FHIR R5 for EHRs: referrals in (a transaction Bundle), reports out (DiagnosticReport with
its Observations, the model as a Device, a Provenance per version), rest-hook notifications.

Every resource we accept or emit goes through the ``fhir.resources`` R5 models, so what
leaves is valid R5 and what arrives is read by the field's own parser, not by ours. The
report is not stored as a resource: it is a view of the case, its predictions and its
reviews, rebuilt on read, so it cannot drift from what the pages show. Its versions are the
case's events (received, analysed or analysis failed, each clinical review), which is also
what ``_history`` lists.
"""

from .errors import FhirError

__all__ = ["FhirError", "FHIR_JSON", "valid"]

FHIR_JSON = "application/fhir+json"


def valid(model, body: dict) -> dict:
    """What we emit is what fhir.resources' R5 model accepts: the body is validated and then
    sent as built (the model's own JSON serialiser doubled a report's cost, 7 ms of 14)."""
    model.model_validate(body)
    return body
