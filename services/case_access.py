"""Who may read a case, and reading what it stored: the ground that intake (``cases``),
reviews and labelling all stand on.

It lives apart so that those use cases need not import each other to check access: a GP reads
only their own cases, and another GP's case is a 404, never a 403, so its existence is not
disclosed.
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.orm import Session, selectinload

from . import permissions
from .errors import NotFound, Unavailable
from .models import Case, User, utcnow
from .runtime import Runtime
from .storage import STORAGE_DOWN, ObjectNotFound, StorageError

log = logging.getLogger(__name__)


def readable_case(session: Session, user: User, case_id: str) -> Case:
    permissions.require(user, permissions.READ_CASES)
    case = session.get(Case, case_id, options=[selectinload(Case.images)])
    # 404, not 403, for another GP's case: its existence is not disclosed.
    if case is None or (user.role in permissions.OWN_CASES_ONLY and case.gp_id != user.id):
        raise NotFound(f"no case {case_id}")
    return case


def fetch_object(rt: Runtime, key: str) -> bytes:
    try:
        return rt.store.get(key)
    except ObjectNotFound as exc:
        raise NotFound("the stored file is missing") from exc
    except StorageError as exc:
        raise Unavailable(STORAGE_DOWN) from exc


def delete_quietly(rt: Runtime, keys: list[str], what: str) -> None:
    """Remove objects a failed write left behind; a store that is down leaves them as
    orphans (logged), never an error on top of the one being reported."""
    for key in keys:
        try:
            rt.store.delete(key)
        except StorageError:
            log.warning("could not remove orphan %s %s", what, key)


def mark_answer_seen(rt: Runtime, case_id: str) -> None:
    """The submitting GP has read the answer: it is no longer "new" in their list."""
    with rt.transaction() as session:
        session.execute(update(Case).where(Case.id == case_id).values(answer_seen_at=utcnow()))
