import io

import pytest
from click.testing import CliRunner

from services.config import ConfigurationError, Settings
from services.models import User
from services.users import issue_token
from tests.factories import (ACCOUNTS, PASSWORD, FakeClock, jpeg_with_gps, login, mark_queued, post_case,
                             token_for)

ROLES = ["gp1", "gp2", "derm1", "auditor1", "admin1", None]


@pytest.fixture
def world(stack):
    """A case of gp1's, already analysed and queued, and a client per role."""
    app = stack.app()
    client = app.test_client()
    headers = {name: token_for(client, name) for name in ACCOUNTS}
    r = post_case(client, headers["gp1"])
    assert r.status_code == 201
    case_id = r.json["id"]
    image_id = mark_queued(stack.runtime(), case_id)
    return {"client": client, "headers": headers, "case": case_id, "image": image_id, "stack": stack}


# endpoint -> expected status per caller (gp1 owns the case)
API = [
    ("GET", "/api/v1/cases", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/api/v1/cases/{case}", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/api/v1/cases/{case}/images/{image}", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/api/v1/queue", {"gp1": 403, "gp2": 403, "derm1": 200, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/api/v1/audit/verify", {"gp1": 403, "gp2": 403, "derm1": 403, "auditor1": 200, "admin1": 403, None: 401}),
    ("POST", "/api/v1/cases", {"gp1": 201, "gp2": 201, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("POST", "/api/v1/cases/{case}/claim", {"gp1": 403, "gp2": 403, "derm1": 200, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/api/v1/cases/{case}/review", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("POST", "/api/v1/cases/{case}/review", {"gp1": 403, "gp2": 403, "derm1": 422, "auditor1": 403, "admin1": 403, None: 401}),
    ("POST", "/api/v1/cases/{case}/release", {"gp1": 403, "gp2": 403, "derm1": 200, "auditor1": 403, "admin1": 403, None: 401}),
    ("POST", "/api/v1/cases/{case}/reassign", {"gp1": 403, "gp2": 403, "derm1": 403, "auditor1": 403, "admin1": 422, None: 401}),
    ("GET", "/api/v1/cases/{case}/reviews/nope/regions/AT", {"gp1": 404, "gp2": 404, "derm1": 404, "auditor1": 404, "admin1": 403, None: 401}),
    ("GET", "/api/v1/cases/{case}/predictions/nope/crop", {"gp1": 404, "gp2": 404, "derm1": 404, "auditor1": 404, "admin1": 403, None: 401}),
    ("GET", "/api/v1/cases/{case}/predictions/nope/layers/BCC", {"gp1": 404, "gp2": 404, "derm1": 404, "auditor1": 404, "admin1": 403, None: 401}),
    ("GET", "/api/v1/labelling/sets", {"gp1": 403, "gp2": 403, "derm1": 200, "auditor1": 200, "admin1": 200, None: 401}),
    ("POST", "/api/v1/labelling/sets", {"gp1": 403, "gp2": 403, "derm1": 403, "auditor1": 403, "admin1": 422, None: 401}),
    ("GET", "/api/v1/labelling/sets/nope", {"gp1": 403, "gp2": 403, "derm1": 404, "auditor1": 404, "admin1": 404, None: 401}),
    ("GET", "/api/v1/labelling/sets/nope/consensus", {"gp1": 403, "gp2": 403, "derm1": 403, "auditor1": 404, "admin1": 404, None: 401}),
    ("POST", "/api/v1/labelling/sets/nope/cases/{case}/labels", {"gp1": 403, "gp2": 403, "derm1": 422, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/api/v1/monitoring", {"gp1": 403, "gp2": 403, "derm1": 200, "auditor1": 200, "admin1": 200, None: 401}),
    ("GET", "/api/v1/audit/access", {"gp1": 403, "gp2": 403, "derm1": 403, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/healthz", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 200, None: 200}),
    # FHIR (errors are OperationOutcomes) and DICOMweb
    ("GET", "/fhir/metadata", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 200, None: 200}),
    ("POST", "/fhir", {"gp1": 400, "gp2": 400, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/fhir/DiagnosticReport/{case}", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/DiagnosticReport/{case}/_history", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/DiagnosticReport/{case}/_history/1", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/DiagnosticReport?based-on=ServiceRequest/{case}", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/Provenance?target=DiagnosticReport/{case}", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/Provenance/{case}-1", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/ServiceRequest/{case}", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403, None: 401}),
    ("GET", "/fhir/Patient/nope", {"gp1": 404, "gp2": 404, "derm1": 404, "auditor1": 404, "admin1": 403, None: 401}),
    ("POST", "/fhir/Subscription", {"gp1": 400, "gp2": 400, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/fhir/Subscription", {"gp1": 200, "gp2": 200, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("GET", "/fhir/Subscription/nope", {"gp1": 404, "gp2": 404, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("DELETE", "/fhir/Subscription/nope", {"gp1": 404, "gp2": 404, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    ("POST", "/dicomweb/studies", {"gp1": 422, "gp2": 422, "derm1": 403, "auditor1": 403, "admin1": 403, None: 401}),
    # last: it ends the caller's tokens
    ("POST", "/api/v1/auth/logout", {"gp1": 200, "gp2": 200, "derm1": 200, "auditor1": 200, "admin1": 200, None: 401}),
]


def test_every_api_endpoint_for_every_role(world):
    client, headers = world["client"], world["headers"]
    for method, path, expected in API:
        for who in ROLES:
            url = path.format(case=world["case"], image=world["image"])
            h = headers.get(who, {})
            if method == "POST" and url.endswith("/cases"):
                r = post_case(client, h)
            else:
                r = client.open(url, method=method, headers=h)
            assert r.status_code == expected[who], (method, url, who, r.status_code, r.get_data(as_text=True)[:200])
            if r.status_code >= 400 and url.startswith("/fhir"):
                assert r.mimetype == "application/fhir+json" and r.json["issue"][0]["diagnostics"], (url, who)
            elif r.status_code >= 400:
                assert r.is_json and r.json["message"], (url, who)
            # the pages' security headers on every response, and no framing of any JSON
            assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Permissions-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Referrer-Policy"] == "no-referrer"
            if r.mimetype.endswith("json"):
                assert r.headers["Content-Security-Policy"] == "frame-ancestors 'none'", (url, r.mimetype)


def test_claim_twice_is_a_conflict(world):
    client, h = world["client"], world["headers"]
    url = f"/api/v1/cases/{world['case']}/claim"
    assert client.post(url, headers=h["derm1"]).status_code == 200
    r = client.post(url, headers=h["derm2"])
    assert r.status_code == 409 and "claimed" in r.json["message"]
    assert client.post("/api/v1/cases/nope/claim", headers=h["derm2"]).status_code == 404


PAGES = [
    ("/cases", {"gp1": 200, "derm1": 200, "auditor1": 200, "admin1": 403}),
    ("/cases/new", {"gp1": 200, "derm1": 403, "auditor1": 403, "admin1": 403}),
    ("/cases/{case}", {"gp1": 200, "gp2": 404, "derm1": 200, "auditor1": 200, "admin1": 403}),
    ("/queue", {"gp1": 403, "derm1": 200, "auditor1": 403, "admin1": 403}),
    ("/audit", {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 403}),
    ("/admin", {"gp1": 403, "derm1": 403, "auditor1": 403, "admin1": 200}),
    ("/cases/{case}/review", {"gp1": 403, "derm1": 302, "auditor1": 403, "admin1": 403}),
    ("/labelling", {"gp1": 403, "derm1": 200, "auditor1": 200, "admin1": 200}),
    ("/monitoring", {"gp1": 403, "derm1": 200, "auditor1": 200, "admin1": 200}),
    ("/audit/access", {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 403}),
    ("/account/password", {"gp1": 200, "derm1": 200, "auditor1": 200, "admin1": 200}),
    ("/models", {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 200}),
    ("/models/compare?champion=x&shadow=y", {"gp1": 403, "derm1": 403, "auditor1": 404, "admin1": 404}),
]


def test_every_page_for_every_role(world):
    app = world["stack"].app()
    for path, expected in PAGES:
        url = path.format(case=world["case"])
        anon = app.test_client().get(url)
        assert anon.status_code == 302 and "/login" in anon.headers["Location"]
        for who, status in expected.items():
            r = login(app, who).get(url)
            assert r.status_code == status, (url, who)
            assert r.headers["Permissions-Policy"] and r.headers["X-Frame-Options"] == "DENY"
            if r.mimetype == "text/html":
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_forms_without_csrf_token_are_refused(world):
    app = world["stack"].app()
    client = app.test_client()
    r = client.post("/login", data={"username": "gp1", "password": PASSWORD})
    assert r.status_code == 400 and "security token" in r.get_data(as_text=True)
    gp = login(app, "gp1")
    r = gp.post("/cases/new", data={"patient_pseudonym": "x", "age": "50", "sex": "male",
                                    "body_site": "back", "dermoscopic": (io.BytesIO(jpeg_with_gps()), "a.jpg")},
                content_type="multipart/form-data")
    assert r.status_code == 400
    r = gp.post("/cases/new", data={"patient_pseudonym": "x", "age": "50", "sex": "male",
                                    "body_site": "back", "csrf_token": "forged",
                                    "dermoscopic": (io.BytesIO(jpeg_with_gps()), "a.jpg")},
                content_type="multipart/form-data")
    assert r.status_code == 400
    with gp.session_transaction() as sess:
        csrf = sess["csrf"]
    r = gp.post("/cases/new", data={"patient_pseudonym": "x", "age": "50", "sex": "male",
                                    "body_site": "back", "csrf_token": csrf,
                                    "dermoscopic": (io.BytesIO(jpeg_with_gps()), "a.jpg")},
                content_type="multipart/form-data")
    assert r.status_code == 302
    derm = login(app, "derm1")
    assert derm.post(f"/cases/{world['case']}/claim").status_code == 400


def test_expired_forged_and_foreign_tokens_are_refused(embedded_stack):
    clock = FakeClock()
    short = embedded_stack.with_env(TOKEN_MAX_AGE_S=1)
    client = short.app(clock=clock).test_client()
    h = token_for(client, "gp1")
    assert client.get("/api/v1/cases", headers=h).status_code == 200
    clock.advance(2.1)
    r = client.get("/api/v1/cases", headers=h)
    assert r.status_code == 401 and r.json["message"] == "token expired"
    client = embedded_stack.app().test_client()
    good = token_for(client, "gp1")["Authorization"]
    forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    for bad in (forged, "Bearer nonsense", "Bearer " + good.split()[-1].replace(".", "x", 1)):
        r = client.get("/api/v1/cases", headers={"Authorization": bad})
        assert r.status_code == 401 and r.json["message"] == "invalid token"
    rt = embedded_stack.runtime()
    with rt.sessions() as s:
        user = s.query(User).filter_by(username="gp1").one()
        foreign = issue_token("some-other-secret", user)
    r = client.get("/api/v1/cases", headers={"Authorization": f"Bearer {foreign}"})
    assert r.status_code == 401
    with rt.sessions() as s, s.begin():
        s.query(User).filter_by(username="gp1").one().active = False
    assert client.get("/api/v1/cases", headers={"Authorization": good}).status_code == 401


def test_wrong_password_and_bad_token_request(embedded_stack):
    client = embedded_stack.app().test_client()
    r = client.post("/api/v1/auth/token", json={"username": "gp1", "password": "wrong"})
    assert r.status_code == 401
    r = client.post("/api/v1/auth/token", data="junk")
    assert r.status_code == 422 and r.json["field"] == "body"


def test_production_refuses_the_default_secret_key():
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        Settings.from_env({"DERMATRIAGE_ENV": "production", "DATABASE_URL": "postgresql://x/y"})
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        Settings.from_env({"DERMATRIAGE_ENV": "production", "SECRET_KEY": "short",
                           "DATABASE_URL": "postgresql://x/y"})
    for guessable in ("k" * 40, "ab" * 20, "0123456789" * 4):
        with pytest.raises(ConfigurationError, match="guessable"):
            Settings.from_env({"DERMATRIAGE_ENV": "production", "SECRET_KEY": guessable,
                               "DATABASE_URL": "postgresql+psycopg://x/y"})
    ok = Settings.from_env({"DERMATRIAGE_ENV": "Production", "SECRET_KEY": "9f2c4e7a1b8d3f6e0a5c2b9d7e4f1a3c",
                            "DATABASE_URL": "postgresql+psycopg://x/y"})
    assert ok.env == "production"                       # any case, never silently development
    for typo in ("prod", "production ", "staging"):
        if typo.strip().lower() == "production":
            continue
        with pytest.raises(ConfigurationError, match="DERMATRIAGE_ENV must be one of"):
            Settings.from_env({"DERMATRIAGE_ENV": typo})
    from services.cli import main
    result = CliRunner().invoke(main, ["run"], env={"DERMATRIAGE_ENV": "production", "SECRET_KEY": ""})
    assert result.exit_code != 0 and "SECRET_KEY" in result.output
