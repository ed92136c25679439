"""Signed checkpoints: a database administrator's rewrite or truncation is detected; the
auditor's incremental verification, workbench and offline bundle."""

import json
import zipfile

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from services import audit, checkpoints
from services.cli import main

from tests.factories import token_for


def append(rt, n, start=0):
    for i in range(start, start + n):
        with rt.sessions() as s, s.begin():
            audit.append(s, f"case{i}", {"kind": "explanation", "case_id": f"case{i}", "n": i},
                         prediction_id=f"pred{i}")


def as_admin(rt, statements):
    """What someone with full control of the database can do: triggers off, then anything."""
    with rt.engine.begin() as c:
        if rt.engine.dialect.name == "postgresql":
            c.execute(text("ALTER TABLE explanation_records DISABLE TRIGGER USER"))
            c.execute(text("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER"))
        else:
            for t in ("explanation_records_no_update", "explanation_records_no_delete",
                      "audit_checkpoints_no_update", "audit_checkpoints_no_delete"):
                c.execute(text(f"DROP TRIGGER IF EXISTS {t}"))
        for stmt in statements:
            sql, values = (stmt, {}) if isinstance(stmt, str) else stmt
            c.execute(text(sql), values)


def rewrite_consistently(rt, new_payload_for_seq2):
    """Rewrite record 2 and re-chain every later record so the chain verifies on its own."""
    with rt.engine.connect() as c:
        rows = c.execute(text("SELECT seq, payload FROM explanation_records ORDER BY seq")).all()
    prev, statements = audit.GENESIS, []
    for seq, payload in rows:
        if seq == 2:
            payload = new_payload_for_seq2
        h = audit.chain_hash(prev, payload)
        statements.append(("UPDATE explanation_records SET payload = :p, prev_hash = :prev, "
                           "record_hash = :h WHERE seq = :seq", {"p": payload, "prev": prev, "h": h, "seq": seq}))
        prev = h
    # prev_hash and record_hash are UNIQUE: move them out of the way first
    as_admin(rt, ["UPDATE explanation_records SET prev_hash = 'x' || seq, record_hash = 'y' || seq"]
             + statements)


def test_checkpoints_detect_a_consistent_rewrite(stack):
    rt = stack.runtime()
    append(rt, 4)
    cp = checkpoints.make_checkpoint(rt)
    assert cp["seq"] == 4 and cp["records"] == 4
    assert checkpoints.make_checkpoint(rt) == {"skipped": "no records since the last checkpoint"}
    assert checkpoints.verify(rt, None, full=True)["ok"]
    rewrite_consistently(rt, '{"case_id":"case1","kind":"explanation","n":999}')
    with rt.read() as s:
        assert audit.verify(s, rt.store).ok                     # the chain alone cannot tell
    report = checkpoints.verify(rt, None, full=True)
    assert not report["ok"] and any("rewritten" in p for p in report["problems"])
    assert checkpoints.make_checkpoint(rt)["skipped"].startswith("the chain no longer holds")


def test_checkpoints_detect_truncation_and_removed_checkpoints(stack):
    rt = stack.runtime()
    append(rt, 3)
    checkpoints.make_checkpoint(rt)
    append(rt, 2, start=3)
    checkpoints.make_checkpoint(rt)
    append(rt, 2, start=5)                                      # after the newest checkpoint
    as_admin(rt, ["DELETE FROM explanation_records WHERE seq > 5"])
    assert checkpoints.verify(rt, None, full=True)["ok"]        # not detectable (documented window)
    as_admin(rt, ["DELETE FROM explanation_records WHERE seq > 3"])
    report = checkpoints.verify(rt, None, full=True)
    assert not report["ok"] and any("missing (truncated?)" in p for p in report["problems"])
    as_admin(rt, ["DELETE FROM audit_checkpoints WHERE seq > 3"])
    report = checkpoints.verify(rt, None, full=True)
    assert not report["ok"] and any("in the checkpoint log but not in the database" in p
                                    for p in report["problems"])


def test_a_forged_checkpoint_fails_its_signature(embedded_stack):
    rt = embedded_stack.runtime()
    append(rt, 2)
    checkpoints.make_checkpoint(rt)
    as_admin(rt, ["UPDATE audit_checkpoints SET records = 1"])
    report = checkpoints.verify(rt, None)
    assert not report["ok"] and any("signature does not verify" in p for p in report["problems"])


def test_incremental_verification_walks_only_what_is_new(embedded_stack):
    rt = embedded_stack.runtime()
    append(rt, 5)
    first = checkpoints.verify(rt, None)
    assert first["ok"] and first["records_walked"] == 5 and first["from_record"] == 0
    again = checkpoints.verify(rt, None)
    assert again["ok"] and again["records_walked"] == 0 and again["from_record"] == 5
    append(rt, 2, start=5)
    third = checkpoints.verify(rt, None)
    assert third["records_walked"] == 2 and third["from_record"] == 5
    assert checkpoints.verify(rt, None, full=True)["records_walked"] == 7


