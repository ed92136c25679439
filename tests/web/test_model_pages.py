"""The model registry's pages: who sees them, the comparison with its disagreements, the ML
engineer's changes through the forms, and the auditor's view of them."""

from __future__ import annotations

import io
import zipfile

from services.checkpoints import export_bundle
from tests.factories import login
from tests.services.test_shadow import shadowed_cases
from tests.web.test_review_pages import csrf


def compared(stack, ham_jpegs, tmp_path) -> tuple[dict, dict, list[str]]:
    return shadowed_cases(stack, tmp_path, ham_jpegs[:2], ham_jpegs[4:6])


def test_model_pages_for_each_role(make_product, ham_jpegs, tmp_path):
    stack = make_product("embedded", DERMATRIAGE_PROMOTION_MIN_REVIEWED=4)
    a, b, ids = compared(stack, ham_jpegs, tmp_path)
    app = stack.app()
    compare = f"/models/compare?champion={a['id']}&shadow={b['id']}"
    image = f"/models/compare/cases/{ids[0]}/image"
    for path, expected in (("/models", {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 200}),
                           (compare, {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 200}),
                           (image, {"gp1": 403, "derm1": 403, "auditor1": 200, "admin1": 200})):
        for who, status in expected.items():
            assert login(app, who).get(path).status_code == status, (path, who)
    admin = login(app, "admin1")
    page = admin.get(compare).get_data(as_text=True)
    assert "4 live cases read by both" in page and page.count('class="thumb"') == 4
    assert "Non-inferior within 0.02: yes" in page
    assert admin.get(image).data[:2] == b"\xff\xd8"
    # the ML engineer promotes through the form; the auditor may look but not change
    auditor = login(app, "auditor1")
    assert auditor.post("/models/promote", data={"csrf_token": csrf(auditor), "version": b["id"],
                                                 "reason": "x"}).status_code == 403
    assert admin.post("/models/promote", data={"version": b["id"], "reason": "no token"}).status_code == 400
    r = admin.post("/models/promote", data={"csrf_token": csrf(admin), "version": b["id"],
                                            "reason": "non-inferior on 4 reviewed cases"})
    assert r.status_code == 302
    assert "promote: test-model 1.1.0 is the champion" in admin.get("/models").get_data(as_text=True)
    r = admin.post("/models/rollback", data={"csrf_token": csrf(admin), "reason": ""})
    assert "Refused: a rollback needs a reason" in admin.get("/models").get_data(as_text=True)
    # monitoring splits by version and says where each stands: the drift after a promotion shows
    from services import monitoring
    from tests.factories import user
    rep = monitoring.report(stack.runtime(), user(stack.runtime(), "admin1"))
    assert rep["models"]["test-model 1.0.0"]["registry"]["status"] == "retired"
    assert rep["models"]["test-model 1.0.0"]["reviewed"] == 4
    assert "(retired; champion from" in admin.get("/monitoring").get_data(as_text=True)
    workbench = auditor.get("/audit").get_data(as_text=True)
    assert "Model changes" in workbench and "non-inferior on 4 reviewed cases" in workbench
    out = tmp_path / "bundle.zip"
    assert export_bundle(stack.runtime(), None, out)["model_events"] == 5   # register, override, register, shadow, promote
    events = zipfile.ZipFile(io.BytesIO(out.read_bytes())).read("model_events.jsonl").decode().splitlines()
    assert '"action": "register"' in events[0] and '"action": "promote"' in events[-1]
