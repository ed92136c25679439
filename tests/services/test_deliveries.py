"""Rest-hook notifications: a receiver that is down for ten minutes still gets every event,
once per event number, in order, signed so that it can check they came from us."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fhir.resources.bundle import Bundle
from sqlalchemy import select

from services import checkpoints, deliveries
from services.diagnosis.engine import Engine
from services.models import FhirNotification, utcnow
from tests.factories import fhir_post, referral_bundle, review_body, small_model_file, token_for
from tests.web.test_fhir import analyse


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    return Engine.load(small_model_file(tmp_path_factory.mktemp("model")), "cpu")


class Receiver:
    """An EHR's endpoint: answers 503 while ``down``, records what it accepted."""

    def __init__(self):
        self.down, self.got, self.tries = False, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.tries += 1
                if outer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def events(self) -> list[int]:
        out = []
        for _, body in self.got:
            status = json.loads(body)["entry"][0]["resource"]
            out += [int(e["eventNumber"]) for e in status["notificationEvent"]]
        return out


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def subscribe(client, gp, url, content="full-resource"):
    return fhir_post(client, gp, {
        "resourceType": "Subscription", "status": "requested", "topic":
        "https://fhir.dermatriage.org/SubscriptionTopic/report-final-or-amended",
        "channelType": {"system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type",
                        "code": "rest-hook"}, "endpoint": url, "content": content,
        "contentType": "application/fhir+json"}, "/fhir/Subscription")


def test_a_receiver_down_for_ten_minutes_gets_every_event_once_in_order(embedded_stack, small_engine,
                                                                        ham_jpegs, receiver):
    client = embedded_stack.app().test_client()
    gp, derm = token_for(client, "gp1"), token_for(client, "derm1")
    r = subscribe(client, gp, receiver.url)
    assert r.status_code == 201 and r.json["status"] == "active", r.get_data(as_text=True)
    assert client.get(r.headers["Location"].replace("http://localhost", ""), headers=gp).json["id"] == r.json["id"]
    r = fhir_post(client, gp, referral_bundle(ham_jpegs[:1]))
    case_id = r.json["entry"][1]["response"]["location"].split("/")[1]
    analyse(embedded_stack, small_engine, case_id)
    assert client.post(f"/api/v1/cases/{case_id}/claim", headers=derm).status_code == 200
    rt = embedded_stack.runtime()
    receiver.down = True
    assert client.post(f"/api/v1/cases/{case_id}/review", headers=derm, json=review_body()).status_code in (200, 201)
    assert client.post(f"/api/v1/cases/{case_id}/review", headers=derm,
                       json=review_body(amendment_reason="typo in the message")).status_code in (200, 201)
    # Ten minutes down, the workers' periodic delivery every 15 s: nothing accepted, few tries.
    start = utcnow()
    now = start
    while now < start + timedelta(minutes=10):
        deliveries.deliver_due(rt, now=now, base_url="http://dermatriage.test/")
        now += timedelta(seconds=15)
    assert receiver.got == [] and 5 <= receiver.tries <= 12
    receiver.down = False
    back = now
    while now < back + timedelta(minutes=6) and receiver.events() != [1, 2]:
        deliveries.deliver_due(rt, now=now, base_url="http://dermatriage.test/")
        now += timedelta(seconds=15)
    assert receiver.events() == [1, 2]                  # both, once each, in order
    assert now - back <= timedelta(minutes=5, seconds=15)
    for _ in range(3):                                  # nothing is sent again
        deliveries.deliver_due(rt, now=now + timedelta(hours=1), base_url="http://dermatriage.test/")
    assert receiver.events() == [1, 2]
    with rt.read() as s:
        rows = s.scalars(select(FhirNotification).order_by(FhirNotification.event_number)).all()
        assert [(n.report_status, n.report_version, n.next_attempt_at) for n in rows] == [
            ("final", 3, None), ("amended", 4, None)]
    public = checkpoints.public_pem(checkpoints.public_key(rt))
    for (headers, body), status in zip(receiver.got, ("final", "amended")):
        bundle = Bundle.model_validate_json(body)
        assert bundle.type == "subscription-notification"
        report = json.loads(body)["entry"][1]["resource"]
        assert report["resourceType"] == "DiagnosticReport" and report["status"] == status
        sig = headers[deliveries.HEADER.lower()]
        at = int(dict(p.split("=", 1) for p in sig.split(","))["t"])
        assert deliveries.verify_signature(public, sig, body, now=at)
        assert not deliveries.verify_signature(public, sig, body.replace(b"final", b"FINAL"), now=at)
        assert not deliveries.verify_signature(public, sig, body, now=at + 3600)   # a replay, later


def test_subscriptions_take_only_what_we_do(embedded_stack, receiver):
    client = embedded_stack.app().test_client()
    gp = token_for(client, "gp1")
    ok = subscribe(client, gp, receiver.url, content="id-only")
    assert ok.status_code == 201
    bad = [({"topic": "http://example.org/other"}, "Subscription.topic"),
           ({"channelType": {"code": "websocket"}}, "Subscription.channelType"),
           ({"content": "everything"}, "Subscription.content"),
           ({"endpoint": "ftp://example.org/x"}, "Subscription.endpoint"),
           ({"filterBy": [{"filterParameter": "status", "value": "final"}]}, "Subscription.filterBy")]
    for change, expression in bad:
        body = {"resourceType": "Subscription", "status": "requested", "topic":
                "https://fhir.dermatriage.org/SubscriptionTopic/report-final-or-amended",
                "channelType": {"code": "rest-hook"}, "endpoint": receiver.url, **change}
        r = fhir_post(client, gp, body, "/fhir/Subscription")
        assert r.status_code == 422 and r.json["issue"][0]["expression"] == [expression], (change, r.json)
    derm = token_for(client, "derm1")
    assert fhir_post(client, derm, {"resourceType": "Subscription"}, "/fhir/Subscription").status_code == 403
    sub_id = ok.json["id"]
    assert client.get(f"/fhir/Subscription/{sub_id}", headers=token_for(client, "gp2")).status_code == 404
    listed = client.get("/fhir/Subscription", headers=gp).json
    assert [e["resource"]["id"] for e in listed["entry"]] == [sub_id]
    assert client.delete(f"/fhir/Subscription/{sub_id}", headers=gp).status_code == 204
    assert client.get("/fhir/Subscription", headers=gp).json.get("entry", []) == []
