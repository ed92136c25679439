"""FHIR R5: the referral Bundle in, the DiagnosticReport out over the whole case life, every
resource re-read by fhir.resources' R5 models, hostile Bundles refused with an
OperationOutcome and nothing stored."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fhir.resources import get_fhir_model_class
from sqlalchemy import func, select

from services import analysis
from services.diagnosis.engine import Engine
from services.models import AnalysisJob, Case, CaseImage
from tests.factories import (dicom_file, fhir_post, model_info, referral_bundle, review_body,
                             small_model_file, token_for)
from tests.web.test_intake import stored_objects

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


def r5(resource: dict):
    """Re-read by the R5 model of its own type: what an EHR's FHIR library would do."""
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def counts(stack) -> tuple[int, int, int]:
    with stack.runtime().read() as s:
        return (s.scalar(select(func.count()).select_from(Case)),
                s.scalar(select(func.count()).select_from(CaseImage)), stored_objects(stack))


def analyse(stack, engine, case_id: str) -> None:
    rt = stack.runtime()
    with rt.read() as s:
        job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == case_id))
    assert analysis.run_job(rt, job_id, engine.analyse, model_info(engine)) == "done"


def test_metadata_states_what_is_supported(embedded_stack):
    r = embedded_stack.app().test_client().get("/fhir/metadata")
    assert r.status_code == 200 and r.mimetype == FHIR
    cs = r5(r.json)
    assert cs.fhirVersion == "5.0.0" and cs.format == ["json"]
    resources = {res.type: res for res in cs.rest[0].resource}
    assert set(resources) == {"DiagnosticReport", "Provenance", "ServiceRequest", "Patient", "Subscription"}
    assert {p.name for p in resources["DiagnosticReport"].searchParam} == {"based-on", "subject", "status",
                                                                          "_lastUpdated"}
    assert {i.code for i in resources["DiagnosticReport"].interaction} == {"read", "vread", "history-instance",
                                                                          "search-type"}
    assert [i.code for i in cs.rest[0].interaction] == ["transaction"]
    assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert "camera=()" in r.headers["Permissions-Policy"]


def test_a_referral_bundle_is_one_case_however_often_it_is_sent(stack, ham_jpegs):
    client = stack.app().test_client()
    gp = token_for(client, "gp1")
    bundle = referral_bundle(ham_jpegs[:2])
    r = fhir_post(client, gp, bundle)
    assert r.status_code == 200 and r.mimetype == FHIR, r.get_data(as_text=True)
    reply = r5(r.json)
    assert reply.type == "transaction-response"
    assert {e.response.status for e in reply.entry} == {"201 Created"}
    location = next(e.response.location for e in reply.entry if (e.response.location or "").startswith("Service"))
    case_id = location.split("/")[1]
    again = fhir_post(client, gp, bundle)
    assert again.status_code == 200 and {e["response"]["status"] for e in again.json["entry"]} == {"200 OK"}
    assert counts(stack)[:2] == (1, 2)
    view = client.get(f"/api/v1/cases/{case_id}", headers=gp).json
    assert (view["body_site"], view["sex"], view["bleeding"], view["changed"]) == ("nose", "female", True, False)
    assert view["gp_question"] == "Pearly papule, 6 months." and view["patient_pseudonym"] == "EHR-P-7"
    assert 60 <= view["age"] <= 80
    sr = client.get(f"/fhir/ServiceRequest/{case_id}", headers=gp).json
    assert r5(sr).identifier[0].value == "REF-1"
    patient = client.get(f"/fhir/{sr['subject']['reference']}", headers=gp).json
    assert r5(patient).gender == "female" and "name" not in patient
    # another GP's system: the same identifier is its own referral, and gp1's case is not there
    gp2 = token_for(client, "gp2")
    assert client.get(f"/fhir/ServiceRequest/{case_id}", headers=gp2).status_code == 404
    assert client.get(f"/fhir/DiagnosticReport/{case_id}", headers=gp2).json["resourceType"] == "OperationOutcome"


