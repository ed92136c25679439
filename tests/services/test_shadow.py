"""Shadow runs and the comparison: the shadow reads the champion's cases apart from them, and
a shadow shown non-inferior on reviewed cases is promoted without an override."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from sqlalchemy import func, select

from services import registry, shadow
from services.cli import main
from services.comparison import compare
from services.diagnosis import artifact
from services.diagnosis.engine import Engine
from services.models import Prediction, ShadowReading
from tests.factories import analysed_case, make_card, random_model, review_body, token_for
from tests.services.test_registry import MET


def twin_models(folder):
    """Two versions whose answers differ in the last decimals (a retrained twin)."""
    first, second = folder / "a.pt", folder / "b.pt"
    model = random_model(seed=1)
    artifact.save(model, make_card(version="1.0.0", metrics=MET), first)
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim == 1).add_(1e-4)
    artifact.save(model, make_card(version="1.1.0", metrics=MET), second)
    return first, second


def shadowed_cases(stack, tmp_path, bccs: list[bytes], naevi: list[bytes]) -> tuple[dict, dict, list[str]]:
    """A champion (1.0.0) and its twin as the shadow (1.1.0); each image a case the champion
    analysed, the shadow read and a dermatologist reviewed (BCC or naevus)."""
    rt = stack.runtime()
    first, second = twin_models(tmp_path)
    a = registry.register(rt, first, "ml-eng")[0]
    registry.promote(rt, a["id"], "make", "installation", override=True)
    b = registry.register(rt, second, "ml-eng")[0]
    registry.shadow(rt, b["id"], "ml-eng", "watch it on live cases")
    engine = Engine.load(first, "cpu")
    client = stack.app().test_client()
    derm = token_for(client, "derm1")
    cases = []
    for i, jpeg in enumerate(bccs + naevi):
        case_id = analysed_case(stack, engine, [jpeg], patient_pseudonym=f"S-{i}")
        assert shadow.read_case(rt, case_id, b["id"]) == "done"
        assert shadow.read_case(rt, case_id, b["id"]) == "skipped"       # once
        assert client.post(f"/api/v1/cases/{case_id}/claim", headers=derm).status_code == 200
        body = review_body(diagnosis="bcc" if i < len(bccs) else "nv", override_reason="histology")
        assert client.post(f"/api/v1/cases/{case_id}/review", headers=derm, json=body).status_code in (200, 201)
        cases.append(case_id)
    return a, b, cases


def test_the_shadow_reads_apart_and_is_promoted_on_evidence(make_product, ham_jpegs, tmp_path):
    stack = make_product("embedded", DERMATRIAGE_PROMOTION_MIN_REVIEWED=4)
    rt = stack.runtime()
    a, b, cases = shadowed_cases(stack, tmp_path, ham_jpegs[:3], ham_jpegs[4:7])   # three BCCs, three naevi
    client = stack.app().test_client()
    # apart: no prediction of the shadow, nothing of it on the case or in the queue
    with rt.read() as s:
        assert s.scalar(select(func.count()).select_from(ShadowReading)) == 6
        assert set(s.scalars(select(Prediction.model_version))) == {"1.0.0"}
    gp = token_for(client, "gp1")
    assert "1.1.0" not in client.get(f"/api/v1/cases/{cases[0]}", headers=gp).get_data(as_text=True)

    result = compare(rt, a["id"], b["id"], margin=0.02, min_reviewed=4)
    assert result["cases_both_read"] == 6
    assert (result["reviewed"]["cases"], result["reviewed"]["malignant"]) == (6, 3)
    tiers = result["tiers"]
    assert sum(sum(row.values()) for row in tiers["matrix"].values()) == 6
    assert tiers["agree"] + tiers["would_move_up"] + tiers["would_move_down"] == 6
    assert abs(result["reviewed"]["difference"]["value"]) < 0.05 and result["non_inferior"]
    assert len(result["disagreements"]) == 6 and result["disagreements"][0]["review"] in ("bcc", "nv")
    text = CliRunner().invoke(main, ["model", "compare", "1.0.0", "1.1.0"],
                              env={**stack.env, "DERMATRIAGE_PROMOTION_MIN_REVIEWED": "4"})
    assert text.exit_code == 0 and "6 cases both read" in text.output and "non-inferior: yes" in text.output

    done = registry.promote(rt, b["id"], "ml-eng", "non-inferior on 6 reviewed cases")
    assert done["action"] == "promote"                                   # no override needed
    gate = registry.events(rt)[0]["evidence"]["gate"]
    assert gate["passes"] and gate["comparison"]["non_inferior"]
    # a shadow reading for a version that is no longer the shadow is not taken
    assert shadow.read_case(rt, cases[0], b["id"]) == "skipped"


def test_a_shadow_needs_enough_reviewed_cases(make_product, tmp_path):
    stack = make_product("embedded")
    rt = stack.runtime()
    first, second = twin_models(tmp_path)
    a = registry.register(rt, first, "ml-eng")[0]
    registry.promote(rt, a["id"], "make", "installation", override=True)
    b = registry.register(rt, second, "ml-eng")[0]
    result = compare(rt, a["id"], b["id"], 0.02, 30)
    assert result["cases_both_read"] == 0 and not result["non_inferior"]
    assert shadow.request(rt, "nope") is False                           # no shadow: nothing asked
