"""Labelling sets: several dermatologists label the same cases independently, and their labels
are merged into one reference per pattern and for the diagnosis (Dawid-Skene, consensus.py).

This is how the five patterns without real labels (UL, BO, MG, ML, SW) get them: the export
writes images, reference labels and region masks in the ``labels.csv`` layout that
``dermatriage model train|evaluate --dataset`` read. Readers are blind to each other (a
reader sees only their own labels) and, when the set says so, to the AI.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from . import permissions, review_input, reviews
from .consensus import MISSING, dawid_skene, majority_vote, reader_figures
from .errors import Conflict, Forbidden, NotFound, ValidationError
from .models import (Case, LabellingSet, LabellingSetCase, LabellingSetReader, Review, User)
from .runtime import Runtime
from .vocabulary import Diagnosis, ReviewPurpose, Role, values

PATTERN_CODES = review_input.PATTERN_CODES
DIAGNOSES = values(Diagnosis)
HAM_DIAGNOSES = tuple(d for d in DIAGNOSES if d != Diagnosis.OTHER)


# --- sets --------------------------------------------------------------------------------------
def _find(session, ref: str) -> LabellingSet:
    found = session.get(LabellingSet, ref) or session.scalar(
        select(LabellingSet).where(LabellingSet.name == ref))
    if found is None:
        raise NotFound(f"no labelling set {ref!r}")
    return found


def _readers(session, usernames: Sequence[str]) -> list[User]:
    out = []
    for name in usernames:
        user = session.scalar(select(User).where(User.username == name))
        if user is None or user.role != Role.DERMATOLOGIST or not user.active:
            raise ValidationError(f"{name!r} is not an active dermatologist", "readers")
        out.append(user)
    return out


def create_set(rt: Runtime, admin: User | None, name: str, readers: Sequence[str],
               case_ids: Sequence[str], blind_to_ai: bool = False) -> dict:
    """A new set (admin; ``admin=None`` from the operator's CLI)."""
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise ValidationError("name is required, at most 80 characters", "name")
    if len(set(readers)) < 2:
        raise ValidationError("a labelling set needs at least two readers", "readers")
    try:
        with rt.transaction() as session:
            users = _readers(session, sorted(set(readers)))
            for cid in case_ids:
                if session.get(Case, cid) is None:
                    raise ValidationError(f"no case {cid}", "cases")
            owner = admin.id if admin is not None else users[0].id
            lset = LabellingSet(name=name, blind_to_ai=bool(blind_to_ai), created_by=owner)
            session.add(lset)
            session.flush()
            session.add_all([LabellingSetReader(set_id=lset.id, user_id=u.id) for u in users])
            session.add_all([LabellingSetCase(set_id=lset.id, case_id=c) for c in dict.fromkeys(case_ids)])
            set_id = lset.id
    except IntegrityError:
        raise Conflict(f"a labelling set named {name!r} exists") from None
    return get_set(rt, admin, set_id)


def add_cases(rt: Runtime, admin: User | None, ref: str, case_ids: Sequence[str]) -> dict:
    if admin is not None:
        permissions.require(admin, permissions.ADMINISTER)
    with rt.transaction() as session:
        lset = _find(session, ref)
        have = set(session.scalars(select(LabellingSetCase.case_id).where(LabellingSetCase.set_id == lset.id)))
        for cid in dict.fromkeys(case_ids):
            if session.get(Case, cid) is None:
                raise ValidationError(f"no case {cid}", "cases")
            if cid not in have:
                session.add(LabellingSetCase(set_id=lset.id, case_id=cid))
        set_id = lset.id
    return get_set(rt, admin, set_id)


def _is_reader(session, lset: LabellingSet, user: User) -> bool:
    return session.get(LabellingSetReader, (lset.id, user.id)) is not None


def get_set(rt: Runtime, user: User | None, ref: str) -> dict:
    """Admin/auditor/CLI: cases and how many each reader has labelled. A reader: the cases and
    which of them they have labelled (never what others said)."""
    with rt.read() as session:
        lset = _find(session, ref)
        reader_rows, case_ids, heads = _contents(session, lset.id)
        out = {"id": lset.id, "name": lset.name, "blind_to_ai": lset.blind_to_ai, "cases": case_ids}
        if user is None or user.role in (Role.ADMIN, Role.AUDITOR):
            out["readers"] = [{"username": name, "labelled": sum(1 for (c, r) in heads if r == uid)}
                              for uid, name in reader_rows]
        elif user.role == Role.DERMATOLOGIST and _is_reader(session, lset, user):
            out["labelled_by_me"] = sorted(c for (c, r) in heads if r == user.id)
        else:
            raise Forbidden("only the set's readers, administrators and auditors see a labelling set")
    return out


def list_sets(rt: Runtime, user: User) -> list[dict]:
    with rt.read() as session:
        query = select(LabellingSet).order_by(LabellingSet.created_at)
        if user.role == Role.DERMATOLOGIST:
            query = query.join(LabellingSetReader, LabellingSetReader.set_id == LabellingSet.id).where(
                LabellingSetReader.user_id == user.id)
        elif user.role not in (Role.ADMIN, Role.AUDITOR):
            raise Forbidden("only dermatologists, administrators and auditors see labelling sets")
        ids = [s.id for s in session.scalars(query)]
    return [get_set(rt, user, i) for i in ids]


def _contents(session, set_id: str):
    """(reader id, username) by name, case ids sorted, and each reader's current labels."""
    readers = session.execute(select(User.id, User.username).join(
        LabellingSetReader, LabellingSetReader.user_id == User.id)
        .where(LabellingSetReader.set_id == set_id).order_by(User.username)).all()
    case_ids = sorted(session.scalars(select(LabellingSetCase.case_id).where(LabellingSetCase.set_id == set_id)))
    return readers, case_ids, _heads(session, set_id)


def _heads(session, set_id: str) -> dict[tuple[str, int], Review]:
    """Each reader's current labels per case (amendments replace what they amend)."""
    rows = session.scalars(select(Review).where(Review.labelling_set_id == set_id)).all()
    amended = {r.amends_id for r in rows}
    return {(r.case_id, r.reviewer_id): r for r in sorted(rows, key=lambda r: r.created_at)
            if r.id not in amended}


# --- labelling ---------------------------------------------------------------------------------
def record_labels(rt: Runtime, user: User, ref: str, case_id: str, body: Mapping) -> dict:
    """One reader's labels for one case of the set (again: an amendment of their own)."""
    permissions.require(user, permissions.WORK_QUEUE)
    with rt.read() as session:
        set_id = _find(session, ref).id

    def check(session, case: Case, head: Review | None) -> None:
        lset = session.get(LabellingSet, set_id)
        if not _is_reader(session, lset, user):
            raise Forbidden("you are not a reader of this labelling set")
        if session.get(LabellingSetCase, (set_id, case.id)) is None:
            raise NotFound(f"case {case.id} is not in this labelling set")
    return reviews.record(rt, user, case_id, body, ReviewPurpose.LABELLING, check, set_id=set_id)


def labelling_case(rt: Runtime, user: User, ref: str, case_id: str) -> dict:
    """What a reader sees to label a case: the case, its images and (unless the set is blind
    to the AI) the AI's analysis; their own labels so far, nobody else's."""
    from .cases import case_view

    with rt.read() as session:
        lset = _find(session, ref)
        if user.role != Role.DERMATOLOGIST or not _is_reader(session, lset, user):
            raise Forbidden("you are not a reader of this labelling set")
        if session.get(LabellingSetCase, (lset.id, case_id)) is None:
            raise NotFound(f"case {case_id} is not in this labelling set")
        case = session.get(Case, case_id)
        from .models import Prediction
        preds = None if lset.blind_to_ai else session.scalars(
            select(Prediction).where(Prediction.case_id == case_id).order_by(Prediction.created_at)).all()
        view = case_view(case, preds)
        pred = reviews.primary_prediction(session, case)
        view["labelling_set"] = {"id": lset.id, "name": lset.name, "blind_to_ai": lset.blind_to_ai}
        view["ai"] = None if lset.blind_to_ai else reviews.ai_view(session, pred)
        view["region_image"] = pred.id if pred is not None and pred.map_array else None
        view["region_size"] = pred.map_array["shape"][-1] if pred is not None and pred.map_array else None
        mine = _heads(session, lset.id).get((case_id, user.id))
        view["my_labels"] = None if mine is None else reviews.review_view(mine, user.username)
        if lset.blind_to_ai and view["my_labels"]:
            view["my_labels"]["ai"] = view["my_labels"]["agreement"] = None
    return view


# --- consensus ---------------------------------------------------------------------------------
def consensus(rt: Runtime, user: User | None, ref: str) -> dict:
    """Dawid-Skene per pattern (present/absent; unsure is no label) and for the diagnosis,
    with majority voting beside it and each reader's estimated reliability."""
    if user is not None and user.role not in (Role.ADMIN, Role.AUDITOR):
        raise Forbidden("only administrators and auditors see the merged labels of a set")
    with rt.read() as session:
        lset = _find(session, ref)
        readers, case_ids, heads = _contents(session, lset.id)
        info = {"id": lset.id, "name": lset.name}
    col = {uid: j for j, (uid, _) in enumerate(readers)}
    row = {cid: i for i, cid in enumerate(case_ids)}
    pattern_labels = {c: np.full((len(case_ids), len(readers)), MISSING) for c in PATTERN_CODES}
    dx_labels = np.full((len(case_ids), len(readers)), MISSING)
    for (cid, uid), r in heads.items():
        if cid not in row or uid not in col:
            continue
        i, j = row[cid], col[uid]
        dx_labels[i, j] = DIAGNOSES.index(r.diagnosis.value)
        for code, call in r.patterns.items():
            if call != "unsure":
                pattern_labels[code][i, j] = int(call == "present")
    names = [name for _, name in readers]
    out = {"set": info, "readers": names, "cases": case_ids, "method": "Dawid-Skene EM",
           "patterns": {}, "labelled": {n: int((dx_labels[:, j] != MISSING).sum()) for j, n in enumerate(names)}}
    for code, labels in pattern_labels.items():
        out["patterns"][code] = _binary_consensus(labels, case_ids, names)
    out["diagnosis"] = _diagnosis_consensus(dx_labels, case_ids, names)
    return out


def _binary_consensus(labels: np.ndarray, case_ids: list[str], names: list[str]) -> dict:
    labelled = (labels != MISSING).any(1)
    if not labelled.any():
        return {"labelled_cases": 0, "reference": {}, "readers": {}}
    ds = dawid_skene(labels, 2)
    mv = majority_vote(labels, 2)
    figures = reader_figures(ds.confusion)
    return {
        "labelled_cases": int(labelled.sum()), "iterations": ds.iterations,
        "prevalence": round(float(ds.prior[1]), 4),
        "reference": {cid: {"present": bool(ds.reference[i]), "p_present": round(float(ds.posterior[i, 1]), 4),
                            "majority_vote": None if mv[i] == MISSING else bool(mv[i])}
                      for i, cid in enumerate(case_ids) if labelled[i]},
        "readers": {n: {**figures[j], "labelled": int((labels[:, j] != MISSING).sum())}
                    for j, n in enumerate(names)},
        "differs_from_majority_vote": int(sum(1 for i in range(len(case_ids))
                                              if labelled[i] and mv[i] != ds.reference[i])),
    }


def _diagnosis_consensus(labels: np.ndarray, case_ids: list[str], names: list[str]) -> dict:
    labelled = (labels != MISSING).any(1)
    if not labelled.any():
        return {"labelled_cases": 0, "reference": {}, "readers": {}}
    ds = dawid_skene(labels, len(DIAGNOSES))
    mv = majority_vote(labels, len(DIAGNOSES))
    readers = {}
    for j, n in enumerate(names):
        used = labels[:, j] != MISSING
        # per true class: how often this reader names it (confusion diagonal), where seen
        readers[n] = {"labelled": int(used.sum()),
                      "accuracy_estimate": round(float((ds.posterior[used] * ds.confusion[j].diagonal()[None, :])
                                                       .sum(1).mean()) if used.any() else 0.0, 4),
                      "recall": {d: round(float(ds.confusion[j, k, k]), 4) for k, d in enumerate(DIAGNOSES)
                                 if (ds.reference[labelled] == k).any()}}
    return {
        "labelled_cases": int(labelled.sum()), "iterations": ds.iterations,
        "reference": {cid: {"diagnosis": DIAGNOSES[ds.reference[i]],
                            "posterior": round(float(ds.posterior[i].max()), 4),
                            "majority_vote": None if mv[i] == MISSING else DIAGNOSES[mv[i]]}
                      for i, cid in enumerate(case_ids) if labelled[i]},
        "readers": readers,
        "differs_from_majority_vote": int(sum(1 for i in range(len(case_ids))
                                              if labelled[i] and mv[i] != ds.reference[i])),
    }


# --- export ------------------------------------------------------------------------------------
def export(rt: Runtime, user: User | None, ref: str, out: Path) -> dict:
    """Images, reference labels (labels.csv) and region masks of a set, for the next model.

    One row per case: its primary dermoscopic image (the one regions are drawn on), dx and
    bcc from the diagnosis reference (dx left empty for "other"), each pattern's reference as
    0/1 (empty where no reader gave a call) and its posterior. masks/<image>_<code>.png is the
    pixel-wise majority of the regions drawn by the readers who called the pattern present,
    over the analysed centre crop (see manifest.json)."""
    merged = consensus(rt, user, ref)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    from .case_access import fetch_object

    rows = []
    with rt.read() as session:
        lset = _find(session, ref)
        heads = _heads(session, lset.id)
        cases = {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(merged["cases"])))}
        plan = []
        for cid in merged["cases"]:
            dx_ref = merged["diagnosis"]["reference"].get(cid)
            if dx_ref is None:
                continue
            case = cases[cid]
            pred = reviews.primary_prediction(session, case)
            image = next((i for i in case.images if pred is not None and i.id == pred.image_id),
                         next((i for i in case.images if i.kind == "dermoscopic"), None))
            if image is None:
                continue
            regions = {code: [r.regions[code] for (c, _), r in heads.items() if c == cid and code in r.regions]
                       for code in PATTERN_CODES}
            plan.append((cid, image.id, image.object_key, image.media_type, dx_ref, regions))
    masks_written = 0
    for cid, image_id, key, media_type, dx_ref, regions in plan:
        name = f"images/{image_id}.{'jpg' if media_type == 'image/jpeg' else 'png'}"
        (out / name).write_bytes(fetch_object(rt, key))
        dx = dx_ref["diagnosis"]
        row = {"image": name, "group": cid, "dx": dx if dx in HAM_DIAGNOSES else "",
               "bcc": int(dx == Diagnosis.BCC), "p_dx": dx_ref["posterior"]}
        for code in PATTERN_CODES:
            ref_p = merged["patterns"][code]["reference"].get(cid)
            row[code] = "" if ref_p is None else int(ref_p["present"])
            row[f"p_{code}"] = "" if ref_p is None else ref_p["p_present"]
            drawn = regions[code]
            if ref_p is not None and ref_p["present"] and drawn:
                masks = [review_input.read_mask(fetch_object(rt, d["key"])) for d in drawn]
                size = min(m.shape[0] for m in masks)
                masks = [m if m.shape[0] == size else
                         np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                             (size, size), Image.Resampling.NEAREST)) > 127 for m in masks]
                majority = np.mean(masks, axis=0) >= 0.5
                if majority.any():
                    (out / "masks" / f"{image_id}_{code}.png").write_bytes(review_input.mask_png(majority))
                    masks_written += 1
        rows.append(row)
    columns = ["image", "group", "dx", "bcc", "p_dx"] + [c for code in PATTERN_CODES for c in (code, f"p_{code}")]
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    manifest = {"set": merged["set"], "readers": merged["readers"], "images": len(rows),
                "masks": masks_written, "method": merged["method"],
                "masks_cover": "the analysed centre crop (square, shorter side) of each image",
                "patterns": {c: {k: merged["patterns"][c].get(k) for k in ("labelled_cases", "prevalence", "readers")}
                             for c in PATTERN_CODES},
                "diagnosis_readers": merged["diagnosis"]["readers"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    from . import access
    from .vocabulary import AccessAction
    for row in rows:
        access.record(rt, user, AccessAction.EXPORT, "cli" if user is None else "?", case_id=row["group"],
                      subject=f"labelling set {merged['set']['name']} -> {out}", username="operator (cli)")
    return {"out": str(out), "images": len(rows), "masks": masks_written}
