"""Signed checkpoints of the audit chain: tamper evidence that survives a database administrator.

Every record's hash covers the one before it, so the hash of the newest record commits to
the whole chain. A checkpoint is that head (sequence number, record hash, record count, time)
signed with an Ed25519 key kept outside the database (AUDIT_SIGNING_KEY_FILE; on the embedded
default a key file created on first use). Checkpoints are written periodically by the workers
and on demand, into the database and appended to a log file outside it
(AUDIT_CHECKPOINT_LOG), after the records since the previous checkpoint have been verified.

What this proves, to anyone holding the public key and a checkpoint:
- a consistent rewrite of any record up to a signed head changes the record hash at that
  sequence number: detected;
- truncation of the chain below a signed head: detected (the signed record is missing, or
  the chain holds fewer records than signed);
- removing checkpoints from the database: detected against the checkpoint log or an exported
  bundle (keep them where the database's administrators cannot write).
What it does not prove:
- records appended after the newest checkpoint can be removed or changed unnoticed until the
  next checkpoint (CHECKPOINT_INTERVAL_S bounds that window);
- whoever holds the signing key can sign a rewritten chain: the key must not be reachable by
  the people it guards against;
- a single record's membership needs the chain up to a checkpoint (linear), where a Merkle
  tree log (RFC 9162) gives logarithmic inclusion and consistency proofs: the model to beat.

Verification is incremental: a page view re-walks only the records after the last verified
head (``audit_verifications``), checks every signature, and that each signed head is still in
the chain; a full walk is on demand. An exported bundle (records as JSON lines, checkpoints,
public key) is verified offline by ``verify_bundle`` with nothing but the public key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, text

from . import audit, permissions
from .errors import ConfigurationError, NotFound
from .models import AuditCheckpoint, AuditVerification, ExplanationRecord, utcnow
from .runtime import Runtime

CHECKPOINT_LOCK_ID = 0x44544350   # "DTCP"


# --- the key ------------------------------------------------------------------------------------
def private_key(rt: Runtime) -> Ed25519PrivateKey:
    path = rt.settings.audit_key_file
    if path is None:
        raise ConfigurationError("no AUDIT_SIGNING_KEY_FILE configured")
    if not path.exists():
        if rt.settings.env == "production":
            raise ConfigurationError(f"the audit signing key {path} does not exist; create it with "
                                     "`dermatriage audit keygen` where the database cannot reach it")
        generate_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key


def generate_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def public_key(rt: Runtime) -> Ed25519PublicKey:
    """For verifying: AUDIT_PUBLIC_KEY_FILE where set (a verifier need not hold the private
    key), else derived from the signing key."""
    path = rt.settings.audit_public_key_file
    if path is not None:
        return load_public(path.read_bytes())
    return private_key(rt).public_key()


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public(pem: bytes) -> Ed25519PublicKey:
    pub = serialization.load_pem_public_key(pem)
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return pub


def statement(seq: int, head_hash: str, records: int, signed_at: str, kid: str) -> bytes:
    """Exactly the bytes that are signed."""
    return json.dumps({"chain": "dermatriage-audit", "seq": seq, "head_hash": head_hash,
                       "records": records, "signed_at": signed_at, "key_id": kid},
                      sort_keys=True, separators=(",", ":")).encode()


def _as_dict(cp: AuditCheckpoint) -> dict:
    return {"seq": cp.seq, "head_hash": cp.head_hash, "records": cp.records, "signed_at": cp.signed_at,
            "key_id": cp.key_id, "signature": cp.signature}


def signature_ok(pub: Ed25519PublicKey, cp: dict) -> bool:
    try:
        pub.verify(base64.b64decode(cp["signature"]),
                   statement(cp["seq"], cp["head_hash"], cp["records"], cp["signed_at"], cp["key_id"]))
        return True
    except (InvalidSignature, ValueError, KeyError):
        return False


# --- writing checkpoints -------------------------------------------------------------------------
def make_checkpoint(rt: Runtime) -> dict:
    """Verify the records since the previous checkpoint, then sign the head. Returns the new
    checkpoint, or {"skipped": why} when nothing was added or the chain does not verify."""
    key = private_key(rt)
    kid = key_id(key.public_key())
    with rt.transaction() as s:
        if s.bind.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHECKPOINT_LOCK_ID})
        last = s.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1))
        head = s.scalar(select(ExplanationRecord).order_by(ExplanationRecord.seq.desc()).limit(1))
        start = (0, audit.GENESIS)
        if last is not None:
            at = s.get(ExplanationRecord, last.seq)
            if at is None or at.record_hash != last.head_hash:
                return {"skipped": f"the chain no longer holds the signed head at record {last.seq}"}
            start = (last.seq, last.head_hash)
        if head is None or (last is not None and last.seq == head.seq):
            return {"skipped": "no records since the last checkpoint"}
        report = audit.verify(s, rt.store, check_objects=False, after=start)
        if not report.ok:
            return {"skipped": f"the chain is broken at record {report.first_broken['seq']}"}
        records = s.scalar(select(func.count()).select_from(ExplanationRecord).where(
            ExplanationRecord.seq <= head.seq))
        signed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        signature = base64.b64encode(key.sign(statement(head.seq, head.record_hash, records, signed_at,
                                                        kid))).decode()
        cp = AuditCheckpoint(seq=head.seq, head_hash=head.record_hash, records=records,
                             signed_at=signed_at, key_id=kid, signature=signature)
        s.add(cp)
        s.flush()
        out = _as_dict(cp)
    if rt.settings.checkpoint_log is not None:
        rt.settings.checkpoint_log.parent.mkdir(parents=True, exist_ok=True)
        with open(rt.settings.checkpoint_log, "a") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")
    return out


def periodic_checkpoint(rt: Runtime) -> dict:
    """The workers' periodic job (examined: 1 when a checkpoint was written)."""
    result = make_checkpoint(rt)
    return {"examined": 0 if "skipped" in result else 1, **result}


