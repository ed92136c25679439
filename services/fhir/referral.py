"""Referral in: a FHIR transaction Bundle becomes a case through the same use case as the
form (``cases.submit_case``): same checks, same all-or-nothing storage, same idempotency.

The Bundle holds one ``ServiceRequest`` (the referral: identifier, body site, red flags as
``reason`` codes, the GP's question as a ``note``), one pseudonymous ``Patient``
(identifier, gender, birth year or our age extension; a name, address or contact is refused:
we do not need it and will not hold it) and one or more ``DocumentReference`` whose
attachments carry the images inline (base64) or point at a ``Binary`` entry of the Bundle.
The same ServiceRequest.identifier from the same GP is one case (conditional create): the
second transaction answers 200 with the first case.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date

import pydantic
from fhir.resources.bundle import Bundle

from .. import cases, permissions
from ..errors import ValidationError
from ..models import User
from ..runtime import Runtime
from ..vocabulary import BodySite, ImageKind, values
from . import codes
from .errors import FhirError
from . import valid

ACCEPTED = ("Patient", "ServiceRequest", "DocumentReference", "Binary")
IMAGE_TYPES = ("image/jpeg", "image/png", "application/dicom")
IDENTIFYING = ("name", "telecom", "address", "photo", "contact")


def _path(loc: tuple) -> str:
    out = "Bundle"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class _Entries:
    """The Bundle's entries by fullUrl and by Type/id, to resolve references inside it."""

    def __init__(self, entries: list[dict]):
        self.items = entries
        self.by_ref: dict[str, int] = {}
        for i, e in enumerate(entries):
            res = e.get("resource") or {}
            if e.get("fullUrl"):
                self.by_ref[e["fullUrl"]] = i
            if res.get("id"):
                self.by_ref[f"{res['resourceType']}/{res['id']}"] = i

    def of(self, kind: str) -> list[tuple[int, dict]]:
        return [(i, e["resource"]) for i, e in enumerate(self.items) if e["resource"]["resourceType"] == kind]

    def resolve(self, ref: dict | None, expression: str, kind: str) -> dict:
        target = (ref or {}).get("reference")
        if not target:
            raise FhirError(f"{expression} must reference the {kind} in this Bundle", expression)
        i = self.by_ref.get(target)
        if i is None:
            raise FhirError(f"{expression} references {target}, which is not in this Bundle: "
                            f"send the {kind} in the same transaction", expression)
        res = self.items[i]["resource"]
        if res["resourceType"] != kind:
            raise FhirError(f"{expression} references a {res['resourceType']}, not a {kind}", expression)
        return res


def parse(body) -> _Entries:
    if not isinstance(body, dict):
        raise FhirError("the body must be a FHIR resource (a JSON object)", "Bundle", 400)
    if body.get("resourceType") != "Bundle":
        raise FhirError(f"POST /fhir takes a transaction Bundle, not {body.get('resourceType') or 'no resourceType'}",
                        "Bundle.resourceType")
    if body.get("type") != "transaction":
        raise FhirError(f"Bundle.type must be transaction, not {body.get('type')}", "Bundle.type")
    entries = body.get("entry")
    if not isinstance(entries, list) or not entries:
        raise FhirError("the Bundle has no entry", "Bundle.entry")
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            raise FhirError("every entry needs a resource", f"Bundle.entry[{i}].resource")
        if res.get("resourceType") not in ACCEPTED:
            raise FhirError(f"a referral holds {', '.join(ACCEPTED)}, not {res.get('resourceType')}",
                            f"Bundle.entry[{i}].resource.resourceType")
        method = (e.get("request") or {}).get("method")
        if method not in (None, "POST"):
            raise FhirError(f"entries are created (POST), not {method}", f"Bundle.entry[{i}].request.method")
    try:
        Bundle.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        raise FhirError(f"{_path(first['loc'])}: {first['msg']}", _path(first["loc"])) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise FhirError(f"the Bundle is not valid FHIR R5: {exc}", "Bundle") from None
    return _Entries(entries)


def _one(entries: _Entries, kind: str) -> tuple[int, dict]:
    found = entries.of(kind)
    if len(found) != 1:
        raise FhirError(f"a referral holds exactly one {kind} ({len(found)} sent)", "Bundle.entry")
    return found[0]


def _codes(concepts: list[dict] | None) -> list[tuple[str | None, str]]:
    out = []
    for c in concepts or []:
        out += [(cd.get("system"), cd.get("code", "")) for cd in c.get("coding") or []]
        if c.get("text") and not c.get("coding"):
            out.append((None, c["text"].strip().lower()))
    return out


def _age(patient: dict, at: str) -> str:
    for ext in patient.get("extension") or []:
        if ext.get("url") == codes.EXT_AGE and "valueAge" in ext:
            age = ext["valueAge"]
            if age.get("code", "a") != "a":
                raise FhirError("the age extension is in years (code a)", f"{at}.extension")
            return str(int(age.get("value", -1)))
    born = patient.get("birthDate")
    if born:
        return str(date.today().year - int(born[:4]))
    return ""


