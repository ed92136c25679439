"""The model registry: every transition, the refused ones too, and workers that follow the
champion without a restart."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DatabaseError

from services import analysis, registry
from services.diagnosis import artifact
from services.errors import Conflict, NotFound, Unavailable, ValidationError
from services.models import ModelEvent, ModelVersion
from tests.factories import make_card, random_model

MET = {"out_of_fold": {"BCC": {"auc": 0.97}, "diagnoses": {"mel": {"auc": 0.91}}, "PN": {"auc": 0.88},
                       "AT": {"auc": 0.93}, "balanced_accuracy_7": 0.71}}


def built(folder, version: str, seed: int, metrics: dict | None = None):
    path = folder / f"model-{version}.pt"
    artifact.save(random_model(seed=seed), make_card(version=version, metrics=metrics or {}), path)
    return path


@pytest.fixture
def rt(stack):
    return stack.runtime()


def test_register_copies_the_artifact_once_and_refuses_a_mismatched_pair(rt, tmp_path):
    path = built(tmp_path, "1.0.0", 1, MET)
    v, created = registry.register(rt, path, "ml-eng")
    assert created and v["status"] == "candidate" and v["evidence"]["out_of_fold"]["BCC"]["auc"] == 0.97
    assert rt.store.get(f"models/{v['weights_sha256']}.pt") == path.read_bytes()
    again, created = registry.register(rt, path, "ml-eng")
    assert not created and again["id"] == v["id"]
    (tmp_path / "other").mkdir()
    other = built(tmp_path / "other", "1.0.0", 2)
    with pytest.raises(Conflict, match="immutable"):
        registry.register(rt, other, "ml-eng")                 # same name and version, other weights
    card = artifact.card_path(path)
    doctored = json.loads(card.read_text())
    doctored["weights_sha256"] = "0" * 64
    card.write_text(json.dumps(doctored))
    with pytest.raises(ValidationError, match="do not belong together"):
        registry.register(rt, path, "ml-eng")
    with pytest.raises(ValidationError, match="no model file"):
        registry.register(rt, tmp_path / "nope.pt", "ml-eng")
    assert [e["action"] for e in registry.events(rt)] == ["register"]


def test_promotion_is_gated_on_evidence_and_rollback_returns_to_the_champion_before(rt, tmp_path):
    weak = registry.register(rt, built(tmp_path, "1.0.0", 1), "ml-eng")[0]     # no out-of-fold figures
    good = registry.register(rt, built(tmp_path, "2.0.0", 2, MET), "ml-eng")[0]
    with pytest.raises(Conflict, match="no champion"):
        registry.rollback(rt, "ops", "nothing yet")
    with pytest.raises(ValidationError, match="gate refuses .* not measured"):
        registry.promote(rt, weak["id"], "ml-eng", "first model")
    with pytest.raises(ValidationError, match="needs a reason"):
        registry.promote(rt, good["id"], "ml-eng", "  ")
    with pytest.raises(NotFound):
        registry.promote(rt, "9.9.9", "ml-eng", "unknown")
    first = registry.promote(rt, weak["id"], "ml-eng", "bootstrap: the only model", override=True)
    assert first["action"] == "override" and registry.champion(rt).id == weak["id"]
    with pytest.raises(Conflict, match="first champion"):
        registry.rollback(rt, "ops", "no previous")
    with pytest.raises(ValidationError, match="not shown non-inferior .* 0 reviewed cases"):
        registry.promote(rt, "test-model 2.0.0", "ml-eng", "better on every floor")
    second = registry.promote(rt, "test-model 2.0.0", "ml-eng", "floors met; no live cases yet", override=True)
    assert second["action"] == "override" and second["previous"] == weak["id"]
    assert {v["version"]: v["status"] for v in registry.versions(rt)} == {"1.0.0": "retired", "2.0.0": "champion"}
    back = registry.rollback(rt, "ops", "drift after promotion")
    assert back["id"] == weak["id"] and registry.champion(rt).id == weak["id"]
    with pytest.raises(Conflict, match="first champion"):
        registry.rollback(rt, "ops", "again")                   # the stack is empty below the first
    log = registry.events(rt)
    assert [e["action"] for e in log] == ["rollback", "override", "override", "register", "register"]
    gate = log[1]["evidence"]["gate"]
    assert not gate["passes"] and gate["figures"]["BCC AUC"] == {"value": 0.97, "floor": 0.95}
    assert gate["comparison"]["reviewed"]["cases"] == 0
    assert log[0]["by"] == "ops" and log[0]["reason"] == "drift after promotion"
    with rt.transaction() as s:       # the log is append-only, in the database itself
        with pytest.raises(DatabaseError):
            s.execute(update(ModelEvent).values(reason="rewritten"))
        s.rollback()
    with rt.read() as s:
        assert s.scalar(select(ModelEvent.reason).where(ModelEvent.action == "rollback")) == "drift after promotion"


def test_a_corrupted_artifact_is_never_promoted_and_a_concurrent_promotion_loses(rt, tmp_path, monkeypatch):
    a = registry.register(rt, built(tmp_path, "1.0.0", 1, MET), "ml-eng")[0]
    b = registry.register(rt, built(tmp_path, "2.0.0", 2, MET), "ml-eng")[0]
    c = registry.register(rt, built(tmp_path, "3.0.0", 3, MET), "ml-eng")[0]
    rt.store.put(f"models/{c['weights_sha256']}.pt", b"not the weights", "application/octet-stream")
    with pytest.raises(ValidationError, match="corrupted"):
        registry.promote(rt, c["id"], "ml-eng", "try")
    registry.promote(rt, a["id"], "ml-eng", "first")
    # Between the gate and the switch, somebody else promotes: the slower one is refused.
    real = registry._verified

    def meanwhile(rt_, v):
        real(rt_, v)
        monkeypatch.setattr(registry, "_verified", real)
        registry.promote(rt, b["id"], "colleague", "at the same moment", override=True)
    monkeypatch.setattr(registry, "_verified", meanwhile)
    with pytest.raises(Conflict, match="meanwhile"):
        registry.promote(rt, b["id"], "ml-eng", "mine", override=True)
    assert registry.champion(rt).id == b["id"]
    with rt.read() as s:
        assert s.scalar(select(text("count(*)")).select_from(ModelVersion).where(
            ModelVersion.status == "champion")) == 1


def test_workers_follow_the_champion_without_a_restart(rt, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CHAMPION_TTL_S", 0.0)
    a = registry.register(rt, built(tmp_path, "1.0.0", 1, MET), "ml-eng")[0]
    b = registry.register(rt, built(tmp_path, "2.0.0", 2, MET), "ml-eng")[0]
    registry.promote(rt, a["id"], "ml-eng", "first")
    with analysis.serving(rt) as first:
        assert (first.model.version, first.key) == ("1.0.0", a["weights_sha256"])
        registry.promote(rt, b["id"], "ml-eng", "second", override=True)
        with analysis.serving(rt) as second:           # a job that starts now gets the new one
            assert second.model.version == "2.0.0"
        assert first.retiring and not first.batcher._closed   # the job in flight finishes on its model
    assert first.batcher._closed                              # then the old one closes
    registry.rollback(rt, "ops", "back")
    with analysis.serving(rt) as third:
        assert third.model.version == "1.0.0"
    # the cached artifact is checked: a corrupted store object is refused, never served
    cache = rt.settings.data_dir / "model-cache" / f"{b['weights_sha256']}.pt"
    cache.unlink()
    rt.store.put(f"models/{b['weights_sha256']}.pt", b"garbage", "application/octet-stream")
    with pytest.raises(Unavailable, match="corrupted"):
        registry.fetch(rt, registry.Champion(b["id"], "test-model", "2.0.0", b["weights_sha256"],
                                             f"models/{b['weights_sha256']}.pt",
                                             f"models/{b['weights_sha256']}.card.json"))


def test_a_job_starts_only_with_the_champion_of_that_moment(stack, tmp_path, monkeypatch, ham_jpegs):
    import io

    from services.models import AnalysisJob, Prediction
    from tests.factories import post_case, token_for
    monkeypatch.setattr(registry, "CHAMPION_TTL_S", 3600.0)          # this worker's view goes stale
    rt, elsewhere = stack.runtime(), stack.runtime()
    a = registry.register(rt, built(tmp_path, "1.0.0", 1, MET), "ml-eng")[0]
    b = registry.register(rt, built(tmp_path, "2.0.0", 2, MET), "ml-eng")[0]
    registry.promote(rt, a["id"], "ml-eng", "first", override=True)
    with analysis.serving(rt) as warm:
        assert warm.model.version == "1.0.0"
    registry.promote(elsewhere, b["id"], "ml-eng", "from another machine", override=True)
    assert registry.champion(rt).id == a["id"]                       # still cached here
    client = stack.app().test_client()
    r = post_case(client, token_for(client, "gp1"), images=[("images", (io.BytesIO(ham_jpegs[0]), "a.jpg"))])
    with rt.read() as s:
        job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == r.json["id"]))
    assert analysis.analyse_with_champion(rt, job_id) == "done"
    with rt.read() as s:
        assert set(s.scalars(select(Prediction.model_version))) == {"2.0.0"}
