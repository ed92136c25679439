"""STOW-RS intake: a dermoscope or camera that speaks DICOMweb stores its instances here.

The instances of one referral (same accession number, else same study) become one case, made
by the same use case and checks as the form's (``cases.submit_case``): nothing is kept of the
header but age, sex, body part, device and whether the image is dermoscopic, the patient is a
keyed-hash pseudonym of the patient identifier, and the same referral stored twice by one GP's
system is one case. The response is the DICOM store response (PS3.18 10.5): referenced and
failed SOP instances, the status 200 when all were stored, 202 when some failed, 409 when none
was.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging

from . import cases, dicom, permissions
from .errors import ValidationError
from .models import User
from .runtime import Runtime

log = logging.getLogger(__name__)
DICOM_TYPE = "application/dicom"


def parts(content_type: str, body: bytes) -> list[bytes]:
    """The application/dicom parts of a multipart/related body (the standard library's MIME
    parser; the parts themselves are read by pydicom)."""
    if not content_type.lower().startswith("multipart/related"):
        raise ValidationError(f'send multipart/related; type="{DICOM_TYPE}" (STOW-RS), not '
                              f"{content_type or 'no content type'}", "body")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise ValidationError("the multipart/related body has no parts (check the boundary)", "body")
    found = [p.get_payload(decode=True) or b"" for p in message.iter_parts()
             if p.get_content_type() == DICOM_TYPE]
    if not found:
        raise ValidationError(f"no {DICOM_TYPE} part in the request", "body")
    return found


def store(rt: Runtime, gp: User, content_type: str, body: bytes, case_url) -> tuple[int, dict, list[str]]:
    """(HTTP status, DICOM JSON store response, ids of the cases made or found)."""
    permissions.require(gp, permissions.SUBMIT_CASES)
    readable, failed = dicom.instances(parts(content_type, body))
    groups: dict[str, list[dicom.Instance]] = {}
    for inst in readable:
        groups.setdefault(inst.referral or inst.sop_instance, []).append(inst)
    stored, retrieve, case_ids = [], {}, []
    for referral, members in groups.items():
        form = {"patient_pseudonym": dicom.pseudonym(rt.settings.secret_key, members[0].patient, referral)}
        uploads = [cases.Upload(f"{m.sop_instance}.dcm", m.data, "") for m in members]
        try:
            case = cases.submit_case(rt, gp, form, uploads, external_ref=f"dicom:{referral}")
        except ValidationError as exc:
            log.info("STOW-RS referral %s refused: %s", referral, exc.message)
            failed += [(m.sop_class, m.sop_instance, dicom.PROCESSING_FAILURE) for m in members]
            continue
        case_ids.append(case.id)
        stored += members
        retrieve.update({m.sop_instance: case_url(case.id) for m in members})
    status = 200 if not failed else 202 if stored else 409
    return status, dicom.store_response(stored, failed, retrieve), case_ids