def _without(bundle: dict, kind: str) -> dict:
    return {**bundle, "entry": [e for e in bundle["entry"] if e["resource"]["resourceType"] != kind]}


def test_hostile_bundles_are_refused_with_the_element_named_and_nothing_stored(embedded_stack, ham_jpegs):
    client = embedded_stack.app().test_client()
    gp = token_for(client, "gp1")
    good = referral_bundle(ham_jpegs[:1])
    rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(ham_jpegs[0])).convert("RGB"))

    def with_patient(**extra):
        return referral_bundle(ham_jpegs[:1], **extra)

    def with_subject(ref):
        b = json.loads(json.dumps(good))
        b["entry"][1]["resource"]["subject"] = {"reference": ref}
        return b

    def with_image(data: bytes, media: str = "application/dicom"):
        return referral_bundle([data], media=media)

    broken_dicom = dicom_file(rgb)[:-5000]
    cases = [
        ("{not json", 400, None),
        ({"resourceType": "Patient"}, 422, "Bundle.resourceType"),
        ({**good, "type": "batch"}, 422, "Bundle.type"),
        ({**good, "entry": good["entry"] + [{"resource": {"resourceType": "Observation", "status": "final",
                                                          "code": {"text": "x"}}}]},
         422, "Bundle.entry[3].resource.resourceType"),
        ({**good, "entry": good["entry"] + [{"resource": {"resourceType": "Nope"}}]},
         422, "Bundle.entry[3].resource.resourceType"),
        (with_subject("urn:uuid:not-here"), 422, "Bundle.entry[1].resource.subject"),
        (with_patient(name=[{"family": "Doe"}]), 422, "Bundle.entry[0].resource.name"),
        (with_patient(birthDate="19x5"), 422, "Bundle.entry[0].resource.birthDate"),
        (with_patient(colour="blue"), 422, "Bundle.entry[0].resource.colour"),
        (_without(good, "DocumentReference"), 422, "Bundle.entry"),
        (_without(good, "ServiceRequest"), 422, "Bundle.entry"),
        (with_image(b"not an image at all", "image/jpeg"), 422, "Bundle.entry[2].resource.content[0].attachment"),
        (with_image(ham_jpegs[0], "image/gif"), 415, "Bundle.entry[2].resource.content[0].attachment.contentType"),
        (with_image(broken_dicom), 422, "Bundle.entry[2].resource.content[0].attachment"),
        (with_image(dicom_file(rgb[:64, :64], syntax="1.2.840.10008.1.2.4.90")), 415,
         "Bundle.entry[2].resource.content[0].attachment"),
        (with_image(dicom_file(rgb, burned_in=True)), 422, "Bundle.entry[2].resource.content[0].attachment"),
    ]
    bad_b64 = json.loads(json.dumps(good))
    bad_b64["entry"][2]["resource"]["content"][0]["attachment"]["data"] = "%%%not base64%%%"
    cases.append((bad_b64, 422, "Bundle.entry[2].resource.content[0].attachment.data"))
    no_id = json.loads(json.dumps(good))
    del no_id["entry"][1]["resource"]["identifier"]
    cases.append((no_id, 422, "Bundle.entry[1].resource.identifier"))
    for body, status, expression in cases:
        r = fhir_post(client, gp, body)
        assert r.status_code == status, (expression, r.status_code, r.get_data(as_text=True)[:300])
        outcome = r5(r.json)
        assert r.json["resourceType"] == "OperationOutcome" and outcome.issue[0].diagnostics
        if expression:
            assert outcome.issue[0].expression == [expression], (expression, r.json)
    # 50 MB of base64: refused (4xx) with a message, never parsed into a case
    huge = referral_bundle([b"\xff\xd8" + b"\0" * 37_000_000])
    r = fhir_post(client, gp, huge)
    assert 400 <= r.status_code < 500 and r.json["resourceType"] == "OperationOutcome"
    assert r.json["issue"][0]["diagnostics"]
    assert counts(embedded_stack) == (0, 0, 0)