# --- verifying ------------------------------------------------------------------------------------
def _logged_checkpoints(rt: Runtime) -> list[dict]:
    path = rt.settings.checkpoint_log
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify(rt: Runtime, user, full: bool = False, check_objects: bool = True) -> dict:
    """Incremental by default: the records after the last verified head, every checkpoint's
    signature, every signed head still in the chain, none missing against the log file."""
    if user is not None:
        permissions.require(user, permissions.VERIFY_AUDIT)
    pub = public_key(rt)
    problems: list[str] = []
    with rt.read() as s:
        mark = None if full else s.scalar(select(AuditVerification).order_by(AuditVerification.id.desc())
                                          .limit(1))
        rows = s.execute(select(AuditCheckpoint, ExplanationRecord.record_hash)
                         .outerjoin(ExplanationRecord, ExplanationRecord.seq == AuditCheckpoint.seq)
                         .order_by(AuditCheckpoint.seq)).all()
        cps = [_as_dict(c) for c, _ in rows]
        head_seq = s.scalar(select(func.max(ExplanationRecord.seq))) or 0
        for (cp, found), d in zip(rows, cps):
            # Signatures: all of them in a full check, those since the last one otherwise.
            if (full or mark is None or cp.id > mark.checkpoints_seen) and not signature_ok(pub, d):
                problems.append(f"checkpoint at record {cp.seq}: the signature does not verify")
            if found is None:
                problems.append(f"record {cp.seq}, signed at {cp.signed_at}, is missing (truncated?)")
            elif found != cp.head_hash:
                problems.append(f"record {cp.seq} differs from the head signed at {cp.signed_at} "
                                "(rewritten?)")
        if full and cps:
            count = s.scalar(select(func.count()).select_from(ExplanationRecord).where(
                ExplanationRecord.seq <= cps[-1]["seq"]))
            if count != cps[-1]["records"]:
                problems.append(f"the chain holds {count} records up to record {cps[-1]['seq']}; "
                                f"{cps[-1]['records']} were signed")
        last_cp_id = max((c.id for c, _ in rows), default=0)
        in_db = {(c["seq"], c["head_hash"]) for c in cps}
        for cp in _logged_checkpoints(rt):
            if (cp["seq"], cp["head_hash"]) not in in_db:
                problems.append(f"checkpoint at record {cp['seq']} is in the checkpoint log but not "
                                "in the database")
        start = (0, audit.GENESIS)
        if mark is not None:
            rec = s.get(ExplanationRecord, mark.seq)
            if rec is not None and rec.record_hash == mark.head_hash:
                start = (mark.seq, mark.head_hash)
            else:
                problems.append(f"record {mark.seq}, verified at {mark.verified_at.isoformat()}, changed")
        report = audit.verify(s, rt.store, check_objects=check_objects, after=start)
    ok = report.ok and not problems
    moved = mark is None or report.head[0] != mark.seq or last_cp_id != mark.checkpoints_seen
    if ok and report.head is not None and report.head[0] > 0 and moved:
        with rt.transaction() as s:
            s.add(AuditVerification(seq=report.head[0], head_hash=report.head[1], full=full,
                                    checkpoints_seen=last_cp_id, verified_at=utcnow()))
    return {"ok": ok, "mode": "full" if full else "incremental", "from_record": start[0],
            "records_walked": report.records, "objects_checked": report.objects, "newest_record": head_seq,
            "checkpoints": len(cps), "latest_checkpoint": cps[-1] if cps else None,
            "first_broken": report.first_broken, "problems": problems, "key_id": key_id(pub)}


