"""The product's vocabulary: every closed set of values, once.

Each is a ``StrEnum`` so that members compare equal to the plain strings stored in the
database and sent over the API. The models declare a CHECK constraint for each (see
``models.py``); ``tests/services/test_migrations.py`` checks the migrations agree.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    GP = "gp"
    DERMATOLOGIST = "dermatologist"
    AUDITOR = "auditor"
    ADMIN = "admin"


class CaseStatus(StrEnum):
    """received -> analysing -> analysed | analysis_failed -> claimed -> reviewed.

    A released claim goes back to analysed | analysis_failed; an amended review stays reviewed."""

    RECEIVED = "received"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    ANALYSIS_FAILED = "analysis_failed"
    CLAIMED = "claimed"
    REVIEWED = "reviewed"


# Cases a dermatologist can take from the referral queue.
QUEUED_STATUSES = (CaseStatus.ANALYSED, CaseStatus.ANALYSIS_FAILED)


class JobStatus(StrEnum):
    """The outbox: pending (committed, not yet sent) -> queued (sent to the broker) ->
    running -> done | failed. The sweeper re-sends pending, lost and stalled jobs."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Sex(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class BodySite(StrEnum):
    SCALP = "scalp"
    FACE = "face"
    NOSE = "nose"
    EAR = "ear"
    EYELID = "eyelid"
    LIP = "lip"
    NECK = "neck"
    TRUNK = "trunk"
    BACK = "back"
    CHEST = "chest"
    ABDOMEN = "abdomen"
    UPPER_LIMB = "upper_limb"
    HAND = "hand"
    LOWER_LIMB = "lower_limb"
    FOOT = "foot"
    GENITAL = "genital"
    OTHER = "other"


# Sites where a BCC's growth does harm sooner (cosmetic and functional): the "H-zone".
HIGH_RISK_SITES = frozenset({BodySite.NOSE, BodySite.EYELID, BodySite.LIP, BodySite.EAR,
                             BodySite.FACE})


class ImageKind(StrEnum):
    DERMOSCOPIC = "dermoscopic"
    CLINICAL = "clinical"


class RiskTier(StrEnum):
    URGENT = "urgent"
    ROUTINE = "routine"
    LOW = "low"


class Diagnosis(StrEnum):
    """What a dermatologist can conclude: the seven HAM10000 diagnoses the model knows, or
    something else (named in free text)."""

    NV = "nv"          # melanocytic naevus
    MEL = "mel"        # melanoma
    BCC = "bcc"        # basal cell carcinoma
    AKIEC = "akiec"    # actinic keratosis / intraepithelial carcinoma (Bowen's), SCC spectrum
    BKL = "bkl"        # benign keratosis
    DF = "df"          # dermatofibroma
    VASC = "vasc"      # vascular lesion
    OTHER = "other"


DIAGNOSIS_NAMES = {
    Diagnosis.NV: "melanocytic naevus", Diagnosis.MEL: "melanoma",
    Diagnosis.BCC: "basal cell carcinoma", Diagnosis.AKIEC: "actinic keratosis / SCC in situ",
    Diagnosis.BKL: "benign keratosis", Diagnosis.DF: "dermatofibroma",
    Diagnosis.VASC: "vascular lesion", Diagnosis.OTHER: "other",
}


class PatternCall(StrEnum):
    """A reader's call on one dermoscopic pattern; "unsure" counts as no label."""

    PRESENT = "present"
    ABSENT = "absent"
    UNSURE = "unsure"


class Management(StrEnum):
    DISCHARGE = "discharge_with_advice"
    ROUTINE = "routine_appointment"
    URGENT = "urgent_two_week_wait"
    BIOPSY = "biopsy"
    RETAKE = "retake_photos"


MANAGEMENT_NAMES = {
    Management.DISCHARGE: "discharge with advice", Management.ROUTINE: "routine appointment",
    Management.URGENT: "urgent two-week-wait appointment", Management.BIOPSY: "biopsy",
    Management.RETAKE: "retake photos",
}


class ReviewPurpose(StrEnum):
    """clinical: the answer to the GP (one reader, the claimer); labelling: one reader's
    independent labels in a labelling set (several readers, merged by Dawid-Skene)."""

    CLINICAL = "clinical"
    LABELLING = "labelling"


class RecordKind(StrEnum):
    """What an audit record in the hash chain is about."""

    EXPLANATION = "explanation"   # one model analysis of one image
    REVIEW = "review"             # one human decision (or amendment) on a case


class Agreement(StrEnum):
    """A clinical review against the AI's diagnosis (the auditor's filter)."""

    AGREE = "agree"
    OVERRIDE = "override"


class AccessAction(StrEnum):
    """What the access log records: reads of patient data, and account actions."""

    READ_CASE = "read_case"
    READ_IMAGE = "read_image"
    READ_MAP = "read_map"
    READ_REVIEW = "read_review"
    READ_REGION = "read_region"
    LABEL_CASE = "read_labelling_case"
    EXPORT = "export"
    LOGIN = "login"
    LOGIN_REFUSED = "login_refused"
    LOGOUT = "logout"
    ACCOUNT_CREATE = "account_create"
    ACCOUNT_DEACTIVATE = "account_deactivate"
    ACCOUNT_PASSWORD = "account_password"
    ACCOUNT_REVOKE = "account_revoke"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(m.value for m in enum)


def check_in(column: str, enum: type[StrEnum]) -> str:
    """SQL for a CHECK constraint that admits exactly the enum's values."""
    return f"{column} IN ({', '.join(repr(v) for v in values(enum))})"
