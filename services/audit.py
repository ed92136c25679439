"""The audit trail: an append-only hash chain of explanation records (one model analysis
each) and review records (one human decision each), and its verification.

Each record stores its payload as canonical JSON text (sorted keys, no spaces) and
record_hash = sha256(prev_hash || payload). prev_hash is UNIQUE, so two writers that read
the same tail cannot both append: one fails and retries, and the chain never forks. On
Postgres an advisory lock serialises appends up front; SQLite's BEGIN IMMEDIATE does the
same. Triggers (see the migration) refuse UPDATE and DELETE, so a record can only be added.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from . import permissions
from .models import ExplanationRecord
from .vocabulary import RecordKind
from .runtime import Runtime
from .storage import ObjectStore, StorageError

GENESIS = "0" * 64
CHAIN_LOCK_ID = 0x44455254   # "DERT": the Postgres advisory lock for appends


def canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, payload_text: str) -> str:
    return hashlib.sha256((prev_hash + payload_text).encode()).hexdigest()


def append(session: Session, case_id: str, payload: dict, *, prediction_id: str | None = None,
           review_id: str | None = None) -> ExplanationRecord:
    """Add a record at the end of the chain, inside the caller's transaction: an explanation
    (give its prediction) or a human decision (give its review)."""
    if (prediction_id is None) == (review_id is None):
        raise ValueError("an audit record is about one prediction or one review")
    if session.bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_ID})
    tail = session.scalar(select(ExplanationRecord.record_hash)
                          .order_by(ExplanationRecord.seq.desc()).limit(1))
    prev = tail or GENESIS
    body = canonical(payload)
    kind = RecordKind.EXPLANATION if prediction_id is not None else RecordKind.REVIEW
    record = ExplanationRecord(kind=kind, case_id=case_id, prediction_id=prediction_id,
                               review_id=review_id, payload=body, prev_hash=prev,
                               record_hash=chain_hash(prev, body))
    session.add(record)
    session.flush()
    return record


def stored_objects(payload: dict) -> list[tuple[str, dict]]:
    """The objects a record vouches for by sha256: an explanation's map overlays and map
    array, a review's region masks."""
    out = [(f"map object for {t}", ref) for t, ref in sorted(payload.get("maps", {}).items())]
    if payload.get("map_array"):
        out.append(("map array", payload["map_array"]))
    out += [(f"region mask for {c}", ref) for c, ref in sorted(payload.get("regions", {}).items())]
    return out


@dataclass
class VerifyReport:
    records: int
    objects: int
    ok: bool
    first_broken: dict | None = None
    head: tuple[int, str] | None = None       # (seq, record hash) of the last record verified

    def to_dict(self) -> dict:
        return {"records": self.records, "objects_checked": self.objects, "ok": self.ok,
                "first_broken": self.first_broken}