def test_unsupported_transfer_syntax_is_named(embedded_stack, ham_jpegs):
    client = embedded_stack.app().test_client()
    rgb = np.zeros((64, 64, 3), np.uint8)
    r = fhir_post(client, token_for(client, "gp1"),
                  referral_bundle([dicom_file(rgb, syntax="1.2.840.10008.1.2.4.90")], media="application/dicom"))
    assert r.status_code == 415 and "1.2.840.10008.1.2.4.90" in r.json["issue"][0]["diagnostics"]


def test_the_report_through_the_case_life(embedded_stack, small_engine, ham_jpegs):
    client = embedded_stack.app().test_client()
    gp, derm = token_for(client, "gp1"), token_for(client, "derm1")
    r = fhir_post(client, gp, referral_bundle(ham_jpegs[:1]))
    case_id = next(e["response"]["location"] for e in r.json["entry"]
                   if e["response"].get("location", "").startswith("ServiceRequest")).split("/")[1]
    url = f"/fhir/DiagnosticReport/{case_id}"

    def report(who=gp) -> dict:
        got = client.get(url, headers=who)
        assert got.status_code == 200 and got.mimetype == FHIR, got.get_data(as_text=True)
        assert got.headers["ETag"] == f'W/"{got.json["meta"]["versionId"]}"'
        r5(got.json)
        return got.json

    received = report()
    assert received["status"] == "registered" and received["meta"]["versionId"] == "1"
    assert received["basedOn"] == [{"reference": f"ServiceRequest/{case_id}"}] and "result" not in received

    analyse(embedded_stack, small_engine, case_id)
    prelim = report()
    assert prelim["status"] == "preliminary" and prelim["meta"]["versionId"] == "2"
    contained = {c["id"]: c for c in prelim["contained"]}
    model = contained["model"]
    assert model["resourceType"] == "Device" and len(model["identifier"][0]["value"]) == 64
    assert prelim["performer"][0]["reference"] == "#model" and "resultsInterpreter" not in prelim
    scope_ok = contained.get("scope", {}).get("valueCodeableConcept", {}).get("text", "dermoscopic") == "dermoscopic"
    if scope_ok:
        assert contained["bcc"]["valueQuantity"]["code"] == "1"
        assert {f"pattern-{c}" for c in ("PN", "UL", "BO", "MG", "ML", "SW", "AT")} <= set(contained)
        pattern = contained["pattern-AT"]
        assert isinstance(pattern["valueBoolean"], bool) and len(pattern["component"]) == 2
        assert all(c["status"] == "preliminary" and c["device"] == {"reference": "#model"}
                   for k, c in contained.items() if k.startswith(("bcc", "pattern")))
        link = prelim["presentedForm"][0]["url"]
        png = client.get(link.replace("http://localhost", ""), headers=gp)
        assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
    risk = contained["risk"]
    assert risk["valueQuantity"]["value"] >= 0 and risk["component"][0]["valueCodeableConcept"]["text"] in (
        "urgent", "routine", "low")
    assert prelim["conclusion"].startswith("AI (preliminary")

    assert client.post(f"/api/v1/cases/{case_id}/claim", headers=derm).status_code == 200
    r = client.post(f"/api/v1/cases/{case_id}/review", headers=derm,
                    json=review_body(diagnosis="bcc", override_reason="clinical features of BCC"))
    assert r.status_code in (200, 201), r.json
    final = report(derm)
    assert final["status"] == "final" and final["meta"]["versionId"] == "3"
    assert final["resultsInterpreter"][0]["display"] == "derm1"
    review = {c["id"]: c for c in final["contained"]}["review"]
    assert review["status"] == "final" and review["performer"] == [{"reference": "#reviewer"}]
    # SNOMED CT 254701007 |Basal cell carcinoma of skin|, as published on tx.fhir.org's
    # SNOMED CT browser (International Edition), beside our own diagnosis code.
    coding = final["conclusionCode"][0]["coding"]
    assert {"system": "http://snomed.info/sct", "code": "254701007",
            "display": "Basal cell carcinoma of skin"} in coding
    assert final["conclusion"].startswith("Dermatologist: basal cell carcinoma")
    assert final["note"][0]["text"].startswith("AI:")        # the AI's answer stays, authored by the model

    r = client.post(f"/api/v1/cases/{case_id}/review", headers=derm,
                    json=review_body(diagnosis="mel", override_reason="asymmetric pigment",
                                     amendment_reason="histology came back: melanoma"))
    assert r.status_code in (200, 201), r.json
    amended = report()
    assert amended["status"] == "amended" and amended["meta"]["versionId"] == "4"
    assert {"system": "http://snomed.info/sct", "code": "372130007",
            "display": "Malignant melanoma of skin"} in amended["conclusionCode"][0]["coding"]

    history = client.get(f"{url}/_history", headers=gp).json
    r5(history)
    assert history["type"] == "history"
    assert [e["resource"]["status"] for e in history["entry"]] == ["amended", "final", "preliminary", "registered"]
    assert client.get(f"{url}/_history/2", headers=gp).json["status"] == "preliminary"
    assert client.get(f"{url}/_history/9", headers=gp).status_code == 404
    provs = client.get(f"/fhir/Provenance?target=DiagnosticReport/{case_id}", headers=gp).json
    r5(provs)
    targets = [e["resource"]["target"][0]["reference"] for e in provs["entry"]]
    assert targets == [f"DiagnosticReport/{case_id}/_history/{n}" for n in (1, 2, 3, 4)]
    agents = [e["resource"]["agent"][0]["who"].get("display") for e in provs["entry"]]
    assert agents[0] == "gp1" and agents[2] == agents[3] == "derm1"
    one = client.get(f"/fhir/Provenance/{case_id}-3", headers=gp).json
    assert one["entity"][0]["what"]["identifier"]["system"].endswith("audit-record")

    # searches: by referral, by patient, by status, by date, with paging
    def search(query: str, who=gp) -> dict:
        got = client.get(f"/fhir/DiagnosticReport?{query}", headers=who)
        assert got.status_code == 200, got.get_data(as_text=True)
        r5(got.json)
        return got.json
    assert search(f"based-on=ServiceRequest/{case_id}")["total"] == 1
    assert search(f"subject={amended['subject']['reference']}")["total"] == 1
    assert search("status=amended")["total"] == 1 and search("status=final,preliminary")["total"] == 0
    assert search("_lastUpdated=ge2026-01-01")["total"] == 1 and search("_lastUpdated=lt2026-01-01")["total"] == 0
    r = fhir_post(client, gp, referral_bundle(ham_jpegs[1:2], identifier="REF-2"))
    assert r.status_code == 200
    page1 = search("_count=1")
    assert page1["total"] == 2 and len(page1["entry"]) == 1
    nxt = next(link["url"] for link in page1["link"] if link["relation"] == "next")
    page2 = client.get(nxt.replace("http://localhost", ""), headers=gp).json
    assert page2["entry"][0]["resource"]["id"] != page1["entry"][0]["resource"]["id"]
    assert search("status=registered")["total"] == 1
    assert search("", who=token_for(client, "gp2"))["total"] == 0
    assert search("", who=token_for(client, "auditor1"))["total"] == 2
    # every report a search returned is in the access log, as a read of its case
    from services import access
    logged = access.query(embedded_stack.runtime(), None, case_id=case_id, username="auditor1")
    assert logged and logged[0]["subject"].startswith("/fhir/DiagnosticReport?")
    for bad in ("status=done", "_lastUpdated=yesterday", "_count=0", "code=xyz"):
        got = client.get(f"/fhir/DiagnosticReport?{bad}", headers=gp)
        assert got.status_code == 400 and got.json["issue"][0]["expression"], bad


