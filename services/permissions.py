"""Who may do what: the one place that maps roles to actions (as Redash's permissions module).

Use cases call ``require``; web/ uses the same sets to decide which role a route admits, so
a role can never be allowed by a page and refused by the use case behind it.
"""

from __future__ import annotations

from .errors import Forbidden
from .vocabulary import Role

SUBMIT_CASES = frozenset({Role.GP})
READ_CASES = frozenset({Role.GP, Role.DERMATOLOGIST, Role.AUDITOR})
WORK_QUEUE = frozenset({Role.DERMATOLOGIST})
VERIFY_AUDIT = frozenset({Role.AUDITOR})
ADMINISTER = frozenset({Role.ADMIN})
ANYONE = frozenset(Role)
# Labelling sets: dermatologists label, administrators run them, auditors inspect them.
LABELLING = frozenset({Role.DERMATOLOGIST, Role.ADMIN, Role.AUDITOR})
# Human-AI monitoring: the clinical lead (a dermatologist), the ML engineer (admin), auditors.
MONITOR = frozenset({Role.DERMATOLOGIST, Role.ADMIN, Role.AUDITOR})

# The model registry: the ML engineer (admin) changes it; auditors and the ML engineer read it,
# its comparisons and the thumbnails of the cases two models disagree on.
CHANGE_MODELS = ADMINISTER
VIEW_MODELS = frozenset({Role.ADMIN, Role.AUDITOR})

# GPs see only the cases they submitted; the other readers see every case.
OWN_CASES_ONLY = frozenset({Role.GP})

MESSAGES = {
    SUBMIT_CASES: "only GPs submit cases",
    READ_CASES: "this role cannot read cases",
    WORK_QUEUE: "only dermatologists work the referral queue",
    VERIFY_AUDIT: "only auditors verify the audit trail",
    ADMINISTER: "only administrators manage the service",
    LABELLING: "this role takes no part in labelling sets",
    MONITOR: "this role cannot see the monitoring figures",
    VIEW_MODELS: "only the ML engineer (admin) and auditors see the model registry",
}


def allowed(role: str, action: frozenset[Role]) -> bool:
    return role in action


def require(user, action: frozenset[Role]) -> None:
    if not allowed(user.role, action):
        raise Forbidden(MESSAGES.get(action, "this role may not do that"))


def role_names(action: frozenset[Role]) -> tuple[str, ...]:
    return tuple(r.value for r in Role if r in action)