def _batches(session: Session, last_seq: int, batch: int):
    """(seq, case_id, prev_hash, payload, record_hash) rows after ``last_seq``, in order.

    On PostgreSQL a second connection reads the next batch while this one hashes the last:
    the server's work (reading and decompressing ~4 KB payloads) and Python's overlap on two
    cores. The chain only grows at its end, so reading ahead by sequence number is safe."""
    columns = (ExplanationRecord.seq, ExplanationRecord.case_id, ExplanationRecord.prev_hash,
               ExplanationRecord.payload, ExplanationRecord.record_hash)

    def query(after: int):
        return (select(*columns).where(ExplanationRecord.seq > after)
                .order_by(ExplanationRecord.seq).limit(batch))
    if session.bind.dialect.name != "postgresql":
        while True:
            rows = session.execute(query(last_seq)).all()
            if not rows:
                return
            yield rows
            last_seq = rows[-1][0]
    import queue as queues
    import threading
    ahead: queues.Queue = queues.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        after = last_seq
        try:
            with session.bind.connect() as conn:
                while not stop.is_set():
                    rows = conn.execute(query(after)).all()
                    ahead.put(rows)
                    if not rows:
                        return
                    after = rows[-1][0]
        except Exception as exc:  # handed to the consumer, which raises it
            ahead.put(exc)
    reader = threading.Thread(target=read, name="audit-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            rows = ahead.get()
            if isinstance(rows, Exception):
                raise rows
            if not rows:
                return
            yield rows
    finally:
        stop.set()
        while reader.is_alive():           # unblock a reader waiting to put, then let it end
            try:
                ahead.get_nowait()
            except queues.Empty:
                pass
            reader.join(0.005)


def verify(session: Session, store: ObjectStore, check_objects: bool = True,
           batch: int = 5000, after: tuple[int, str] = (0, GENESIS)) -> VerifyReport:
    """Re-walk the chain from the start, or from ``after`` = (seq, record hash) of a record
    verified before; stop at the first broken link or object.

    Reads plain columns in large keyset batches (no ORM objects), read ahead on PostgreSQL,
    and hashes bytes directly: a million records take about 20 s here (docs/benchmarks.md)."""
    last_seq, prev = after
    count = objects = 0
    sha256 = hashlib.sha256
    for rows in _batches(session, last_seq, batch):
        for seq, case_id, prev_hash, payload, record_hash in rows:
            def broken(problem: str, **extra) -> VerifyReport:
                return VerifyReport(count, objects, False,
                                    {"seq": seq, "case_id": case_id, "problem": problem, **extra})
            if prev_hash != prev:
                return broken("prev_hash does not match the previous record's hash",
                              expected=prev, found=prev_hash)
            if sha256((prev_hash + payload).encode()).hexdigest() != record_hash:
                return broken("record_hash does not match its content")
            if check_objects:
                for what, ref in stored_objects(json.loads(payload)):
                    try:
                        data = store.get(ref["key"])
                    except StorageError as exc:
                        return broken(f"{what} missing: {exc}", key=ref["key"])
                    if sha256(data).hexdigest() != ref["sha256"]:
                        return broken(f"{what} altered", key=ref["key"])
                    objects += 1
            prev = record_hash
            last_seq = seq
            count += 1
    return VerifyReport(count, objects, True, head=(last_seq, prev))


def browse(rt: Runtime, user, kind: str | None = None, case_id: str | None = None,
           model_version: str | None = None, since=None, until=None, agreement: str | None = None,
           before: int | None = None, limit: int = 50) -> dict:
    """The auditor's list of records, newest first, filtered; ``next`` continues it."""
    from sqlalchemy import and_, false
    from .models import Prediction, Review
    from .vocabulary import RecordKind, ReviewPurpose

    if user is not None:
        permissions.require(user, permissions.VERIFY_AUDIT)
    q = (select(ExplanationRecord, Prediction.model_name, Prediction.model_version, Review.diagnosis,
                Review.override_reason, Review.purpose, Review.amends_id)
         .outerjoin(Prediction, Prediction.id == ExplanationRecord.prediction_id)
         .outerjoin(Review, Review.id == ExplanationRecord.review_id)
         .order_by(ExplanationRecord.seq.desc()).limit(min(max(limit, 1), 500) + 1))
    if kind:
        q = q.where(ExplanationRecord.kind == RecordKind(kind))
    if case_id:
        q = q.where(ExplanationRecord.case_id == case_id)
    if model_version:
        q = q.where(Prediction.model_version == model_version)
    if since:
        q = q.where(ExplanationRecord.created_at >= since)
    if until:
        q = q.where(ExplanationRecord.created_at < until)
    if agreement == "override":
        q = q.where(and_(Review.purpose == ReviewPurpose.CLINICAL, Review.override_reason != ""))
    elif agreement == "agree":
        q = q.where(and_(Review.purpose == ReviewPurpose.CLINICAL, Review.override_reason == ""))
    elif agreement:
        q = q.where(false())
    if before:
        q = q.where(ExplanationRecord.seq < before)
    with rt.read() as s:
        rows = s.execute(q).all()
    more = len(rows) > min(max(limit, 1), 500)
    rows = rows[:min(max(limit, 1), 500)]
    out = []
    for rec, model_name, version, diagnosis, override, purpose, amends in rows:
        item = {"seq": rec.seq, "kind": rec.kind.value, "case_id": rec.case_id,
                "created_at": rec.created_at.isoformat(), "record_hash": rec.record_hash}
        if rec.kind == RecordKind.EXPLANATION:
            item["model"] = f"{model_name} {version}" if model_name else None
        else:
            item.update(decision=diagnosis.value if diagnosis else None, purpose=purpose.value if purpose else None,
                        override=bool(override), amendment=amends is not None)   # a reason = an override
        out.append(item)
    return {"records": out, "next": out[-1]["seq"] if more else None}
