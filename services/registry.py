"""The model registry: which model serves, which one is watched beside it, and how it got
there, in the database, with every artifact in the object store under its weights' hash.

- ``register`` copies a built model (weights and card) into the object store and records it
  as a ``candidate``; ``shadow`` marks the one model analysed beside the champion;
  ``promote`` makes a version the ``champion`` (the one before it is ``retired``, and stays
  where ``rollback`` can bring it back); ``rollback`` returns to the champion before the
  current one's promotion.
- Promotion is gated on evidence: the card's out-of-fold figures at or above the floors
  (``FLOORS``), and, where there is a champion, non-inferiority on the reviewed cases both
  models read (services/comparison.py; ``PROMOTION_MARGIN`` and ``PROMOTION_MIN_REVIEWED``).
  A promotion the gate refuses needs an explicit override with a reason; the refusal's
  evidence is kept with it.
- Every change is an append-only ``ModelEvent``: who, when, why, and the evidence as it stood;
  so is every `model evaluate` report kept as a version's evidence (``add_evaluation``).
- Workers follow the champion (``champion``, cached for ``CHAMPION_TTL_S``; ``fetch`` brings
  its artifact to a local cache and checks its hash): a promotion or a rollback reaches every
  worker within seconds, without a restart (services/analysis.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import Conflict, NotFound, Unavailable, ValidationError
from .models import ModelEvent, ModelVersion, utcnow
from .runtime import Runtime
from .storage import StorageError

log = logging.getLogger(__name__)

CANDIDATE, SHADOW, CHAMPION, RETIRED = "candidate", "shadow", "champion", "retired"
CHAMPION_TTL_S = 1.0
# The in-source floors a champion's out-of-fold figures must meet (the card's metrics):
# what the issue tracker and SCIENCE.md hold the served model to.
FLOORS = {
    "BCC AUC": (("out_of_fold", "BCC", "auc"), 0.95),
    "melanoma AUC": (("out_of_fold", "diagnoses", "mel", "auc"), 0.88),
    "pigment network AUC": (("out_of_fold", "PN", "auc"), 0.87),
    "arborizing telangiectasia AUC": (("out_of_fold", "AT", "auc"), 0.90),
    "balanced accuracy (7 diagnoses)": (("out_of_fold", "balanced_accuracy_7"), 0.70),
}


@dataclass(frozen=True)
class Champion:
    id: str
    name: str
    version: str
    weights_sha256: str
    weights_key: str
    card_key: str


def _label(v: ModelVersion) -> str:
    return f"{v.name} {v.version}"


def view(v: ModelVersion) -> dict:
    return {"id": v.id, "name": v.name, "version": v.version, "status": v.status,
            "weights_sha256": v.weights_sha256, "registered_by": v.registered_by,
            "registered_at": v.registered_at.isoformat(), "evidence": v.evidence}


def event_view(e: ModelEvent) -> dict:
    return {"id": e.id, "at": e.at.isoformat(), "action": e.action, "version_id": e.version_id,
            "model": e.label, "previous_id": e.previous_id, "by": e.actor, "reason": e.reason,
            "evidence": e.evidence}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _evidence(card: dict) -> dict:
    metrics = card.get("metrics") or {}
    return {"out_of_fold": metrics.get("out_of_fold"), "out_of_source": metrics.get("out_of_source"),
            "evaluations": []}


def register(rt: Runtime, weights: Path, actor: str) -> tuple[dict, bool]:
    """(the version, whether this call registered it). The card beside the weights must name
    their hash: a mismatched pair is refused, never stored."""
    from .diagnosis.artifact import card_path
    weights = Path(weights)
    if not weights.is_file():
        raise ValidationError(f"no model file at {weights}", "path")
    cpath = card_path(weights)
    if not cpath.is_file():
        raise ValidationError(f"no model card beside {weights} (expected {cpath.name})", "path")
    data, card_bytes = weights.read_bytes(), cpath.read_bytes()
    try:
        card = json.loads(card_bytes)
    except ValueError:
        raise ValidationError(f"{cpath.name} is not JSON", "path") from None
    sha = _sha256(data)
    if card.get("weights_sha256") != sha:
        raise ValidationError(f"{cpath.name} names weights {str(card.get('weights_sha256'))[:12]}..., the file "
                              f"is {sha[:12]}...: the card and the weights do not belong together", "path")
    name, version = str(card.get("name") or ""), str(card.get("version") or "")
    if not name or not version:
        raise ValidationError(f"{cpath.name} has no name or version", "path")
    with rt.read() as s:
        existing = s.scalar(select(ModelVersion).where(ModelVersion.weights_sha256 == sha))
        if existing is not None:
            return view(existing), False
        clash = s.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
        if clash is not None:
            raise Conflict(f"{name} {version} is already registered with other weights "
                           f"({clash.weights_sha256[:12]}...): a version is immutable, build it as a new version")
    wkey, ckey = f"models/{sha}.pt", f"models/{sha}.card.json"
    rt.store.put(wkey, data, "application/octet-stream")
    rt.store.put(ckey, card_bytes, "application/json")
    try:
        with rt.transaction() as s:
            v = ModelVersion(name=name, version=version, weights_sha256=sha, weights_key=wkey, card_key=ckey,
                             card=card, status=CANDIDATE, registered_by=actor[:80], registered_at=utcnow(),
                             evidence=_evidence(card))
            s.add(v)
            s.flush()
            s.add(ModelEvent(at=utcnow(), action="register", version_id=v.id, label=_label(v), actor=actor[:80],
                             reason="", evidence={"weights_sha256": sha, **v.evidence}))
            return view(v), True
    except IntegrityError:          # registered meanwhile by someone else: the same artifact
        with rt.read() as s:
            return view(s.scalar(select(ModelVersion).where(ModelVersion.weights_sha256 == sha))), False


def _find(s: Session, ref: str) -> ModelVersion:
    """A version by id, "name version", "name:version", version, or a weights-hash prefix."""
    ref = ref.strip()
    name, _, version = ref.replace(":", " ").rpartition(" ")
    found = s.scalars(select(ModelVersion).where(or_(
        ModelVersion.id == ref, ModelVersion.version == ref,
        (ModelVersion.name == name) & (ModelVersion.version == version),
        ModelVersion.weights_sha256.startswith(ref) if len(ref) >= 8 else ModelVersion.id == ref))).all()
    if not found:
        raise NotFound(f"no registered model {ref!r} (`dermatriage model list`)")
    if len(found) > 1:
        raise ValidationError(f"{ref!r} names {len(found)} models: give the id or name and version", "version")
    return found[0]


def versions(rt: Runtime) -> list[dict]:
    with rt.read() as s:
        return [view(v) for v in s.scalars(select(ModelVersion).order_by(ModelVersion.registered_at))]


def show(rt: Runtime, ref: str) -> dict:
    with rt.read() as s:
        v = _find(s, ref)
        events = s.scalars(select(ModelEvent).where(or_(ModelEvent.version_id == v.id,
                                                        ModelEvent.previous_id == v.id))
                           .order_by(ModelEvent.id)).all()
        return {**view(v), "card": v.card, "events": [event_view(e) for e in events]}


def events(rt: Runtime, limit: int = 200) -> list[dict]:
    """Newest first (the auditor's workbench and the audit export list them)."""
    with rt.read() as s:
        return [event_view(e) for e in s.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit))]