def form_of(entries: _Entries) -> tuple[dict, str, int]:
    """The form's fields from the ServiceRequest and the Patient; the external reference."""
    si, sr = _one(entries, "ServiceRequest")
    pi, patient = _one(entries, "Patient")
    at_sr, at_pt = f"Bundle.entry[{si}].resource", f"Bundle.entry[{pi}].resource"
    for element in IDENTIFYING:
        if patient.get(element):
            raise FhirError(f"Patient.{element}: send a pseudonymous Patient (identifier, gender, birth "
                            "year); DermaTriage does not take names, addresses or contacts",
                            f"{at_pt}.{element}")
    if entries.resolve(sr.get("subject"), f"{at_sr}.subject", "Patient") is not patient:
        raise FhirError("ServiceRequest.subject must be the Bundle's Patient", f"{at_sr}.subject")
    ident = (sr.get("identifier") or [{}])[0]
    if not ident.get("value"):
        raise FhirError("ServiceRequest.identifier (your referral number) is required: it makes a "
                        "repeated transaction one case", f"{at_sr}.identifier")
    pseudonym = ((patient.get("identifier") or [{}])[0]).get("value", "")
    sites = _codes(sr.get("bodySite"))
    site = next((c for s, c in sites if s in (codes.CS_BODY_SITE, None) and c in values(BodySite)), None)
    if sites and site is None:
        raise FhirError(f"bodySite must be one of {', '.join(values(BodySite))} (system {codes.CS_BODY_SITE})",
                        f"{at_sr}.bodySite")
    by_snomed = {sct: flag for flag, (sct, _) in codes.RED_FLAG_SNOMED.items()}
    flags = set()
    for s, c in _codes([r.get("concept") or {} for r in sr.get("reason") or []]):
        if s in (codes.CS_RED_FLAG, None) and c in codes.RED_FLAGS:
            flags.add(c)
        elif s == codes.SNOMED and c in by_snomed:
            flags.add(by_snomed[c])
    form = {"patient_pseudonym": pseudonym, "age": _age(patient, at_pt), "sex": patient.get("gender", ""),
            "body_site": site or "", "changed": "changed" in flags, "bleeding": "bleeding" in flags,
            "gp_question": " ".join(n.get("text", "") for n in sr.get("note") or []).strip()}
    external = f"fhir:{ident.get('system', '')}|{ident['value']}"
    return form, external, si


def uploads_of(entries: _Entries, patient: dict) -> tuple[list[cases.Upload], list[str]]:
    """The images, each with the FHIRPath of the attachment it came from."""
    uploads, where = [], []
    docs = entries.of("DocumentReference")
    if not docs:
        raise FhirError("a referral needs at least one DocumentReference with an image", "Bundle.entry")
    for i, doc in docs:
        at = f"Bundle.entry[{i}].resource"
        if entries.resolve(doc.get("subject"), f"{at}.subject", "Patient") is not patient:
            raise FhirError("DocumentReference.subject must be the Bundle's Patient", f"{at}.subject")
        kinds = [c for s, c in _codes(doc.get("type") and [doc["type"]]) if s in (codes.CS_IMAGE_KIND, None)]
        kind = kinds[0] if kinds else ""
        if kind and kind not in values(ImageKind):
            raise FhirError(f"DocumentReference.type must be one of {', '.join(values(ImageKind))}", f"{at}.type")
        for j, content in enumerate(doc.get("content") or []):
            att, path = content.get("attachment") or {}, f"{at}.content[{j}].attachment"
            media = (att.get("contentType") or "").split(";")[0].strip()
            if media not in IMAGE_TYPES:
                raise FhirError(f"contentType must be one of {', '.join(IMAGE_TYPES)}, not {media or 'missing'}",
                                f"{path}.contentType", 415 if media else 422)
            if att.get("data"):
                data = _b64(att["data"], f"{path}.data")
            elif att.get("url"):
                binary = entries.resolve({"reference": att["url"]}, f"{path}.url", "Binary")
                data = _b64(binary.get("data") or "", f"{path}.url")
            else:
                raise FhirError("an attachment needs data (base64) or url (a Binary in the Bundle)", path)
            # DICOM decides its own kind from its class; JPEG/PNG without a type is dermoscopic.
            uploads.append(cases.Upload(att.get("title") or f"image{len(uploads) + 1}", data,
                                        kind or ("" if media == "application/dicom" else ImageKind.DERMOSCOPIC.value)))
            where.append(path)
    return uploads, where


def _b64(text: str, expression: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FhirError("the attachment is not valid base64", expression) from None


FIELD_PATHS = {"patient_pseudonym": "Patient.identifier", "age": "Patient.birthDate", "sex": "Patient.gender",
               "body_site": "ServiceRequest.bodySite", "gp_question": "ServiceRequest.note",
               "images": "DocumentReference"}


def submit(rt: Runtime, gp: User, body) -> tuple[bool, dict, str]:
    """(created, transaction-response Bundle, case id). Nothing is stored unless all is valid."""
    permissions.require(gp, permissions.SUBMIT_CASES)
    entries = parse(body)
    form, external, si = form_of(entries)
    _, patient = _one(entries, "Patient")
    uploads, where = uploads_of(entries, patient)
    try:
        case, created = cases.submit_referral(rt, gp, form, uploads, external_ref=external)
    except ValidationError as exc:
        field = exc.field or ""
        if field.startswith("images[") and field[7:-1].isdigit() and int(field[7:-1]) < len(where):
            expression = where[int(field[7:-1])]
        else:
            expression = FIELD_PATHS.get(field.split("[")[0], field or None)
        raise FhirError(exc.message, expression, exc.status) from exc
    response = []
    for e in entries.items:
        kind = e["resource"]["resourceType"]
        location = {"ServiceRequest": f"ServiceRequest/{case.id}/_history/1",
                    "Patient": f"Patient/{case.patient_key}"}.get(kind)
        item = {"status": "201 Created" if created else "200 OK"}
        if location:
            item["location"] = location
        response.append({"response": item})
    bundle = valid(Bundle, {"resourceType": "Bundle", "type": "transaction-response", "entry": response})
    return created, bundle, case.id
