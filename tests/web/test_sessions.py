"""Sessions that end, throttled logins, account management and the access log (issue 10)."""

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text, update

from services import throttle
from services.cli import main
from services.models import LoginThrottle, utcnow

from tests.factories import PASSWORD, FakeClock, login, mark_queued, post_case, token_for


def csrf(client) -> str:
    with client.session_transaction() as sess:
        return sess["csrf"]


def copy_of(app, client):
    """A second browser holding a copy of the first one's session cookie."""
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    return other


def test_logout_ends_copied_cookies_and_tokens(stack):
    app = stack.app()
    gp = login(app, "gp1")
    stolen = copy_of(app, gp)
    token = token_for(app.test_client(), "gp1")
    assert stolen.get("/cases").status_code == 200
    assert app.test_client().get("/api/v1/cases", headers=token).status_code == 200
    assert gp.post("/logout", data={"csrf_token": csrf(gp)}).status_code == 302
    assert stolen.get("/cases").status_code == 302                       # back to the login page
    assert app.test_client().get("/api/v1/cases", headers=token).status_code == 401
    fresh = token_for(app.test_client(), "gp1")
    assert app.test_client().post("/api/v1/auth/logout", headers=fresh).json == {"ended": True}
    assert app.test_client().get("/api/v1/cases", headers=fresh).status_code == 401


def test_idle_and_absolute_session_timeouts(embedded_stack):
    clock = FakeClock()
    app = embedded_stack.app(clock=clock)
    gp = login(app, "gp1")
    clock.advance(29 * 60)
    assert gp.get("/cases").status_code == 200                           # within the idle limit
    clock.advance(29 * 60)
    assert gp.get("/cases").status_code == 200                           # activity kept it alive
    clock.advance(31 * 60)
    assert gp.get("/cases").status_code == 302                           # idle too long
    gp = login(app, "gp1")
    for _ in range(26):                                                  # busy, but 13 hours on
        clock.advance(29 * 60)
        last = gp.get("/cases").status_code
    assert last == 302


def test_password_change_deactivation_and_revocation_end_sessions(embedded_stack):
    app = embedded_stack.app()
    derm = login(app, "derm1")
    token = token_for(app.test_client(), "derm1")
    r = derm.post("/account/password", data={"csrf_token": csrf(derm), "current_password": "wrong one!",
                                              "new_password": "a new passphrase"})
    assert r.status_code == 200 and "current password is wrong" in r.get_data(as_text=True)
    other = login(app, "derm1")
    r = derm.post("/account/password", data={"csrf_token": csrf(derm), "current_password": PASSWORD,
                                              "new_password": "a new passphrase"})
    assert r.status_code == 302
    assert other.get("/queue").status_code == 302
    assert app.test_client().get("/api/v1/queue", headers=token).status_code == 401
    c = app.test_client()
    assert c.post("/api/v1/auth/token", json={"username": "derm1", "password": "a new passphrase"}).status_code == 200

    admin = login(app, "admin1")
    gp = login(app, "gp2")
    gp_token = token_for(app.test_client(), "gp2")
    r = admin.post("/admin/accounts", data={"csrf_token": csrf(admin), "action": "revoke", "username": "gp2"})
    assert r.status_code == 302 and gp.get("/cases").status_code == 302
    assert app.test_client().get("/api/v1/cases", headers=gp_token).status_code == 401
    admin.post("/admin/accounts", data={"csrf_token": csrf(admin), "action": "deactivate", "username": "gp2"})
    r = app.test_client().post("/api/v1/auth/token", json={"username": "gp2", "password": PASSWORD})
    assert r.status_code == 401
    admin.post("/admin/accounts", data={"csrf_token": csrf(admin), "action": "create", "username": "gp3",
                                        "role": "gp", "password": "a fine password"})
    assert app.test_client().post("/api/v1/auth/token",
                                  json={"username": "gp3", "password": "a fine password"}).status_code == 200
    admin.post("/admin/accounts", data={"csrf_token": csrf(admin), "action": "reset_password",
                                        "username": "gp3", "password": "another password"})
    assert app.test_client().post("/api/v1/auth/token",
                                  json={"username": "gp3", "password": "another password"}).status_code == 200
    assert "gp3" in admin.get("/admin").get_data(as_text=True)
    r = CliRunner().invoke(main, ["users", "reset-password", "gp3", "--password-stdin"],
                           input="third password!\n", env=embedded_stack.env)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["users", "revoke", "nobody"], env=embedded_stack.env)
    assert r.exit_code == 1 and "no account 'nobody'" in r.output
    log = app.test_client().get("/api/v1/audit/access", query_string={"limit": 1000},
                                headers=token_for(app.test_client(), "auditor1")).json["access"]
    actions = [(e["action"], e["subject"]) for e in log]
    for expected in [("account_revoke", "gp2"), ("account_deactivate", "gp2"), ("account_create", "gp3 (gp)"),
                     ("account_password", "gp3"), ("account_password", "derm1")]:
        assert expected in actions, expected
    assert any(e["user"] == "operator (cli)" and e["action"] == "account_password" for e in log)


