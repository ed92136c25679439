"""The loop as an EHR and a dermoscope drive it, over HTTP, with a real worker process: a
FHIR referral Bundle and a DICOM study (dicomweb-client STOW-RS) go in, the worker analyses
them, a dermatologist reviews, the EHR's rest-hook receives a signed notification per report
and fetches the final report."""

from __future__ import annotations

import io
import json
import threading

import pydicom
import pytest
import requests

from services import checkpoints, deliveries
from services.modelling.synthetic import generate
from tests.factories import dicom_file, poll, referral_bundle, review_body, stop, token_for
from tests.services.test_deliveries import Receiver

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def served(stack):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, stack.app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_an_ehr_and_a_device_get_their_final_reports_back(stack, served, ham_jpegs, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    receiver = Receiver()
    worker = stack.start_worker(tmp_path / "worker.log")
    try:
        client = stack.app().test_client()
        gp, derm = token_for(client, "gp1"), token_for(client, "derm1")
        sub = requests.post(f"{served}/fhir/Subscription", headers={**gp, **FHIR}, data=json.dumps({
            "resourceType": "Subscription", "status": "requested",
            "topic": "https://fhir.dermatriage.org/SubscriptionTopic/report-final-or-amended",
            "channelType": {"code": "rest-hook"}, "endpoint": receiver.url, "content": "id-only"}))
        assert sub.status_code == 201, sub.text

        # the EHR's referral
        r = requests.post(f"{served}/fhir", headers={**gp, **FHIR}, data=json.dumps(referral_bundle(ham_jpegs[:1])))
        assert r.status_code == 200, r.text
        fhir_case = next(e["response"]["location"] for e in r.json()["entry"]
                         if e["response"].get("location", "").startswith("ServiceRequest")).split("/")[1]
        # the dermoscope's study
        rgb = generate(1, seed=4, size=256).images
        study = pydicom.uid.generate_uid()
        ds = pydicom.dcmread(io.BytesIO(dicom_file(rgb[0], study_uid=study, accession="ACC-LOOP")))
        stored = DICOMwebClient(url=f"{served}/dicomweb", headers=gp).store_instances([ds])
        dicom_case = stored.ReferencedSOPSequence[0].RetrieveURL.rstrip("/").split("/")[-1]

        def status(case_id):
            got = requests.get(f"{served}/fhir/DiagnosticReport/{case_id}", headers=gp)
            assert got.status_code == 200, got.text
            return got.json()["status"]
        poll(lambda: {status(fhir_case), status(dicom_case)} == {"preliminary"}, timeout=180,
             what="both reports preliminary (analysed by the worker)")

        for case_id in (fhir_case, dicom_case):
            assert requests.post(f"{served}/api/v1/cases/{case_id}/claim", headers=derm).status_code == 200
            r = requests.post(f"{served}/api/v1/cases/{case_id}/review", headers=derm,
                              json=review_body(diagnosis="nv", override_reason="benign network"))
            assert r.status_code in (200, 201), r.text
        poll(lambda: receiver.events() == [1, 2], timeout=60, what="both notifications received")

        public = requests.get(f"{served}/api/v1/audit/public-key").content
        assert public == checkpoints.public_pem(checkpoints.public_key(stack.runtime()))
        focused = []
        for headers, body in receiver.got:
            sig = headers[deliveries.HEADER.lower()]
            at = int(dict(p.split("=", 1) for p in sig.split(","))["t"])
            assert deliveries.verify_signature(public, sig, body, now=at)
            status_resource = json.loads(body)["entry"][0]["resource"]
            focused.append(status_resource["notificationEvent"][0]["focus"]["reference"])
        assert sorted(f.split("/DiagnosticReport/")[1] for f in focused) == sorted(
            [f"{fhir_case}/_history/3", f"{dicom_case}/_history/3"])
        for case_id in (fhir_case, dicom_case):
            final = requests.get(f"{served}/fhir/DiagnosticReport/{case_id}", headers=gp).json()
            assert final["status"] == "final" and final["conclusion"].startswith("Dermatologist: melanocytic")
            assert {"code": "400096001", "system": "http://snomed.info/sct",
                    "display": "Melanocytic nevus"} in final["conclusionCode"][0]["coding"]
    finally:
        stop(worker)
        receiver.server.shutdown()