MAX_EVALUATIONS = 20


def add_evaluation(rt: Runtime, weights_sha256: str, report: dict, actor: str) -> dict | None:
    """Keep a `model evaluate` report as evidence of the registered version it ran on (the
    newest MAX_EVALUATIONS), with an event; None when that model is not registered."""
    with rt.transaction() as s:
        v = s.scalar(select(ModelVersion).where(ModelVersion.weights_sha256 == weights_sha256).with_for_update())
        if v is None:
            return None
        entry = {"at": utcnow().isoformat(), "by": actor[:80], **report}
        evidence = dict(v.evidence)
        evidence["evaluations"] = (list(evidence.get("evaluations") or []) + [entry])[-MAX_EVALUATIONS:]
        v.evidence = evidence
        s.add(ModelEvent(at=utcnow(), action="evaluate", version_id=v.id, label=_label(v), actor=actor[:80],
                         reason=str(report.get("dataset", "")), evidence=entry))
        return view(v)


def _figure(evidence: dict, path: tuple) -> float | None:
    value = evidence
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


def gate(evidence: dict) -> tuple[bool, list[str], dict]:
    """(passes, why not, the figures read): every floor met by the out-of-fold figures."""
    problems, read = [], {}
    for label, (path, floor) in FLOORS.items():
        value = _figure(evidence, path)
        read[label] = {"value": value, "floor": floor}
        if value is None:
            problems.append(f"{label}: not measured (floor {floor})")
        elif value < floor:
            problems.append(f"{label}: {value:.4f} below the floor {floor}")
    return not problems, problems, read