def test_a_failed_analysis_is_a_registered_report_that_says_so(embedded_stack, ham_jpegs):
    client = embedded_stack.app().test_client()
    gp = token_for(client, "gp1")
    r = fhir_post(client, gp, referral_bundle(ham_jpegs[:1]))
    case_id = r.json["entry"][1]["response"]["location"].split("/")[1]
    rt = embedded_stack.runtime()
    with rt.read() as s:
        job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == case_id))
    analysis.fail_job(rt, job_id, "model file unreadable")
    rep = client.get(f"/fhir/DiagnosticReport/{case_id}", headers=gp).json
    r5(rep)
    assert rep["status"] == "registered" and rep["meta"]["versionId"] == "2"
    assert "AI analysis failed" in rep["conclusion"] and "contained" not in rep


def test_the_case_page_links_its_report_and_a_page_session_may_read_it(embedded_stack, ham_jpegs):
    from tests.factories import login
    app = embedded_stack.app()
    r = fhir_post(app.test_client(), token_for(app.test_client(), "gp1"), referral_bundle(ham_jpegs[:1]))
    case_id = r.json["entry"][1]["response"]["location"].split("/")[1]
    page = login(app, "gp1")
    html = page.get(f"/cases/{case_id}").get_data(as_text=True)
    assert f"/fhir/DiagnosticReport/{case_id}" in html
    assert page.get(f"/fhir/DiagnosticReport/{case_id}").json["resourceType"] == "DiagnosticReport"
    assert page.post("/fhir", data="{}", content_type=FHIR).status_code == 401   # writes need a token