def test_login_throttling_per_account_and_per_client(stack):
    app = stack.app()
    c = app.test_client()
    for _ in range(throttle.ACCOUNT_FAILURES):
        assert c.post("/api/v1/auth/token", json={"username": "gp1", "password": "guess"}).status_code == 401
    r = c.post("/api/v1/auth/token", json={"username": "gp1", "password": PASSWORD})     # right, too late
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "too many" in r.json["message"]
    page = app.test_client()
    page.get("/login")
    r = page.post("/login", data={"username": "gp1", "password": PASSWORD, "csrf_token": csrf(page)})
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert c.post("/api/v1/auth/token", json={"username": "gp2", "password": PASSWORD}).status_code == 200
    # one client trying many accounts
    for i in range(throttle.CLIENT_FAILURES):
        c.post("/api/v1/auth/token", json={"username": f"nobody{i}", "password": "guess"})
    assert c.post("/api/v1/auth/token", json={"username": "gp2", "password": PASSWORD}).status_code == 429
    if stack.name == "embedded":               # the window passes (the database store)
        rt = stack.runtime()
        with rt.transaction() as s:
            s.execute(update(LoginThrottle).values(window_start=utcnow() - timedelta(seconds=throttle.WINDOW_S)))
        assert c.post("/api/v1/auth/token", json={"username": "gp1", "password": PASSWORD}).status_code == 200
    else:
        import redis
        redis.Redis.from_url(stack.settings.broker_url).delete(
            *[f"dt:login:{k}" for k in throttle.keys("gp1", "127.0.0.1")])
        assert c.post("/api/v1/auth/token", json={"username": "gp1", "password": PASSWORD}).status_code == 200


def test_password_checks_never_take_every_thread(embedded_stack, monkeypatch):
    monkeypatch.setattr(throttle, "ARGON2_WAIT_S", 0.2)
    app = embedded_stack.app()
    assert throttle._argon2_slot.acquire(timeout=1)          # a check in progress elsewhere
    try:
        r = app.test_client().post("/api/v1/auth/token", json={"username": "gp1", "password": PASSWORD})
        assert r.status_code == 429 and r.headers["Retry-After"] and "busy" in r.json["message"]
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        throttle._argon2_slot.release()


def test_every_read_of_patient_data_is_logged(stack):
    app = stack.app()
    c = app.test_client()
    gp = token_for(c, "gp1")
    case_id = post_case(c, gp).json["id"]
    image_id = mark_queued(stack.runtime(), case_id)
    derm = token_for(c, "derm1")
    assert c.get(f"/api/v1/cases/{case_id}", headers=derm).status_code == 200
    assert c.get(f"/api/v1/cases/{case_id}/images/{image_id}", headers=derm).status_code == 200
    assert c.get(f"/api/v1/cases/{case_id}/review", headers=gp).status_code == 200
    page = login(app, "auditor1")
    assert page.get(f"/cases/{case_id}").status_code == 200
    assert c.get(f"/api/v1/cases/{case_id}", headers=token_for(c, "gp2")).status_code == 404   # not a read
    auditor = token_for(c, "auditor1")
    rows = c.get("/api/v1/audit/access", query_string={"case_id": case_id}, headers=auditor).json["access"]
    got = [(r["user"], r["action"], r["subject"]) for r in reversed(rows)]
    assert got == [("derm1", "read_case", None), ("derm1", "read_image", image_id),
                   ("gp1", "read_review", None), ("auditor1", "read_case", None)]
    assert all(r["client"] == "127.0.0.1" and r["case_id"] == case_id for r in rows)
    mine = c.get("/api/v1/audit/access", query_string={"user": "gp2"}, headers=auditor).json["access"]
    assert [r["action"] for r in mine] == ["login"]
    assert c.get("/api/v1/audit/access", headers=derm).status_code == 403
    assert "read_image" in page.get(f"/audit/access?case_id={case_id}").get_data(as_text=True)
    rt = stack.runtime()
    for stmt in ("UPDATE access_log SET username = 'someone else'", "DELETE FROM access_log"):
        with pytest.raises(Exception, match="append-only"):
            with rt.engine.begin() as conn:
                conn.execute(text(stmt))
    result = CliRunner().invoke(main, ["audit", "access", "--case", case_id], env=stack.env)
    assert result.exit_code == 0 and result.output.count("\n") == 4
