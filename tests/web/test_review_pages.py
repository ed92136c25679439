"""The review, labelling, monitoring and admin pages through Flask's client (forms, CSRF)."""

import pytest

from services.diagnosis.engine import Engine

from tests.factories import analysed_case, login, mask_data_url, small_model_file


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


def csrf(client) -> str:
    with client.session_transaction() as sess:
        return sess["csrf"]


def form(client, **fields) -> dict:
    data = {f"pattern_{c}": "unsure" for c in ("PN", "UL", "BO", "MG", "ML", "SW", "AT")}
    data.update(csrf_token=csrf(client), management="routine_appointment", message="See you in clinic.")
    data.update(fields)
    return data


def test_review_page_round_trip(embedded_stack, small_engine, ham_jpegs):
    app = embedded_stack.app()
    case_id = analysed_case(embedded_stack, small_engine, ham_jpegs[:1])
    derm, gp = login(app, "derm1"), login(app, "gp1")
    assert derm.get(f"/cases/{case_id}/review").status_code == 302          # claim first
    assert derm.post(f"/cases/{case_id}/claim", data={"csrf_token": csrf(derm)}).status_code == 302
    page = derm.get(f"/cases/{case_id}/review").get_data(as_text=True)
    assert 'id="viewer"' in page and "crop.png" in page and 'id="opacity"' in page and 'id="original"' in page
    assert page.count("<canvas") == 7 and "review.js" in page
    assert "Images as sent" in page and "On lesion" in page
    assert derm.get("/static/review.js").status_code == 200
    ai_bcc = "(BCC)" in page.split("The AI said")[1].split("</p>")[0]
    other = "nv" if ai_bcc else "bcc"
    # an override without a reason comes back with the field named and the choices kept
    r = derm.post(f"/cases/{case_id}/review", data=form(derm, diagnosis=other, pattern_UL="absent"))
    body = r.get_data(as_text=True)
    assert r.status_code == 422 and "override_reason: overriding the AI" in body
    assert 'value="absent" aria-label="UL absent" checked' in body
    size = int(page.split('width="')[1].split('"')[0]) if 'data-pattern' in page else None
    region = mask_data_url(size, (2, 2, size // 2, size // 2))
    r = derm.post(f"/cases/{case_id}/review", data=form(derm, diagnosis=other, override_reason="looks benign",
                                                        pattern_AT="present", region_AT=region))
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/cases/{case_id}")
    case_page = derm.get(f"/cases/{case_id}").get_data(as_text=True)
    assert "Review history" in case_page and "overrides" in case_page and "(region)" in case_page
    assert "Amend your review" in case_page
    assert "new answer" in gp.get("/cases").get_data(as_text=True)
    answer = gp.get(f"/cases/{case_id}").get_data(as_text=True)
    assert "Dermatologist's answer" in answer and "routine appointment" in answer and "See you in clinic." in answer
    assert "Review history" not in answer
    assert "new answer" not in gp.get("/cases").get_data(as_text=True)
    amend = derm.get(f"/cases/{case_id}/review").get_data(as_text=True)
    assert 'name="amendment_reason"' in amend


def test_labelling_monitoring_and_admin_pages(embedded_stack, small_engine, ham_jpegs):
    app = embedded_stack.app()
    case_id = analysed_case(embedded_stack, small_engine, ham_jpegs[:1])
    admin = login(app, "admin1")
    r = admin.post("/labelling", data={"csrf_token": csrf(admin), "name": "pilot", "readers": "derm1, derm2",
                                       "cases": case_id, "blind_to_ai": "on"})
    assert r.status_code == 302
    set_url = r.headers["Location"]
    assert "derm1 (0 of 1)" in admin.get(set_url).get_data(as_text=True)
    derm = login(app, "derm1")
    assert "pilot" in derm.get("/labelling").get_data(as_text=True)
    label_url = f"{set_url}/cases/{case_id}"
    page = derm.get(label_url).get_data(as_text=True)
    assert "blind to the AI" in page and 'id="layer"' not in page and "The AI said" not in page
    r = derm.post(label_url, data=form(derm, diagnosis="bkl", pattern_PN="present"))
    assert r.status_code == 302
    assert "done" in derm.get(set_url).get_data(as_text=True)
    assert "Single reference" in admin.get(set_url).get_data(as_text=True)
    assert "Human-AI monitoring" in derm.get("/monitoring").get_data(as_text=True)
    # an administrator reassigns a claim from the admin page
    assert derm.post(f"/cases/{case_id}/claim", data={"csrf_token": csrf(derm)}).status_code == 302
    admin_page = admin.get("/admin").get_data(as_text=True)
    assert case_id in admin_page and "Reassign" in admin_page
    r = admin.post(f"/admin/cases/{case_id}/reassign", data={"csrf_token": csrf(admin), "dermatologist": "derm2"})
    assert r.status_code == 302
    assert "Case reassigned to derm2" in admin.get("/admin").get_data(as_text=True)
