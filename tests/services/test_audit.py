import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from services import audit
from services.cli import main


def append_records(rt, n):
    keys = []
    for i in range(n):
        key = f"maps/img{i}/m-1/BCC.png"
        data = f"png-bytes-{i}".encode()
        rt.store.put(key, data, "image/png")
        import hashlib
        with rt.sessions() as s, s.begin():
            audit.append(s, f"case{i}", {
                "case_id": f"case{i}", "outputs": {"bcc_probability": i / 10},
                "maps": {"BCC": {"key": key, "sha256": hashlib.sha256(data).hexdigest()}}},
                prediction_id=f"pred{i}")
        keys.append(key)
    return keys


def test_chain_links_and_verifies(stack):
    rt = stack.runtime()
    append_records(rt, 5)
    with rt.sessions() as s:
        report = audit.verify(s, rt.store)
        rows = s.execute(text("SELECT prev_hash, record_hash, payload FROM explanation_records ORDER BY seq")).all()
    assert report.ok and report.records == 5 and report.objects == 5
    assert rows[0][0] == audit.GENESIS
    for prev, cur in zip(rows, rows[1:]):
        assert cur[0] == prev[1]
    assert json.loads(rows[2][2])["outputs"]["bcc_probability"] == 0.2


def test_altered_map_object_is_reported(stack):
    rt = stack.runtime()
    keys = append_records(rt, 4)
    rt.store.put(keys[2], b"tampered", "image/png")
    with rt.sessions() as s:
        report = audit.verify(s, rt.store)
    assert not report.ok and report.records == 2
    assert report.first_broken["case_id"] == "case2" and "altered" in report.first_broken["problem"]
    rt.store.delete(keys[2])
    with rt.sessions() as s:
        assert "missing" in audit.verify(s, rt.store).first_broken["problem"]


def test_altered_record_is_reported_by_the_cli(full_stack):
    """Only a superuser who disables the trigger can change a record; verify still sees it."""
    rt = full_stack.runtime()
    append_records(rt, 3)
    runner = CliRunner()
    env = full_stack.env
    ok = runner.invoke(main, ["audit", "verify"], env=env)
    assert ok.exit_code == 0 and "OK: 3 records, 3 objects verified" in ok.output
    with rt.engine.begin() as c:
        c.execute(text("ALTER TABLE explanation_records DISABLE TRIGGER explanation_records_no_change"))
        c.execute(text("UPDATE explanation_records SET payload = replace(payload, '0.1', '0.9') WHERE seq = 2"))
        c.execute(text("ALTER TABLE explanation_records ENABLE TRIGGER explanation_records_no_change"))
    bad = runner.invoke(main, ["audit", "verify"], env=env)
    assert bad.exit_code == 1 and "BROKEN at record 2" in bad.output and "record_hash" in bad.output


def test_a_fork_of_the_chain_is_impossible(embedded_stack):
    rt = embedded_stack.runtime()
    append_records(rt, 1)
    from sqlalchemy.exc import IntegrityError
    from services.models import ExplanationRecord
    with pytest.raises(IntegrityError):
        with rt.sessions() as s, s.begin():
            s.add(ExplanationRecord(case_id="x", prediction_id="other", payload="{}",
                                    prev_hash=audit.GENESIS, record_hash="f" * 64))