def _verified(rt: Runtime, v: ModelVersion) -> None:
    """The stored weights are the registered ones (a corrupted or missing artifact is never
    promoted)."""
    try:
        data = rt.store.get(v.weights_key)
    except StorageError as exc:
        raise ValidationError(f"{_label(v)}: its weights are not in the object store ({exc})", "version") from exc
    if _sha256(data) != v.weights_sha256:
        raise ValidationError(f"{_label(v)}: the stored weights do not match their registered hash "
                              "(corrupted); register the model again", "version")


def _current(s: Session) -> ModelVersion | None:
    return s.scalar(select(ModelVersion).where(ModelVersion.status == CHAMPION).with_for_update())


def shadow(rt: Runtime, ref: str, actor: str, reason: str = "") -> dict:
    """The version analysed beside the champion from now on (the shadow before it goes back
    to candidate)."""
    with rt.transaction() as s:
        v = _find(s, ref)
        if v.status == CHAMPION:
            raise Conflict(f"{_label(v)} is the champion; shadow a candidate")
        if v.status == SHADOW:
            return view(v)
        for old in s.scalars(select(ModelVersion).where(ModelVersion.status == SHADOW)):
            old.status = CANDIDATE
        s.flush()
        v.status = SHADOW
        s.add(ModelEvent(at=utcnow(), action="shadow", version_id=v.id, label=_label(v), actor=actor[:80],
                         reason=reason, evidence=v.evidence))
        result = view(v)
    forget_champion(rt)
    return result


def promote(rt: Runtime, ref: str, actor: str, reason: str, override: bool = False) -> dict:
    """Make ``ref`` the champion, on evidence (or on an explicit override with a reason)."""
    if not reason.strip():
        raise ValidationError("a promotion needs a reason (--reason)", "reason")
    with rt.read() as s:
        v = _find(s, ref)
        before = s.scalar(select(ModelVersion.id).where(ModelVersion.status == CHAMPION))
    if v.status == CHAMPION:
        raise Conflict(f"{_label(v)} is already the champion")
    _verified(rt, v)
    passes, problems, figures = gate(v.evidence)
    comparison = None
    if before is not None:
        from .comparison import compare
        comparison = compare(rt, before, v.id, rt.settings.promotion_margin, rt.settings.promotion_min_reviewed)
        if not comparison["non_inferior"]:
            passes = False
            problems.append(f"not shown non-inferior to the champion on reviewed cases: {comparison['why']}")
        comparison.pop("disagreements", None)
    if not passes and not override:
        raise ValidationError("the promotion gate refuses " + _label(v) + ": " + "; ".join(problems)
                              + ". Promote with --override and a reason to go ahead anyway", "version")
    action = "promote" if passes else "override"
    try:
        with rt.transaction() as s:
            current = _current(s)
            if (current.id if current else None) != before:
                raise Conflict("another promotion or rollback happened meanwhile; look again "
                               "(`dermatriage model list`) and retry")
            target = s.get(ModelVersion, v.id)
            if current is not None:
                current.status = RETIRED
                s.flush()
            target.status = CHAMPION
            s.add(ModelEvent(at=utcnow(), action=action, version_id=target.id, label=_label(target),
                             previous_id=current.id if current else None, actor=actor[:80], reason=reason,
                             evidence={"gate": {"passes": passes, "problems": problems, "figures": figures,
                                                "comparison": comparison}, **target.evidence}))
            s.flush()
            result = view(target)
    except IntegrityError as exc:     # the one-champion index: a concurrent promotion won
        raise Conflict("another promotion happened at the same moment; look again and retry") from exc
    forget_champion(rt)
    return {**result, "action": action, "previous": before}


