"""The review loop in a real browser: Playwright for Python driving Debian's Chromium.

A GP submits a case through the form; it is analysed; a dermatologist claims it, reviews it
with the map overlay (target, opacity, original view) and a region drawn with the mouse,
overrides the AI's diagnosis with a reason and replies; the GP reads the answer. Each step
leaves a screenshot in var/test-artifacts/review-flow (DERMATRIAGE_TEST_ARTIFACTS) to look at.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from services import analysis
from services.diagnosis.engine import Engine
from services.models import AnalysisJob, Review

from tests.factories import PASSWORD, ROOT, model_info, small_model_file

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DERMATRIAGE_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts")) / "review-flow"


@pytest.fixture
def live_server(embedded_stack):
    from werkzeug.serving import make_server

    app = embedded_stack.app()
    app.config["TESTING"] = False
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", embedded_stack
    server.shutdown()


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (make tools installs Debian's chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def log_in(browser, base: str, username: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(lambda url: "/login" not in url)
    return page


def test_gp_submits_dermatologist_reviews_gp_reads(live_server, browser, ham_jpegs, tmp_path):
    base, stack = live_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = []

    def shot(page, name):
        path = ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    # 1. the GP submits a case through the form
    image = tmp_path / "lesion.jpg"
    image.write_bytes(ham_jpegs[0])
    gp = log_in(browser, base, "gp1")
    gp.goto(f"{base}/cases/new")
    gp.fill("input[name=patient_pseudonym]", "P-BROWSER")
    gp.fill("input[name=age]", "68")
    gp.select_option("select[name=sex]", "male")
    gp.select_option("select[name=body_site]", "nose")
    gp.fill("textarea[name=gp_question]", "Pearly papule on the nose, BCC?")
    gp.set_input_files("input[name=dermoscopic]", str(image))
    shot(gp, "gp-submits")
    gp.click("button:has-text('Submit case')")
    assert "Case submitted" in gp.content()
    case_id = gp.url.rstrip("/").split("/")[-1]

    # the analysis (a small model, in-process: the worker is tested elsewhere)
    rt = stack.runtime()
    with rt.read() as s:
        job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == case_id))
    engine = Engine.load(small_model_file(tmp_path), "cpu")
    assert analysis.run_job(rt, job_id, engine.analyse, model_info(engine)) == "done"

    # 2. the dermatologist claims it from the queue
    derm = log_in(browser, base, "derm1")
    derm.goto(f"{base}/queue")
    assert "P-BROWSER" in derm.content() or case_id in derm.content()
    derm.goto(f"{base}/cases/{case_id}")
    derm.click("button:has-text('Claim this case')")
    shot(derm, "dermatologist-claims")
    derm.click("text=Review this case")
    derm.wait_for_selector("#layer")
    derm.wait_for_function("document.getElementById('base').complete && document.getElementById('layer').complete")

    # 3. the viewer: choose a target, move the opacity, look at the original
    derm.select_option("#target", "SW")
    derm.fill("#opacity", "70")
    derm.dispatch_event("#opacity", "input")
    assert derm.eval_on_selector("#layer", "e => e.src").endswith("/layers/SW.png")
    assert derm.eval_on_selector("#layer", "e => e.style.opacity") == "0.7"
    derm.wait_for_function("document.getElementById('layer').complete")
    assert derm.eval_on_selector("#layer", "e => e.naturalWidth") > 0
    shot(derm, "viewer-SW-overlay")
    derm.check("#original")
    assert derm.eval_on_selector("#layer", "e => e.style.opacity") == "0"
    shot(derm, "viewer-original")
    derm.uncheck("#original")

    # 4. draw a region for AT with the mouse
    derm.select_option("#brush-pattern", "AT")
    box = derm.locator("canvas[data-pattern=AT]").bounding_box()
    derm.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.35)
    derm.mouse.down()
    for step in range(12):
        derm.mouse.move(box["x"] + box["width"] * (0.35 + step * 0.025), box["y"] + box["height"] * 0.5)
    derm.mouse.up()
    assert derm.is_checked('input[name="pattern_AT"][value="present"]')

    # 5. override the AI's diagnosis with a reason, manage and reply
    said_bcc = "(BCC)" in derm.inner_text(".card:has(#review-form) p")
    derm.select_option("select[name=diagnosis]", "nv" if said_bcc else "bcc")
    derm.check('input[name="pattern_PN"][value="absent"]')
    derm.select_option("select[name=management]", "biopsy")
    derm.fill("textarea[name=message]", "Please arrange a punch biopsy; I suspect a BCC.")
    shot(derm, "review-filled")
    derm.click("#review-form button")
    assert "override_reason" in derm.content()                     # refused without a reason
    shot(derm, "override-needs-a-reason")
    # what was chosen and drawn survives the refused submit
    assert derm.is_checked('input[name="pattern_AT"][value="present"]')
    assert derm.input_value('input[name="region_AT"]').startswith("data:image/png;base64,")
    assert derm.input_value("#brush-pattern") == "AT"
    derm.fill("input[name=override_reason]", "arborizing vessels and a pearly rim")
    derm.click("#review-form button")
    assert "Review recorded" in derm.content()
    assert "Review history" in derm.content() and "overrides" in derm.content()
    shot(derm, "case-reviewed")
    with rt.read() as s:
        review = s.scalar(select(Review).where(Review.case_id == case_id))
        assert review.regions["AT"]["area"] > 0.005 and review.override_reason.startswith("arborizing")
        assert review.management == "biopsy" and review.agreement["diagnosis"] is False

    # 6. the GP sees a new answer and reads it
    gp.goto(f"{base}/cases")
    assert "new answer" in gp.content()
    shot(gp, "gp-new-answer")
    gp.click(f"a[href='/cases/{case_id}']")
    assert "Please arrange a punch biopsy" in gp.content() and "biopsy" in gp.content()
    shot(gp, "gp-reads-answer")
    gp.goto(f"{base}/cases")
    assert "new answer" not in gp.content()
    assert all(p.stat().st_size > 10_000 for p in shots)


CSP_WATCH = ("window.__csp = [];"
             "document.addEventListener('securitypolicyviolation',"
             " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


def test_every_page_loads_without_a_csp_violation(live_server, browser, ham_jpegs, tmp_path):
    """The Content-Security-Policy admits only our own script and stylesheet: every page, for
    every role, must work within it (no inline script or style, nothing from elsewhere)."""
    from services import checkpoints
    from tests.factories import analysed_case, mask_data_url, review_body, token_for

    base, stack = live_server
    engine = Engine.load(small_model_file(tmp_path), "cpu")
    case_id = analysed_case(stack, engine, ham_jpegs[:1])
    claimed = analysed_case(stack, engine, ham_jpegs[1:2])
    api = stack.app().test_client()
    derm = token_for(api, "derm1")
    api.post(f"/api/v1/cases/{case_id}/claim", headers=derm)
    state = api.get(f"/api/v1/cases/{case_id}/review", headers=derm).json
    size = state["region_size"]
    body = review_body(diagnosis="bcc" if state["ai"]["says_bcc"] else "nv",
                       patterns={**review_body()["patterns"], "AT": "present"},
                       regions={"AT": mask_data_url(size, (2, 2, size // 2, size // 2))})
    review = api.post(f"/api/v1/cases/{case_id}/review", json=body, headers=derm).json
    api.post(f"/api/v1/cases/{claimed}/claim", headers=derm)
    lset = api.post("/api/v1/labelling/sets", json={"name": "csp", "readers": ["derm1", "derm2"],
                                                    "cases": [case_id]}, headers=token_for(api, "admin1")).json
    checkpoints.make_checkpoint(stack.runtime())
    pages = {
        "gp1": ["/cases", "/cases/new", f"/cases/{case_id}", "/account/password"],
        "derm1": ["/queue", f"/cases/{case_id}", f"/cases/{case_id}/review", f"/cases/{claimed}/review",
                  "/labelling", f"/labelling/{lset['id']}", f"/labelling/{lset['id']}/cases/{case_id}",
                  "/monitoring", f"/cases/{case_id}/reviews/{review['id']}/regions/AT.png"],
        "auditor1": ["/audit", "/audit?full=true", "/audit/records/1", "/audit/access", f"/cases/{case_id}"],
        "admin1": ["/admin", "/labelling", f"/labelling/{lset['id']}", "/monitoring"],
        None: ["/login"],
    }
    seen = 0
    for user, paths in pages.items():
        page = browser.new_page()
        page.add_init_script(CSP_WATCH)
        console = []
        page.on("console", lambda m, console=console: console.append(m.text))
        if user:
            page.goto(f"{base}/login")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('Log in')")
            page.wait_for_url(lambda url: "/login" not in url)
        for path in paths:
            response = page.goto(base + path)
            page.wait_for_load_state("networkidle")
            assert response.status == 200, (user, path, response.status)
            if not path.endswith(".png"):
                assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            violations = page.evaluate("window.__csp || []")
            assert violations == [], (user, path, violations)
            seen += 1
        assert not [m for m in console if "Content Security Policy" in m], (user, console)
        page.close()
    assert seen == sum(len(p) for p in pages.values())


def test_gp_sees_the_scope_verdicts_before_submitting(make_product, browser, ham_jpegs, tmp_path):
    """With the real-image model (its scope gate): a clinical photo and a dermoscopic image
    picked in the form each get a verdict at once; after submitting, the dermatologist's case
    page shows the clinical one as "AI not applicable", without pattern evidence or maps."""
    from werkzeug.serving import make_server

    from services import config
    real = config.real_model_path()
    if not real.is_file():
        pytest.skip(f"no real-image model at {real} (make install builds it where the shared data is)")
    engine = Engine.load(real, "cpu")
    if not engine.card.scope:
        pytest.skip("the model in var/models predates the scope gate; rebuild it")
    photos = config.shared_data_dir() / "dermnet-clinical"
    clinical = tmp_path / "clinical-photo.jpg"
    clinical.write_bytes((photos / "images/basal-cell-carcinoma/0637.jpg").read_bytes())
    dermoscopic = tmp_path / "dermoscopic.jpg"
    dermoscopic.write_bytes(ham_jpegs[0])

    stack = make_product("embedded", DERMATRIAGE_MODEL_PATH=real)
    app = stack.app()
    app.config["TESTING"] = False
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        gp = log_in(browser, base, "gp1")
        gp.goto(f"{base}/cases/new")
        gp.fill("input[name=patient_pseudonym]", "P-GATE")
        gp.fill("input[name=age]", "71")
        gp.set_input_files("input[name=dermoscopic]", [str(clinical), str(dermoscopic)])
        for name in ("clinical-photo.jpg", "dermoscopic.jpg"):   # CSS only: the CSP forbids eval
            gp.wait_for_selector(f"li.check-result[data-file='{name}']:not([data-verdict=pending])", timeout=30_000)
        verdicts = {li.get_attribute("data-file"): li.get_attribute("data-verdict")
                    for li in gp.query_selector_all("li.check-result")}
        assert verdicts["dermoscopic.jpg"] == "dermoscopic"
        assert verdicts["clinical-photo.jpg"] in ("clinical", "not_a_lesion")
        warn = gp.inner_text("li.check-result[data-file='clinical-photo.jpg']")
        assert "dermatoscope" in warn and "Retake hint" in warn
        assert gp.eval_on_selector("li.check-result[data-file='dermoscopic.jpg'] img", "e => e.naturalWidth") > 0
        gp.screenshot(path=str(ARTIFACTS / "gate-verdicts-before-submit.png"), full_page=True)
        gp.click("button:has-text('Submit case')")
        assert "Case submitted" in gp.content()
        case_id = gp.url.rstrip("/").split("/")[-1]

        rt = stack.runtime()
        with rt.read() as s:
            job_id = s.scalar(select(AnalysisJob.id).where(AnalysisJob.case_id == case_id))
        assert analysis.run_job(rt, job_id, engine.analyse, analysis.ModelInfo.of(engine.card)) == "done"

        derm = log_in(browser, base, "derm1")
        derm.goto(f"{base}/cases/{case_id}")
        derm.screenshot(path=str(ARTIFACTS / "gate-case-page.png"), full_page=True)
        cards = [c for c in derm.query_selector_all(".card") if "AI analysis" in c.inner_text()]
        assert len(cards) == 2
        refused = [c for c in cards if "AI not applicable" in c.inner_text()]
        assert len(refused) == 1
        text = refused[0].inner_text()
        assert "Finding" not in text and "Probability" not in text and "Grad-CAM" not in text
        assert not refused[0].query_selector_all("img")
        read = [c for c in cards if c is not refused[0]][0]
        assert "Finding" in read.inner_text() and read.query_selector_all("img")
        assert "AI not applicable" in derm.inner_text("body")
    finally:
        server.shutdown()


def test_ml_engineer_compares_and_promotes_auditor_sees_it(make_product, browser, ham_jpegs, tmp_path):
    from werkzeug.serving import make_server

    from tests.web.test_model_pages import compared
    stack = make_product("embedded", DERMATRIAGE_PROMOTION_MIN_REVIEWED=4)
    champion, challenger, _ = compared(stack, ham_jpegs, tmp_path)
    app = stack.app()
    app.config["TESTING"] = False
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    shots = ARTIFACTS.parent / "model-lifecycle"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        ml = log_in(browser, base, "admin1")
        ml.goto(f"{base}/models")
        ml.click("#compare")
        ml.wait_for_selector("#disagreements img.thumb")
        assert ml.locator("#disagreements tr").count() == 5                    # header and four cases
        assert ml.locator("#disagreements img.thumb").first.evaluate("i => i.naturalWidth") > 0
        assert "yes" in ml.inner_text("#verdict")
        ml.screenshot(path=str(shots / "01-compare.png"), full_page=True)
        ml.goto(f"{base}/models")
        ml.select_option("select[name=version] >> nth=0", challenger["id"])
        ml.fill("form[action$='/promote'] input[name=reason]", "non-inferior on the reviewed cases")
        ml.click("form[action$='/promote'] button")
        ml.wait_for_selector(".flash")
        assert "is the champion" in ml.inner_text(".flash")
        ml.screenshot(path=str(shots / "02-promoted.png"), full_page=True)
        auditor = log_in(browser, base, "auditor1")
        auditor.goto(f"{base}/audit")
        row = auditor.locator("#model-changes tr", has_text="non-inferior on the reviewed cases")
        assert row.count() == 1 and "admin1" in row.inner_text() and "promote" in row.inner_text()
        auditor.screenshot(path=str(shots / "03-auditor.png"), full_page=True)
    finally:
        server.shutdown()
    assert registry_champion(stack) == challenger["id"] != champion["id"]


def registry_champion(stack) -> str:
    from services import registry
    return registry.champion(stack.runtime()).id
