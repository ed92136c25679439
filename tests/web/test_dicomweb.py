"""STOW-RS: a real DICOMweb client (dicomweb-client) stores a device's instances; the
instances of one referral become one case, de-identified, and a repeat is the same case."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest
from sqlalchemy import func, select

from services.models import Case, CaseImage
from services.modelling.synthetic import generate

from tests.factories import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, dicom_file, token_for


@pytest.fixture
def served(embedded_stack):
    from werkzeug.serving import make_server

    app = embedded_stack.app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = token_for(app.test_client(), "gp1")["Authorization"]
    yield f"http://127.0.0.1:{server.server_port}", token, embedded_stack
    server.shutdown()


def client_for(base: str, token: str):
    from dicomweb_client.api import DICOMwebClient
    return DICOMwebClient(url=f"{base}/dicomweb", headers={"Authorization": token})


def datasets(study: str, accession: str, n: int = 2, **kw) -> list:
    rgb = generate(n, seed=9, size=256).images
    return [pydicom.dcmread(io.BytesIO(dicom_file(rgb[i], study_uid=study, accession=accession, **kw)))
            for i in range(n)]


def test_a_devices_study_becomes_one_de_identified_case_once(served):
    base, token, stack = served
    study = pydicom.uid.generate_uid()
    sent = datasets(study, "ACC-77")
    reply = client_for(base, token).store_instances(sent)
    refs = reply.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [d.SOPInstanceUID for d in sent]
    assert "FailedSOPSequence" not in reply
    case_url = refs[0].RetrieveURL
    assert "/api/v1/cases/" in case_url and refs[1].RetrieveURL == case_url
    # the same study again (a device's retry): the same case, nothing more stored
    again = client_for(base, token).store_instances(sent)
    assert again.ReferencedSOPSequence[0].RetrieveURL == case_url
    rt = stack.runtime()
    with rt.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 1
        case = s.scalar(select(Case))
        images = s.scalars(select(CaseImage).where(CaseImage.case_id == case.id)).all()
        assert len(images) == 2 and {i.kind for i in images} == {"dermoscopic"}
        assert (case.age, case.sex, case.body_site) == (67, "female", "nose")
        assert case.patient_pseudonym.startswith("dcm-") and PATIENT_ID not in case.patient_pseudonym
        keys = [i.object_key for i in images]
    for key in keys:
        blob = rt.store.get(key)
        assert blob[128:132] != b"DICM"
        for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "St Elsewhere"):
            assert secret.encode() not in blob


def test_instances_that_cannot_be_read_fail_alone(served):
    from requests import HTTPError

    base, token, stack = served
    good = datasets(pydicom.uid.generate_uid(), "ACC-1", n=1)
    unsupported = datasets(pydicom.uid.generate_uid(), "ACC-2", n=1, sop="1.2.840.10008.5.1.4.1.1.7")
    reply = client_for(base, token).store_instances(good + unsupported)
    assert [r.ReferencedSOPInstanceUID for r in reply.ReferencedSOPSequence] == [good[0].SOPInstanceUID]
    failed = reply.FailedSOPSequence
    assert failed[0].ReferencedSOPInstanceUID == unsupported[0].SOPInstanceUID and failed[0].FailureReason == 0x0122
    with pytest.raises(HTTPError) as info:          # nothing storable: 409
        client_for(base, token).store_instances(unsupported)
    assert info.value.response.status_code == 409


def test_stow_needs_a_gp_token_and_multipart_related(served):
    import requests

    base, token, stack = served
    assert requests.post(f"{base}/dicomweb/studies", data=b"x").status_code == 401
    r = requests.post(f"{base}/dicomweb/studies", data=b"x", headers={"Authorization": token,
                                                                     "Content-Type": "application/dicom"})
    assert r.status_code == 422 and "multipart/related" in r.json()["message"]
