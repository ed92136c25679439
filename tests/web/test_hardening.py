"""Hostile input and privacy: each test here failed before its fix (issue 10, first part)."""

import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageCms
from sqlalchemy import text

from services import intake

from tests.factories import CASE_FIELDS, PASSWORD, encode, login, post_case, token_for


def csrf(client) -> str:
    with client.session_transaction() as sess:
        return sess["csrf"]


@pytest.mark.parametrize("target", ["/%09/evil.example/phish", "/\t/evil.example", "/\\evil.example",
                                    "//evil.example", "https://evil.example/", "/ok%0d%0aSet-Cookie:x=1",
                                    "/cases\r\nLocation: https://evil.example"])
def test_login_never_redirects_off_site(embedded_stack, target):
    client = embedded_stack.app().test_client()
    client.get("/login")
    r = client.post("/login", query_string={"next": target},
                    data={"username": "gp1", "password": PASSWORD, "csrf_token": csrf(client)})
    assert r.status_code == 302 and r.headers["Location"] == "/cases", r.headers.get("Location")


def test_login_returns_to_a_local_page(embedded_stack):
    client = embedded_stack.app().test_client()
    client.get("/login")
    r = client.post("/login", query_string={"next": "/cases/new"},
                    data={"username": "gp1", "password": PASSWORD, "csrf_token": csrf(client)})
    assert r.headers["Location"] == "/cases/new"


def test_nul_bytes_are_refused_with_the_field_named(stack):
    client = stack.app().test_client()
    r = client.post("/api/v1/auth/token", json={"username": "gp1\x00", "password": PASSWORD})
    assert r.status_code == 400 and r.json["field"] == "body" and "NUL" in r.json["message"]
    h = token_for(client, "gp1")
    r = post_case(client, h, fields={**CASE_FIELDS, "gp_question": "bleeds\x00"})
    assert r.status_code == 400 and r.json["field"] == "gp_question"
    r = client.get("/api/v1/cases/abc%00def", headers=h)
    assert r.status_code == 400 and r.json["field"] == "path"
    r = client.get("/api/v1/queue", query_string={"tier": "low\x00"}, headers=token_for(client, "derm1"))
    assert r.status_code == 400 and r.json["field"] == "tier"
    page = stack.app().test_client()
    page.get("/login")
    r = page.post("/login", data={"username": "gp1\x00", "password": PASSWORD, "csrf_token": csrf(page)})
    assert r.status_code == 400 and "NUL" in r.get_data(as_text=True)


def test_deeply_nested_or_broken_json_is_a_clear_400(embedded_stack):
    client = embedded_stack.app().test_client()
    deep = "[" * 100_000 + "]" * 100_000
    r = client.post("/api/v1/auth/token", data=deep, content_type="application/json")
    assert r.status_code == 400 and r.is_json and "nested" in r.json["message"]
    r = client.post("/api/v1/auth/token", data='{"username": ', content_type="application/json")
    assert r.status_code == 400 and r.is_json and "not valid JSON" in r.json["message"]
    tricky = '{"username": "[[[[[[[[[[[[[[", "password": "x"}'        # brackets inside a string
    assert client.post("/api/v1/auth/token", data=tricky, content_type="application/json").status_code == 401


@pytest.mark.parametrize("age", ["1_0", "+5", "٣٠", " 7 7", "1e2", "0x10", "-0"])
def test_ages_are_plain_digits(embedded_stack, age):
    client = embedded_stack.app().test_client()
    r = post_case(client, token_for(client, "gp1"), fields={**CASE_FIELDS, "age": age})
    assert r.status_code == 422 and r.json["field"] == "age"


def test_image_errors_do_not_leak_pillow_internals(embedded_stack):
    client = embedded_stack.app().test_client()
    h = token_for(client, "gp1")
    for junk in (b"not an image at all" * 10, encode(np.zeros((100, 100, 3), np.uint8))[:300]):
        r = post_case(client, h, images=[("images", (io.BytesIO(junk), "x.jpg"))])
        assert r.status_code == 422, r.json
        assert "BytesIO" not in r.json["message"] and "PIL" not in r.json["message"]
        assert "0x" not in r.json["message"]


