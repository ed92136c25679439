"""GET /fhir/metadata: what this server does, exactly (and nothing it does not)."""

from __future__ import annotations

from fhir.resources.capabilitystatement import CapabilityStatement

from . import codes
from .read import REPORT_SEARCH
from . import valid

_SEARCH_TYPES = {"based-on": "reference", "subject": "reference", "status": "token", "_lastUpdated": "date"}


def statement(base_url: str, software_version: str, released: str) -> dict:
    read = [{"code": "read"}]
    return valid(CapabilityStatement, {
        "resourceType": "CapabilityStatement", "status": "active", "date": released, "kind": "instance",
        "name": "DermaTriageFHIR", "title": "DermaTriage FHIR R5 endpoint",
        "description": ("Teledermatology triage: referrals in as a transaction Bundle (ServiceRequest, "
                        "pseudonymous Patient, DocumentReference images), reports out as DiagnosticReport "
                        "(preliminary from the AI, final or amended from a dermatologist), rest-hook "
                        "notifications when a report becomes final or amended."),
        "software": {"name": "DermaTriage", "version": software_version},
        "implementation": {"description": "DermaTriage", "url": f"{base_url}fhir"},
        "fhirVersion": "5.0.0", "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "OAuth-style bearer tokens from POST /api/v1/auth/token; a GP's "
                                        "token sees that GP's referrals only"},
            "interaction": [{"code": "transaction", "documentation": "one referral per Bundle"}],
            "resource": [
                {"type": "DiagnosticReport", "interaction": read + [{"code": "vread"}, {"code": "history-instance"},
                                                                    {"code": "search-type"}],
                 "versioning": "versioned", "readHistory": True,
                 "searchParam": [{"name": n, "type": _SEARCH_TYPES[n]} for n in REPORT_SEARCH
                                 if n in _SEARCH_TYPES]},
                {"type": "Provenance", "interaction": read + [{"code": "search-type"}],
                 "searchParam": [{"name": "target", "type": "reference"}]},
                {"type": "ServiceRequest", "interaction": read,
                 "documentation": "created by the transaction, with the case's id"},
                {"type": "Patient", "interaction": read, "documentation": "pseudonymous: identifier and gender"},
                {"type": "Subscription", "interaction": [{"code": "create"}, {"code": "read"}, {"code": "delete"},
                                                         {"code": "search-type"}],
                 "documentation": (f"rest-hook on the topic {codes.TOPIC}, content id-only or full-resource, "
                                   "no filters; notifications signed (X-DermaTriage-Signature, Ed25519)")},
            ],
        }],
    })