def test_export_writes_the_report_bundle(embedded_stack, ham_jpegs, tmp_path):
    from click.testing import CliRunner
    from services.cli import main
    client = embedded_stack.app().test_client()
    r = fhir_post(client, token_for(client, "gp1"), referral_bundle(ham_jpegs[:1]))
    case_id = r.json["entry"][1]["response"]["location"].split("/")[1]
    out = tmp_path / "report.json"
    env = embedded_stack.env
    result = CliRunner().invoke(main, ["fhir", "export", "--case", case_id, "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    r5(bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "DiagnosticReport", "ServiceRequest", "Patient", "Provenance"]
    missing = CliRunner().invoke(main, ["fhir", "export", "--case", "nope"], env=env)
    assert missing.exit_code != 0 and "no case nope" in missing.output


def test_every_snomed_code_we_emit_is_from_a_published_source(embedded_stack, ham_jpegs):
    """SNOMED CT codes: 254701007, 372130007 and 400096001 as tx.fhir.org's SNOMED CT browser
    (International Edition) publishes them; the rest from DICOM PS3.16's dermatology context
    groups as pydicom ships them (CID 4405 history/diagnoses, CID 4406 symptoms), checked here
    against that dictionary."""
    from pydicom.sr.codedict import codes as dicom

    from services.fhir import codes
    published = {"254701007": "Basal cell carcinoma of skin", "372130007": "Malignant melanoma of skin",
                 "400096001": "Melanocytic nevus",
                 dicom.SCT.ActinicKeratosis.value: "Actinic keratosis",
                 dicom.SCT.BleedingSkin.value: "Bleeding skin",
                 dicom.SCT.SymptomHasChanged.value: "Symptom has changed"}
    ours = {code: display for code, display in codes.SNOMED_DIAGNOSIS.values()}
    ours.update({code: display for code, display in codes.RED_FLAG_SNOMED.values()})
    assert ours == published
    # a referral may state its red flags in SNOMED CT; the ServiceRequest says them both ways
    client = embedded_stack.app().test_client()
    gp = token_for(client, "gp1")
    bundle = referral_bundle(ham_jpegs[:1])
    bundle["entry"][1]["resource"]["reason"] = [
        {"concept": {"coding": [{"system": "http://snomed.info/sct", "code": "162499001"}]}}]
    r = fhir_post(client, gp, bundle)
    case_id = r.json["entry"][1]["response"]["location"].split("/")[1]
    view = client.get(f"/api/v1/cases/{case_id}", headers=gp).json
    assert (view["changed"], view["bleeding"]) == (True, False)
    sr = client.get(f"/fhir/ServiceRequest/{case_id}", headers=gp).json
    assert sr["reason"][0]["concept"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "162499001",
                                                       "display": "Symptom has changed"}