def rollback(rt: Runtime, actor: str, reason: str) -> dict:
    """Back to the champion before the current one was promoted."""
    if not reason.strip():
        raise ValidationError("a rollback needs a reason (--reason)", "reason")
    with rt.read() as s:
        current = s.scalar(select(ModelVersion).where(ModelVersion.status == CHAMPION))
        if current is None:
            raise Conflict("there is no champion to roll back")
        promoted = s.scalar(select(ModelEvent).where(ModelEvent.version_id == current.id,
                                                     ModelEvent.action.in_(("promote", "override")))
                            .order_by(ModelEvent.id.desc()).limit(1))
        if promoted is None or promoted.previous_id is None:
            raise Conflict(f"nothing to roll back to: {_label(current)} was the first champion")
        previous = s.get(ModelVersion, promoted.previous_id)
    _verified(rt, previous)
    try:
        with rt.transaction() as s:
            now_current = _current(s)
            if now_current is None or now_current.id != current.id:
                raise Conflict("another promotion or rollback happened meanwhile; look again and retry")
            now_current.status = RETIRED
            s.flush()
            back = s.get(ModelVersion, previous.id)
            back.status = CHAMPION
            s.add(ModelEvent(at=utcnow(), action="rollback", version_id=back.id, label=_label(back),
                             previous_id=now_current.id, actor=actor[:80], reason=reason,
                             evidence={"from": _label(now_current), **back.evidence}))
            s.flush()
            result = view(back)
    except IntegrityError as exc:
        raise Conflict("another promotion happened at the same moment; look again and retry") from exc
    forget_champion(rt)
    return {**result, "action": "rollback", "previous": current.id}


# --- what workers serve ---------------------------------------------------------------------
_cache_lock = threading.Lock()


def forget_champion(rt: Runtime) -> None:
    for status in (CHAMPION, SHADOW):
        rt.__dict__.pop(f"_{status}_cache", None)


def _ref(v: ModelVersion) -> Champion:
    return Champion(v.id, v.name, v.version, v.weights_sha256, v.weights_key, v.card_key)


def _holding(rt: Runtime, status: str) -> Champion | None:
    """The version with ``status`` now, read at most every CHAMPION_TTL_S per process."""
    now = time.monotonic()
    key = f"_{status}_cache"
    cached = rt.__dict__.get(key)
    if cached is not None and now - cached[0] < CHAMPION_TTL_S:
        return cached[1]
    with _cache_lock:
        with rt.read() as s:
            v = s.scalar(select(ModelVersion).where(ModelVersion.status == status))
            found = None if v is None else _ref(v)
        rt.__dict__[key] = (now, found)
    return found


def champion(rt: Runtime) -> Champion | None:
    """The champion now; None while the registry is empty (the worker then serves the file
    at DERMATRIAGE_MODEL_PATH)."""
    return _holding(rt, CHAMPION)


def shadow_model(rt: Runtime) -> Champion | None:
    """The shadow now, or None."""
    return _holding(rt, SHADOW)


def by_id(rt: Runtime, version_id: str) -> tuple[Champion, str] | None:
    """A version as a loadable reference, and its status now."""
    with rt.read() as s:
        v = s.get(ModelVersion, version_id)
        return None if v is None else (_ref(v), v.status)


def fetch(rt: Runtime, model: Champion) -> Path:
    """The model's weights as a local file (its card beside it), from the object store into
    the data folder's model cache, checked against the registered hash."""
    from .diagnosis.artifact import card_path
    folder = rt.settings.data_dir / "model-cache"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model.weights_sha256}.pt"
    if path.is_file() and card_path(path).is_file():
        return path
    data = rt.store.get(model.weights_key)
    if _sha256(data) != model.weights_sha256:
        # Unavailable, not a refusal: the job waits and is retried (the worker logs why) while
        # an operator rolls back or registers the model again.
        raise Unavailable(f"{model.name} {model.version}: the stored weights do not match their "
                          "registered hash (corrupted); roll back or register the model again")
    card = rt.store.get(model.card_key)
    for target, content in ((card_path(path), card), (path, data)):     # the weights last: they mark it done
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(content)
        tmp.replace(target)
    return path