def test_an_oversized_request_names_the_field(embedded_stack):
    stack = embedded_stack.with_env()
    app = stack.app()
    app.config["MAX_CONTENT_LENGTH"] = 200_000
    client = app.test_client()
    r = post_case(client, token_for(client, "gp1"),
                  images=[("images", (io.BytesIO(b"\xff" * 300_000), "big.jpg"))])
    assert r.status_code == 413 and r.json["field"] == "images"


def test_security_headers_on_every_response(embedded_stack):
    app = embedded_stack.app()
    gp = login(app, "gp1")
    for r in (gp.get("/cases"), gp.get("/api/v1/cases", headers=token_for(app.test_client(), "gp1")),
              app.test_client().get("/login"), app.test_client().get("/nope")):
        if r.mimetype == "text/html":
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["Cache-Control"] == "no-store"
        assert "Strict-Transport-Security" not in r.headers                  # not production
    assert "no-store" not in (app.test_client().get("/static/site.css").headers.get("Cache-Control") or "")
    page = gp.get("/cases").get_data(as_text=True)
    assert "<style" not in page and " style=" not in page and "<script>" not in page


def test_hsts_in_production(embedded_stack):
    prod = embedded_stack.with_env(DERMATRIAGE_ENV="production", SECRET_KEY="3e8a1f0c9b7d2e6f4a5c8b1d0e9f7a2c",
                                   DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    r = prod.app().test_client().get("/login")
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def _jpeg_with_comment() -> bytes:
    buf = io.BytesIO()
    rgb = (np.random.default_rng(1).random((200, 240, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(buf, "JPEG", comment=b"Patient: Jane Example, DOB 1950-01-01")
    return buf.getvalue()


def test_a_jpeg_comment_does_not_survive(embedded_stack):
    data = _jpeg_with_comment()
    assert b"Jane Example" in data
    out = intake.clean(data).data
    assert b"Jane Example" not in out and "comment" not in Image.open(io.BytesIO(out)).info


def test_a_png_icc_profile_is_applied_then_dropped():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = np.full((80, 80, 3), (200, 120, 40), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", icc_profile=icc)
    data = buf.getvalue()
    assert b"iCCP" in data and Image.open(io.BytesIO(data)).info["icc_profile"] == icc
    out = intake.clean(data).data
    assert b"iCCP" not in out and "icc_profile" not in Image.open(io.BytesIO(out)).info
    assert np.abs(np.asarray(Image.open(io.BytesIO(out)), int) - rgb).max() <= 2   # sRGB -> sRGB


def test_a_multi_picture_jpeg_is_read_as_its_first_picture():
    first = (np.random.default_rng(2).random((120, 160, 3)) * 255).astype(np.uint8)
    second = np.zeros((120, 160, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, "MPO", save_all=True, append_images=[Image.fromarray(second)])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    cleaned = intake.clean(data)
    assert cleaned.media_type == "image/jpeg" and (cleaned.width, cleaned.height) == (160, 120)
    assert np.asarray(Image.open(io.BytesIO(cleaned.data))).mean() > 60     # not the black one


def _png16(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("I;16", (side, side), 30000).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_a_case_of_huge_16_bit_pngs_is_refused_before_decoding(embedded_stack):
    data = _png16(6300)
    assert len(data) < 200_000
    client = embedded_stack.app().test_client()
    r = post_case(client, token_for(client, "gp1"),
                  images=[("images", (io.BytesIO(data), f"{i}.png")) for i in range(6)])
    assert r.status_code == 422 and r.json["field"] == "images" and "megapixels" in r.json["message"]


def test_a_16_bit_png_is_scaled_without_a_float_copy():
    cleaned = intake.clean(_png16(300))
    assert np.asarray(Image.open(io.BytesIO(cleaned.data))).max() == 30000 >> 8


def test_sqlite_reads_do_not_wait_for_a_writer(embedded_stack):
    rt = embedded_stack.runtime()
    writer = rt.engine.raw_connection()
    cursor = writer.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    cursor.execute("UPDATE users SET active = active")
    try:
        done = threading.Event()

        def read():
            with rt.read() as s:
                s.execute(text("SELECT count(*) FROM users")).scalar()
            done.set()
        threading.Thread(target=read, daemon=True).start()
        assert done.wait(5), "a read waited for the writer"
        assert rt.health()["database"] == "ok"
    finally:
        writer.rollback()
        writer.close()
