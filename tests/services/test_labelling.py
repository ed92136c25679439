"""Labelling sets: blind, independent readers; the merged reference; the export for training."""

import csv
import json

import pytest
from click.testing import CliRunner

from services import audit
from services.cli import main
from services.diagnosis.engine import Engine
from services.modelling.datasets import load_dataset
from services.users import create_user

from tests.factories import PASSWORD, analysed_case, mask_data_url, review_body, small_model_file, token_for


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


def labels(diagnosis="bcc", **calls):
    patterns = {c: "unsure" for c in ("PN", "UL", "BO", "MG", "ML", "SW", "AT")}
    patterns.update(calls)
    body = review_body(diagnosis=diagnosis, patterns=patterns)
    body.pop("management")
    return body


def test_blind_readers_merged_reference_and_export(stack, small_engine, ham_jpegs, tmp_path):
    rt = stack.runtime()
    with rt.transaction() as s:
        create_user(s, "derm3", PASSWORD, "dermatologist")
    cases = [analysed_case(stack, small_engine, [img]) for img in ham_jpegs[:3]]
    c = stack.app().test_client()
    admin, d1, d2, d3 = (token_for(c, u) for u in ("admin1", "derm1", "derm2", "derm3"))
    gp, auditor = token_for(c, "gp1"), token_for(c, "auditor1")

    r = c.post("/api/v1/labelling/sets", json={"name": "ul-pilot", "readers": ["derm1", "gp1"], "cases": cases},
               headers=admin)
    assert r.status_code == 422 and r.json["field"] == "readers"
    assert c.post("/api/v1/labelling/sets", json={"name": "x", "readers": ["derm1", "derm2"]},
                  headers=d1).status_code == 403
    r = c.post("/api/v1/labelling/sets", json={"name": "ul-pilot", "readers": ["derm1", "derm2", "derm3"],
                                               "cases": cases[:2]}, headers=admin)
    assert r.status_code == 201, r.json
    set_id = r.json["id"]
    assert c.post("/api/v1/labelling/sets/ul-pilot/cases", json={"cases": cases}, headers=admin).json["cases"] \
        == sorted(cases)
    assert c.post("/api/v1/labelling/sets", json={"name": "ul-pilot", "readers": ["derm1", "derm2"]},
                  headers=admin).status_code == 409

    size = c.get(f"/api/v1/labelling/sets/{set_id}/cases/{cases[0]}", headers=d1).json["region_size"]
    region = mask_data_url(size, (0, 0, size // 2, size // 2))
    votes = {  # case -> per reader (derm1, derm2, derm3): UL call, diagnosis
        cases[0]: [("present", "bcc"), ("present", "bcc"), ("absent", "bcc")],
        cases[1]: [("absent", "nv"), ("absent", "nv"), ("present", "bkl")],
        cases[2]: [("present", "bcc"), ("unsure", "bcc"), ("present", "akiec")],
    }
    for case_id, calls in votes.items():
        for h, (ul, dx) in zip((d1, d2, d3), calls):
            body = labels(dx, UL=ul)
            if ul == "present" and h is d1:
                body["regions"] = {"UL": region}
            r = c.post(f"/api/v1/labelling/sets/{set_id}/cases/{case_id}/labels", json=body, headers=h)
            assert r.status_code == 201, r.json
    # nobody but the set's readers labels; an amendment needs a reason
    assert c.post(f"/api/v1/labelling/sets/{set_id}/cases/{cases[0]}/labels", json=labels(),
                  headers=gp).status_code == 403
    r = c.post(f"/api/v1/labelling/sets/{set_id}/cases/{cases[0]}/labels", json=labels(UL="present"), headers=d2)
    assert r.status_code == 422 and r.json["field"] == "amendment_reason"

    # blind to each other: a reader sees their own labels only, everywhere
    mine = c.get(f"/api/v1/labelling/sets/{set_id}/cases/{cases[1]}", headers=d2).json["my_labels"]
    assert mine["patterns"]["UL"] == "absent" and mine["diagnosis"] == "nv"
    seen = c.get(f"/api/v1/cases/{cases[1]}/review", headers=d2).json["reviews"]
    assert [x["reviewer"] for x in seen] == ["derm2"]
    assert "readers" not in c.get(f"/api/v1/labelling/sets/{set_id}", headers=d2).json
    assert c.get(f"/api/v1/labelling/sets/{set_id}/consensus", headers=d1).status_code == 403
    assert c.get(f"/api/v1/labelling/sets/{set_id}", headers=gp).status_code == 403
    assert len(c.get(f"/api/v1/cases/{cases[1]}/review", headers=auditor).json["reviews"]) == 3

    merged = c.get(f"/api/v1/labelling/sets/{set_id}/consensus", headers=admin).json
    ul = merged["patterns"]["UL"]
    assert ul["reference"][cases[0]]["present"] is True and ul["reference"][cases[1]]["present"] is False
    assert ul["labelled_cases"] == 3 and set(ul["readers"]) == {"derm1", "derm2", "derm3"}
    assert merged["diagnosis"]["reference"][cases[1]]["diagnosis"] == "nv"
    assert merged["patterns"]["PN"]["labelled_cases"] == 0

    runner = CliRunner()
    result = runner.invoke(main, ["labels", "consensus", "--set", "ul-pilot", "--json"], env=stack.env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["patterns"]["UL"]["reference"] == ul["reference"]
    result = runner.invoke(main, ["labels", "consensus", "--set", "nope"], env=stack.env)
    assert result.exit_code != 0 and "no labelling set 'nope'" in result.output

    out = tmp_path / "export"
    result = runner.invoke(main, ["labels", "export", "--set", set_id, "--out", str(out)], env=stack.env)
    assert result.exit_code == 0, result.output
    rows = {r["group"]: r for r in csv.DictReader(open(out / "labels.csv"))}
    assert rows[cases[0]]["UL"] == "1" and rows[cases[1]]["UL"] == "0" and rows[cases[1]]["dx"] == "nv"
    assert rows[cases[0]]["PN"] == "" and rows[cases[0]]["bcc"] == "1"
    samples = {s.group: s for s in load_dataset(out)}
    assert samples[f"csv:{cases[0]}"].UL == 1 and samples[f"csv:{cases[1]}"].UL == 0
    assert samples[f"csv:{cases[0]}"].PN is None
    # derm1 drew UL on two cases; only where the reference says present does a mask survive
    assert sorted(p.name.split("_")[1] for p in (out / "masks").iterdir()) == ["UL.png", "UL.png"]
    assert json.loads((out / "manifest.json").read_text())["images"] == 3
    with rt.read() as s:
        assert audit.verify(s, rt.store).ok


def test_a_set_blind_to_the_ai_hides_its_analysis(embedded_stack, small_engine, ham_jpegs):
    stack = embedded_stack
    case_id = analysed_case(stack, small_engine, ham_jpegs[:1])
    c = stack.app().test_client()
    admin, d1 = token_for(c, "admin1"), token_for(c, "derm1")
    set_id = c.post("/api/v1/labelling/sets", json={"name": "blind", "readers": ["derm1", "derm2"],
                                                    "cases": [case_id], "blind_to_ai": True}, headers=admin).json["id"]
    view = c.get(f"/api/v1/labelling/sets/{set_id}/cases/{case_id}", headers=d1).json
    assert view["ai"] is None and "predictions" not in view and view["region_size"]
    r = c.post(f"/api/v1/labelling/sets/{set_id}/cases/{case_id}/labels", json=labels("mel"), headers=d1)
    assert r.status_code == 201        # no override reason: labelling is not a clinical decision
    mine = c.get(f"/api/v1/labelling/sets/{set_id}/cases/{case_id}", headers=d1).json["my_labels"]
    assert mine["ai"] is None and mine["agreement"] is None
