"""Human-AI monitoring per model version, from the current clinical reviews."""

import csv
import io

import pytest

from services.diagnosis.engine import Engine

from tests.factories import analysed_case, login, mask_data_url, review_body, small_model_file, token_for


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


def test_agreement_overrides_regions_and_review_times(embedded_stack, small_engine, ham_jpegs):
    stack = embedded_stack
    c = stack.app().test_client()
    derm, gp, admin = token_for(c, "derm1"), token_for(c, "gp1"), token_for(c, "admin1")
    said = []
    for i, img in enumerate(ham_jpegs[:4]):
        case_id = analysed_case(stack, small_engine, [img])
        assert c.post(f"/api/v1/cases/{case_id}/claim", headers=derm).status_code == 200
        state = c.get(f"/api/v1/cases/{case_id}/review", headers=derm).json
        ai, size = state["ai"], state["region_size"]
        ai_bcc = ai["says_bcc"]
        human_bcc = ai_bcc if i < 3 else not ai_bcc                 # one override in four
        patterns = {**review_body()["patterns"], "AT": "present"}
        body = review_body(diagnosis="bcc" if human_bcc else "nv", patterns=patterns,
                           override_reason="not what I see" if human_bcc != ai_bcc else "",
                           regions={"AT": mask_data_url(size, (0, 0, size, size // 2))})
        r = c.post(f"/api/v1/cases/{case_id}/review", json=body, headers=derm)
        assert r.status_code == 201, r.json
        said.append((human_bcc, ai_bcc, "AT" in ai["patterns_present"]))
    assert c.get("/api/v1/monitoring", headers=gp).status_code == 403
    report = c.get("/api/v1/monitoring", headers=admin).json
    assert report["reviewed_cases"] == 4
    (name, m), = report["models"].items()
    assert name == "test-model 0.0.1" and m["with_ai"] == 4
    assert m["override_rate"] == 0.25 and m["override_reasons"] == [["not what I see", 1]]
    bcc = m["diagnoses"]["bcc"]
    assert bcc["tp"] + bcc["fn"] == sum(h for h, _, _ in said)
    assert bcc["tp"] + bcc["fp"] == sum(a for _, a, _ in said)
    at = m["patterns"]["AT"]
    assert at["n"] == 4 and at["tp"] == sum(p for _, _, p in said)
    assert m["explanation_vs_expert"]["AT"]["regions"] == 4
    assert 0 <= m["explanation_vs_expert"]["AT"]["relevance_mass"] <= 1
    assert m["calibration"]["BCC"]["n"] == 4
    times = report["review_times"]
    assert sum(t["reviewed"] for t in times.values()) == 4
    assert all(t["sla_breaches"] == 0 for t in times.values())
    page = login(stack.app(), "derm1").get("/monitoring")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "reliability of BCC probability" in html and "override rate 25%" in html and "not what I see" in html
    rows = list(csv.DictReader(io.StringIO(c.get("/api/v1/monitoring?format=csv", headers=admin)
                                          .get_data(as_text=True))))
    assert {"model": name, "section": "summary", "name": "", "metric": "override_rate", "value": "0.25"} in rows
