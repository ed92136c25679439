"""Dermatologist review through the API: record, amend, answer the GP, on the audit chain."""

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, text

from services import audit, review_input
from services.diagnosis.engine import Engine
from services.models import Case, ExplanationRecord, Review

from tests.factories import (analysed_case, mask_data_url, review_body, small_model_file, token_for)


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


def claimed(stack, engine, images, who="derm1"):
    case_id = analysed_case(stack, engine, images)
    client = stack.app().test_client()
    h = token_for(client, who)
    assert client.post(f"/api/v1/cases/{case_id}/claim", headers=h).status_code == 200
    return client, h, case_id


def disagreeing(ai: dict) -> str:
    """A diagnosis the AI did not give (so recording it is an override)."""
    return "nv" if ai["says_bcc"] else "bcc"


def agreeing(ai: dict) -> str:
    return ai["diagnosis"] or ("bcc" if ai["says_bcc"] else "nv")


def test_review_loop_answers_the_gp_and_joins_the_chain(stack, small_engine, ham_jpegs):
    client, h, case_id = claimed(stack, small_engine, ham_jpegs[:2])
    state = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json
    ai, size = state["ai"], state["region_size"]
    assert ai and size and state["reviews"] == [] and state["claimed_by"] == "derm1"
    body = review_body(diagnosis=disagreeing(ai), override_reason="pearly rim and ulcer on the image",
                       patterns={**review_body()["patterns"], "AT": "present", "PN": "absent"},
                       regions={"AT": mask_data_url(size, (size // 4, size // 4, size // 2, size // 2))})
    r = client.post(f"/api/v1/cases/{case_id}/review", json=body, headers=h)
    assert r.status_code == 201, r.json
    first = r.json
    assert first["agreement"]["diagnosis"] is False and first["override_reason"]
    assert first["agreement"]["patterns"]["UL"] is None                     # unsure: no call
    assert first["agreement"]["patterns"]["AT"] == ("AT" in ai["patterns_present"])
    figures = first["agreement"]["regions"]["AT"]
    assert set(figures) == {"mean_inside", "mean_outside", "pointing_game", "relevance_mass"}
    assert 0 <= figures["relevance_mass"] <= 1
    assert first["regions"]["AT"]["area"] == pytest.approx(1 / 16, abs=0.01)
    assert first["ai"]["record"]["seq"] >= 1

    # the GP sees the answer, marked new until read
    gp = stack.app().test_client()
    gh = token_for(gp, "gp1")
    listed = {c["id"]: c for c in gp.get("/api/v1/cases", headers=gh).json["cases"]}
    assert listed[case_id]["new_answer"] is True and listed[case_id]["status"] == "reviewed"
    answer = gp.get(f"/api/v1/cases/{case_id}", headers=gh).json["answer"]
    assert answer["management"] == "biopsy" and answer["message"].startswith("Likely BCC")
    assert gp.get("/api/v1/cases", headers=gh).json["cases"][0]["new_answer"] is False
    assert "reviews" not in gp.get(f"/api/v1/cases/{case_id}/review", headers=gh).json

    # an amendment needs a reason, is a new record pointing at the earlier one
    again = review_body(diagnosis=agreeing(ai), management="urgent_two_week_wait")
    r = client.post(f"/api/v1/cases/{case_id}/review", json=again, headers=h)
    assert r.status_code == 422 and r.json["field"] == "amendment_reason"
    r = client.post(f"/api/v1/cases/{case_id}/review", json={**again, "amendment_reason": "histology back"},
                    headers=h)
    assert r.status_code == 201, r.json
    assert r.json["amends"] == first["id"] and r.json["agreement"]["diagnosis"] is True
    state = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json
    assert [x["id"] for x in state["reviews"]] == [first["id"], r.json["id"]]
    assert state["current"] == r.json["id"]
    answer = gp.get(f"/api/v1/cases/{case_id}", headers=gh).json["answer"]
    assert answer["amended"] and answer["management"] == "urgent_two_week_wait"

    rt = stack.runtime()
    with rt.read() as s:
        records = s.scalars(select(ExplanationRecord).where(ExplanationRecord.case_id == case_id)
                            .order_by(ExplanationRecord.seq)).all()
        assert [x.kind for x in records] == ["explanation", "explanation", "review", "review"]
        import json
        last = json.loads(records[-1].payload)
        assert last["amends"] == {"review_id": first["id"], "record_hash": records[-2].record_hash}
        assert {a["seq"] for a in last["answers"]} == {records[0].seq, records[1].seq}
        assert last["decision"]["management"] == "urgent_two_week_wait"
        report = audit.verify(s, rt.store)
    assert report.ok and report.records == 4 and report.objects == 2 + 1   # a map array per image, 1 region
    # the drawn region is served back, and is the mask that was sent
    png = client.get(f"/api/v1/cases/{case_id}/reviews/{first['id']}/regions/AT", headers=h).data
    assert review_input.read_mask(png).mean() == pytest.approx(1 / 16, abs=0.01)


def test_reviews_are_append_only_and_a_region_swap_is_detected(embedded_stack, small_engine, ham_jpegs):
    client, h, case_id = claimed(embedded_stack, small_engine, ham_jpegs[:1])
    size = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json["region_size"]
    ai = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json["ai"]
    body = review_body(diagnosis=agreeing(ai), patterns={**review_body()["patterns"], "BO": "present"},
                       regions={"BO": mask_data_url(size, (0, 0, size // 3, size // 3))})
    created = client.post(f"/api/v1/cases/{case_id}/review", json=body, headers=h).json
    rt = embedded_stack.runtime()
    for stmt in ("UPDATE reviews SET message = 'changed'", "DELETE FROM reviews"):
        with pytest.raises(Exception, match="append-only"):
            with rt.engine.begin() as c:
                c.execute(text(stmt))
    key = f"regions/{created['id']}/BO.png"
    rt.store.put(key, review_input.mask_png(np.ones((size, size), bool)), "image/png")
    with rt.read() as s:
        report = audit.verify(s, rt.store)
    assert not report.ok and "region mask for BO altered" in report.first_broken["problem"]


def test_bad_reviews_name_the_field_and_store_nothing(stack, small_engine, ham_jpegs):
    client, h, case_id = claimed(stack, small_engine, ham_jpegs[:1])
    state = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json
    ai, size = state["ai"], state["region_size"]
    patterns = review_body()["patterns"]
    region = mask_data_url(size, (1, 1, 9, 9))
    cases = [
        ({"diagnosis": "bcc"}, "patterns"),
        (review_body(diagnosis="cancer"), "diagnosis"),
        (review_body(diagnosis="other"), "diagnosis_other"),
        (review_body(patterns={**patterns, "UL": "maybe"}), "patterns.UL"),
        (review_body(patterns={k: v for k, v in patterns.items() if k != "SW"}), "patterns.SW"),
        (review_body(patterns={**patterns, "XX": "present"}), "patterns.XX"),
        (review_body(management="wait and see"), "management"),
        (review_body(regions={"AT": region}), "regions.AT"),                 # AT not called present
        (review_body(patterns={**patterns, "AT": "present"}, regions={"AT": "data:image/png;base64,AAAA"}),
         "regions.AT"),
        (review_body(patterns={**patterns, "AT": "present"}, regions={"AT": mask_data_url(size, (0, 0, 0, 0))}),
         "regions.AT"),
        (review_body(diagnosis=disagreeing(ai), override_reason="", patterns={**patterns, "AT": "present"},
                     regions={"AT": region}), "override_reason"),
        (review_body(message="x" * 5000), "message"),
    ]
    for body, field in cases:
        r = client.post(f"/api/v1/cases/{case_id}/review", json=body, headers=h)
        assert r.status_code == 422 and r.json["field"] == field, (field, r.json)
    r = client.post(f"/api/v1/cases/{case_id}/review", data="not json", headers=h)
    assert r.status_code == 422 and r.json["field"] == "body"
    rt = stack.runtime()
    with rt.read() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 0
        assert s.get(Case, case_id).status == "claimed"
    assert stored_regions(rt.store) == []


def stored_regions(store) -> list[str]:
    if hasattr(store, "root"):
        return [str(p) for p in store.root.rglob("regions/*")]
    return [o.object_name for o in store.client.list_objects(store.bucket, prefix="regions/", recursive=True)]


def test_who_may_review_and_read(embedded_stack, small_engine, ham_jpegs):
    stack = embedded_stack
    case_id = analysed_case(stack, small_engine, ham_jpegs[:1])
    c = stack.app().test_client()
    derm1, derm2, gp1, gp2 = (token_for(c, u) for u in ("derm1", "derm2", "gp1", "gp2"))
    auditor, admin = token_for(c, "auditor1"), token_for(c, "admin1")
    url = f"/api/v1/cases/{case_id}/review"
    assert c.post(url, json=review_body(), headers=derm1).json["error"] == "conflict"      # not claimed
    assert c.post(f"/api/v1/cases/{case_id}/claim", headers=derm1).status_code == 200
    assert c.post(url, json=review_body(), headers=derm2).status_code == 409                # not theirs
    assert c.post(url, json=review_body(), headers=gp1).status_code == 403
    assert c.post(url, json=review_body(), headers=admin).status_code == 403
    assert c.post(url, json=review_body()).status_code == 401
    assert c.get(url, headers=gp2).status_code == 404                 # another GP's case: not disclosed
    assert c.get(url, headers=admin).status_code == 403
    assert c.get(url, headers=auditor).status_code == 200
    assert c.post(f"/api/v1/cases/{case_id}/release", headers=derm2).status_code == 409
    # an administrator hands the claim to derm2, who then reviews it
    r = c.post(f"/api/v1/cases/{case_id}/reassign", json={"dermatologist": "gp1"}, headers=admin)
    assert r.status_code == 422 and r.json["field"] == "dermatologist"
    assert c.post(f"/api/v1/cases/{case_id}/reassign", json={"dermatologist": "derm2"},
                  headers=derm1).status_code == 403
    assert c.post(f"/api/v1/cases/{case_id}/reassign", json={"dermatologist": "derm2"},
                  headers=admin).json["claimed_by"] == "derm2"
    ai = c.get(url, headers=derm2).json["ai"]
    assert c.post(url, json=review_body(diagnosis=agreeing(ai)), headers=derm1).status_code == 409
    assert c.post(url, json=review_body(diagnosis=agreeing(ai)), headers=derm2).status_code == 201
    assert c.post(f"/api/v1/cases/{case_id}/release", headers=derm2).status_code == 409   # reviewed
    assert c.post(f"/api/v1/cases/{case_id}/reassign", json={"dermatologist": "derm1"},
                  headers=admin).status_code == 409


def test_release_puts_the_case_back_in_the_queue(embedded_stack, small_engine, ham_jpegs):
    client, h, case_id = claimed(embedded_stack, small_engine, ham_jpegs[:1])
    assert case_id not in [e["case_id"] for e in client.get("/api/v1/queue", headers=h).json["queue"]]
    assert client.post(f"/api/v1/cases/{case_id}/release", headers=h).json["status"] == "analysed"
    assert case_id in [e["case_id"] for e in client.get("/api/v1/queue", headers=h).json["queue"]]


def test_viewer_layers_are_the_stored_maps(embedded_stack, small_engine, ham_jpegs):
    client, h, case_id = claimed(embedded_stack, small_engine, ham_jpegs[:1])
    state = client.get(f"/api/v1/cases/{case_id}/review", headers=h).json
    pid, size = state["ai"]["prediction_id"], state["region_size"]
    crop = Image.open(io.BytesIO(client.get(f"/api/v1/cases/{case_id}/predictions/{pid}/crop",
                                            headers=h).data))
    layer = Image.open(io.BytesIO(client.get(f"/api/v1/cases/{case_id}/predictions/{pid}/layers/BCC",
                                             headers=h).data))
    assert crop.size == layer.size == (size, size) and layer.mode == "RGBA"
    image_id = state["ai"]["image_id"]
    stored = client.get(f"/api/v1/cases/{case_id}/images/{image_id}", headers=h).data
    fresh = small_engine.analyse([stored])[0]
    bcc = next(m for m in fresh.maps if m.target == "BCC").normalised
    assert np.abs(np.asarray(layer)[..., 3] / 255 - bcc).max() <= 1 / 255 + 1e-6
    assert np.array_equal(np.asarray(crop), fresh.input_rgb)
    assert client.get(f"/api/v1/cases/{case_id}/predictions/{pid}/layers/XX", headers=h).status_code == 404
    # overlays are rendered on request from the same array (8-bit maps: within 2 levels)
    from services.diagnosis.render import overlay_png
    for target in ("BCC", "SW"):
        got = client.get(f"/api/v1/cases/{case_id}/predictions/{pid}/maps/{target}", headers=h).data
        m = next(x for x in fresh.maps if x.target == target).normalised
        want = Image.open(io.BytesIO(overlay_png(fresh.input_rgb, m)))
        diff = np.abs(np.asarray(Image.open(io.BytesIO(got)), int) - np.asarray(want, int))
        assert diff.max() <= 2