# --- bundles ----------------------------------------------------------------------------------------
def export_bundle(rt: Runtime, user, out: Path) -> dict:
    """A zip with records.jsonl, checkpoints.jsonl and public_key.pem: enough to verify the
    chain offline, with the public key obtained independently (``audit public-key``); and
    model_events.jsonl, every change of the model in service (who, when, why, evidence)."""
    if user is not None:
        permissions.require(user, permissions.VERIFY_AUDIT)
    pem = public_pem(public_key(rt))
    buf = io.BytesIO()
    with rt.read() as s, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        lines, last = [], 0
        while True:
            rows = s.scalars(select(ExplanationRecord).where(ExplanationRecord.seq > last)
                             .order_by(ExplanationRecord.seq).limit(1000)).all()
            if not rows:
                break
            for r in rows:
                lines.append(json.dumps({"seq": r.seq, "kind": r.kind.value, "case_id": r.case_id,
                                         "prediction_id": r.prediction_id, "review_id": r.review_id,
                                         "payload": r.payload, "prev_hash": r.prev_hash,
                                         "record_hash": r.record_hash, "created_at": r.created_at.isoformat()},
                                        sort_keys=True))
            last = rows[-1].seq
        cps = [json.dumps(_as_dict(c), sort_keys=True)
               for c in s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))]
        z.writestr("records.jsonl", "\n".join(lines) + ("\n" if lines else ""))
        z.writestr("checkpoints.jsonl", "\n".join(cps) + ("\n" if cps else ""))
        model_events = [json.dumps(e, sort_keys=True) for e in reversed(registry_events(s))]
        z.writestr("model_events.jsonl", "\n".join(model_events) + ("\n" if model_events else ""))
        z.writestr("public_key.pem", pem)
        z.writestr("README.txt", "DermaTriage audit bundle. Verify offline with\n"
                   "  dermatriage audit verify-bundle THIS.zip --public-key KEY.pem\n"
                   "using a public key obtained independently of this file.\n")
    Path(out).write_bytes(buf.getvalue())
    return {"out": str(out), "records": len(lines), "checkpoints": len(cps), "model_events": len(model_events)}


def registry_events(s) -> list[dict]:
    """Every model registry change, newest first (the bundle lists them oldest first)."""
    from .models import ModelEvent
    from .registry import event_view
    return [event_view(e) for e in s.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()))]


def verify_bundle(path: Path, public_key: bytes) -> dict:
    """Offline: re-hash every record from the genesis, and check every checkpoint against the
    given public key and the records. Needs nothing but the bundle and the key."""
    pub = load_public(public_key)
    problems: list[str] = []
    with zipfile.ZipFile(path) as z:
        records = [json.loads(x) for x in z.read("records.jsonl").decode().splitlines() if x.strip()]
        cps = [json.loads(x) for x in z.read("checkpoints.jsonl").decode().splitlines() if x.strip()]
    prev, by_seq = audit.GENESIS, {}
    for r in records:
        if r["prev_hash"] != prev:
            problems.append(f"record {r['seq']}: prev_hash does not match the previous record")
            break
        if audit.chain_hash(r["prev_hash"], r["payload"]) != r["record_hash"]:
            problems.append(f"record {r['seq']}: record_hash does not match its content")
            break
        by_seq[r["seq"]] = r["record_hash"]
        prev = r["record_hash"]
    for cp in cps:
        if cp["key_id"] != key_id(pub) or not signature_ok(pub, cp):
            problems.append(f"checkpoint at record {cp['seq']}: not signed by this key")
        elif by_seq.get(cp["seq"]) != cp["head_hash"]:
            problems.append(f"checkpoint at record {cp['seq']}: the bundle's record differs or is missing")
    if cps and len(records) < cps[-1]["records"]:
        problems.append(f"the bundle holds {len(records)} records; {cps[-1]['records']} were signed")
    return {"ok": not problems, "records": len(records), "checkpoints": len(cps),
            "signed_records": cps[-1]["records"] if cps else 0, "problems": problems}


def get_record(rt: Runtime, user, seq: int) -> dict:
    if user is not None:
        permissions.require(user, permissions.VERIFY_AUDIT)
    with rt.read() as s:
        r = s.get(ExplanationRecord, seq)
        if r is None:
            raise NotFound(f"no audit record {seq}")
        return {"seq": r.seq, "kind": r.kind.value, "case_id": r.case_id, "prediction_id": r.prediction_id,
                "review_id": r.review_id, "payload": json.loads(r.payload), "prev_hash": r.prev_hash,
                "record_hash": r.record_hash, "created_at": r.created_at.isoformat(),
                "hash_ok": audit.chain_hash(r.prev_hash, r.payload) == r.record_hash}
