"""The referral queue over HTTP: keyset pages, filters, counts, and named errors."""

from datetime import timedelta

from services.models import utcnow
from tests.factories import login, queued_case, token_for


def test_queue_api_pages_filters_and_counts(stack):
    rt = stack.runtime()
    now = utcnow()
    for i, p in enumerate([0.95, 0.9, 0.6, 0.5, 0.1, 0.05, 0.02]):
        queued_case(rt, f"q{i}", p, now - timedelta(minutes=i))
    app = stack.app()
    client = app.test_client()
    derm = token_for(client, "derm1")
    first = client.get("/api/v1/queue?limit=3", headers=derm).json
    assert [e["position"] for e in first["queue"]] == [1, 2, 3] and first["next"]
    second = client.get(f"/api/v1/queue?limit=3&after={first['next']}", headers=derm).json
    third = client.get(f"/api/v1/queue?limit=3&after={second['next']}", headers=derm).json
    assert [e["position"] for e in second["queue"] + third["queue"]] == [4, 5, 6, 7]
    assert third["next"] is None and second["as_of"] == first["as_of"]
    everything = client.get("/api/v1/queue", headers=derm).json["queue"]
    assert [e["case_id"] for e in first["queue"] + second["queue"] + third["queue"]] == \
        [e["case_id"] for e in everything]
    scores = [e["risk_score"] for e in everything]
    assert scores == sorted(scores, reverse=True)
    low = client.get("/api/v1/queue?tier=low", headers=derm).json["queue"]
    assert low and all(e["tier"] == "low" for e in low)
    counts = client.get("/api/v1/queue/counts", headers=derm).json["counts"]
    assert sum(counts.values()) == 7 and counts["low"] == len(low)
    for query, field in (("tier=soon", "tier"), ("after=xyz", "after"), ("limit=ten", "limit"),
                         ("limit=0", "limit"), ("ai_available=perhaps", "ai_available")):
        bad = client.get(f"/api/v1/queue?{query}", headers=derm)
        assert bad.status_code == 422 and bad.json["field"] == field, query
    page = login(app, "derm1").get("/queue?tier=low")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "low 3" in html.replace("</span>", "").replace('<span class="tier-low">', "")