def test_bundle_verifies_offline_with_the_public_key_only(embedded_stack, tmp_path):
    rt = embedded_stack.runtime()
    append(rt, 3)
    checkpoints.make_checkpoint(rt)
    runner, env = CliRunner(), embedded_stack.env
    bundle, key = tmp_path / "bundle.zip", tmp_path / "key.pem"
    assert runner.invoke(main, ["audit", "export", "--out", str(bundle)], env=env).exit_code == 0
    key.write_text(runner.invoke(main, ["audit", "public-key"], env=env).output)
    offline = runner.invoke(main, ["audit", "verify-bundle", str(bundle), "--public-key", str(key)],
                            env={"DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert offline.exit_code == 0 and json.loads(offline.output)["ok"], offline.output
    # a tampered bundle, and a key that is not the signer's
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["records.jsonl"] = files["records.jsonl"].replace(b'\\"n\\":1', b'\\"n\\":7')
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    bad = runner.invoke(main, ["audit", "verify-bundle", str(tampered), "--public-key", str(key)])
    assert bad.exit_code == 1 and "record_hash does not match" in bad.output
    other = tmp_path / "other.pem"
    runner.invoke(main, ["audit", "keygen", "--out", str(tmp_path / "other-private.pem")])
    other.write_text(runner.invoke(main, ["audit", "keygen", "--out", str(tmp_path / "x.pem")]).output)
    wrong = runner.invoke(main, ["audit", "verify-bundle", str(bundle), "--public-key", str(other)])
    assert wrong.exit_code == 1 and "not signed by this key" in wrong.output


def test_the_auditors_workbench(embedded_stack):
    rt = embedded_stack.runtime()
    append(rt, 7)
    c = embedded_stack.app().test_client()
    h = token_for(c, "auditor1")
    page = c.get("/api/v1/audit/records", query_string={"limit": 3}, headers=h).json
    assert [r["seq"] for r in page["records"]] == [7, 6, 5] and page["next"] == 5
    page = c.get("/api/v1/audit/records", query_string={"limit": 3, "before": 5}, headers=h).json
    assert [r["seq"] for r in page["records"]] == [4, 3, 2]
    one = c.get("/api/v1/audit/records", query_string={"case_id": "case3"}, headers=h).json["records"]
    assert [r["seq"] for r in one] == [4]
    assert c.get("/api/v1/audit/records", query_string={"kind": "review"}, headers=h).json["records"] == []
    r = c.get("/api/v1/audit/records", query_string={"kind": "nonsense"}, headers=h)
    assert r.status_code == 422 and r.json["field"] == "kind"
    r = c.get("/api/v1/audit/records", query_string={"since": "yesterday"}, headers=h)
    assert r.status_code == 422 and r.json["field"] == "since"
    record = c.get("/api/v1/audit/records/4", headers=h).json
    assert record["hash_ok"] and record["payload"]["n"] == 3
    assert c.get("/api/v1/audit/records/99", headers=h).status_code == 404
    assert c.get("/api/v1/audit/records", headers=token_for(c, "gp1")).status_code == 403
    verified = c.get("/api/v1/audit/verify", headers=h).json
    assert verified["ok"] and verified["mode"] == "incremental"
    bundle = c.get("/api/v1/audit/export", headers=h)
    assert bundle.status_code == 200 and bundle.data[:2] == b"PK"
    assert c.get("/api/v1/audit/public-key").data.startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("tampering", ["truncate the last record", "rewrite one record",
                                       "rewrite the whole chain consistently"])
def test_audit_verify_detects_each_tampering(stack, tampering):
    rt = stack.runtime()
    append(rt, 4)
    checkpoints.make_checkpoint(rt)
    runner = CliRunner()
    assert runner.invoke(main, ["audit", "verify"], env=stack.env).exit_code == 0
    if tampering == "truncate the last record":
        as_admin(rt, ["DELETE FROM explanation_records WHERE seq = 4"])
        expected = "missing (truncated?)"
    elif tampering == "rewrite one record":
        as_admin(rt, [("UPDATE explanation_records SET payload = :p WHERE seq = 3",
                       {"p": '{"case_id":"case2","kind":"explanation","n":42}'})])
        expected = "record_hash does not match its content"
    else:
        rewrite_consistently(rt, '{"case_id":"case1","kind":"explanation","n":999}')
        expected = "(rewritten?)"
    result = runner.invoke(main, ["audit", "verify"], env=stack.env)
    assert result.exit_code == 1 and expected in result.output, result.output
