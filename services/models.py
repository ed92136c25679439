"""The data model (SQLAlchemy 2.0, typed). Alembic migrations in migrations/ create it."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from enum import StrEnum

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Integer,
                        String, Text, UniqueConstraint, Index, TypeDecorator, func, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .vocabulary import (QUEUED_STATUSES, BodySite, CaseStatus, Diagnosis, ImageKind, JobStatus,
                         Management, RecordKind, ReviewPurpose, RiskTier, Role, Sex, check_in)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Stored as UTC, always returned timezone-aware (SQLite would drop the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use services.models.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Vocabulary(TypeDecorator):
    """A closed set of values (a ``vocabulary`` enum) stored as its plain string.

    Binding checks the value (a typo fails in Python, before the CHECK constraint would) and
    always sends the plain string: some drivers would dump an Enum by its member name."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int = 20):
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value, dialect):
        return None if value is None else self.enum(value).value

    def process_result_value(self, value, dialect):
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(Vocabulary(Role))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped to end every session and token of the account at once (logout, password change,
    # deactivation, revocation): both carry the version they were issued under.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint(check_in("role", Role), name="ck_users_role"),)


class LoginThrottle(Base):
    """Failed logins per key (account or client) in the current window (embedded stack)."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column()
    failures: Mapped[int] = mapped_column(Integer)


class AccessEvent(Base):
    """Who read which patient data (or acted on an account), when and from where; append-only."""

    __tablename__ = "access_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    username: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(40))
    case_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    client: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_access_log_case_at", "case_id", "at"),
                      Index("ix_access_log_user_at", "username", "at"))


# Waiting for a dermatologist: analysed (or the analysis failed) and unclaimed. Written out as
# SQL with literal values so that PostgreSQL can match it to the partial indexes even in a
# generic plan of a prepared statement (bound parameters would hide the values).
WAITING_SQL = ("status IN (" + ", ".join(f"'{s.value}'" for s in QUEUED_STATUSES)
               + ") AND claimed_by IS NULL")


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    gp_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    patient_pseudonym: Mapped[str] = mapped_column(String(64))
    age: Mapped[int] = mapped_column(Integer)
    sex: Mapped[Sex] = mapped_column(Vocabulary(Sex, 10))
    body_site: Mapped[BodySite] = mapped_column(Vocabulary(BodySite, 40))
    duration_months: Mapped[int | None] = mapped_column(Integer, nullable=True)
    changed: Mapped[bool] = mapped_column(Boolean, default=False)
    bleeding: Mapped[bool] = mapped_column(Boolean, default=False)
    gp_question: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[CaseStatus] = mapped_column(Vocabulary(CaseStatus), default=CaseStatus.RECEIVED,
                                               index=True)
    ai_available: Mapped[bool] = mapped_column(Boolean, default=True)
    risk_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    risk_tier: Mapped[RiskTier | None] = mapped_column(Vocabulary(RiskTier, 10), nullable=True)
    risk_reasons: Mapped[list | None] = mapped_column(JSON, nullable=True)
    needs_attention: Mapped[bool] = mapped_column(Boolean, default=False)
    due_at: Mapped[datetime | None] = mapped_column(nullable=True)
    escalate_at: Mapped[datetime | None] = mapped_column(nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The latest clinical review (or amendment) and when the GP last read it: "new answer"
    # is answered_at after answer_seen_at.
    answered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    answer_seen_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The sender's own reference for the referral (a DICOM study's accession number, later a
    # FHIR ServiceRequest identifier): the same referral sent twice by one GP is one case.
    external_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The FHIR Patient's id (services/fhir): a hash of the GP and the pseudonym, so an EHR finds
    # every report of one patient of its own without the pseudonym appearing in a URL.
    patient_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    images: Mapped[list["CaseImage"]] = relationship(back_populates="case", order_by="CaseImage.position")
    jobs: Mapped[list["AnalysisJob"]] = relationship(back_populates="case")

    __table_args__ = (
        # The case lists, newest first (the queue's indexes follow the class).
        Index("ix_cases_created", "created_at"),
        Index("ix_cases_gp_created", "gp_id", "created_at"),
        CheckConstraint(check_in("status", CaseStatus), name="ck_cases_status"),
        CheckConstraint(check_in("sex", Sex), name="ck_cases_sex"),
        CheckConstraint(check_in("body_site", BodySite), name="ck_cases_body_site"),
        CheckConstraint(check_in("risk_tier", RiskTier), name="ck_cases_risk_tier"),
        UniqueConstraint("gp_id", "external_ref", name="uq_cases_gp_external_ref"),
        Index("ix_cases_patient", "patient_key"),
        # FHIR searches list reports newest change first (services/fhir/read.py, LAST_UPDATED).
        Index("ix_cases_last_updated", func.coalesce(text("answered_at"), text("queued_at"), text("created_at"))),
    )


# The referral queue's scans (services/queue.py): per tier, by deadline and by risk, over the
# waiting rows only. The trailing date columns let PostgreSQL answer a scan from the index
# alone (index-only scan), without visiting the table for the rows it filters out.
Index("ix_cases_waiting_deadline", Case.risk_tier, Case.due_at, Case.risk_score.desc(), Case.queued_at,
      Case.id, Case.escalate_at, postgresql_where=text(WAITING_SQL), sqlite_where=text(WAITING_SQL))
Index("ix_cases_waiting_risk", Case.risk_tier, Case.risk_score.desc(), Case.queued_at, Case.id,
      Case.escalate_at, Case.due_at, postgresql_where=text(WAITING_SQL), sqlite_where=text(WAITING_SQL))


class CaseImage(Base):
    __tablename__ = "case_images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(40))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    kind: Mapped[ImageKind] = mapped_column(Vocabulary(ImageKind))
    # Where the image came from, for DICOM intake: {format, sop_class, dermoscopic, device};
    # None for JPEG/PNG uploads. Never an identifier (services/dicom.py).
    origin: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    case: Mapped[Case] = relationship(back_populates="images")
    predictions: Mapped[list["Prediction"]] = relationship(back_populates="image")

    __table_args__ = (CheckConstraint(check_in("kind", ImageKind), name="ck_case_images_kind"),)


class AnalysisJob(Base):
    __tablename__ = "analysis_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    status: Mapped[JobStatus] = mapped_column(Vocabulary(JobStatus), default=JobStatus.PENDING,
                                              index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatches: Mapped[int] = mapped_column(Integer, default=0)      # messages sent
    deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # messages received
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Refreshed by the worker holding a running job (every lease / 3): older than a lease
    # means that worker is gone.
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    case: Mapped[Case] = relationship(back_populates="jobs")

    __table_args__ = (CheckConstraint(check_in("status", JobStatus), name="ck_analysis_jobs_status"),)


class Prediction(Base):
    """One model's analysis of one image; never two for the same image and model version."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str] = mapped_column(ForeignKey("case_images.id"), index=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(40))
    model_sha256: Mapped[str] = mapped_column(String(64))
    preprocessing_version: Mapped[str] = mapped_column(String(40))
    bcc_probability: Mapped[float] = mapped_column(Float)
    diagnosis: Mapped[str] = mapped_column(String(20))
    # calibrated probabilities of the HAM10000 diagnoses (models with a diagnosis head)
    diagnosis_probabilities: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    pattern_probabilities: Mapped[dict] = mapped_column(JSON)
    patterns_present: Mapped[list] = mapped_column(JSON)
    clinical: Mapped[dict] = mapped_column(JSON)
    map_numbers: Mapped[dict] = mapped_column(JSON)
    maps: Mapped[dict] = mapped_column(JSON)          # target -> {key, sha256}
    # All normalised maps as one uint8 array (targets, S, S) in one object: {key, sha256,
    # targets, shape}. The review viewer's layers and the expert-region figures read it.
    map_array: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    quality: Mapped[dict] = mapped_column(JSON)
    # The scope gate's verdict ({verdict, reason, hint, measures, applicable}); None for
    # predictions made before the gate, which were all read as dermoscopic.
    scope: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[CaseImage] = relationship(back_populates="predictions")

    @property
    def in_scope(self) -> bool:
        """Whether the dermoscopic read applies (patterns, evidence and maps may be shown)."""
        return self.scope is None or bool(self.scope.get("applicable", True))

    __table_args__ = (UniqueConstraint("image_id", "model_name", "model_version",
                                       name="uq_prediction_image_model"),)


class ExplanationRecord(Base):
    """Append-only, hash-chained audit record (triggers forbid changes): one model analysis
    (kind explanation, with its prediction) or one human decision (kind review)."""

    __tablename__ = "explanation_records"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[RecordKind] = mapped_column(Vocabulary(RecordKind), default=RecordKind.EXPLANATION)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    prediction_id: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    review_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    payload: Mapped[str] = mapped_column(Text)        # canonical JSON, hashed as stored
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    record_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("review_id", name="uq_explanation_records_review_id"),
        CheckConstraint(check_in("kind", RecordKind), name="ck_explanation_records_kind"),
        CheckConstraint("(kind = 'explanation') = (prediction_id IS NOT NULL) AND "
                        "(kind = 'review') = (review_id IS NOT NULL)",
                        name="ck_explanation_records_subject"),
    )


class Review(Base):
    """One reader's decision on a case; append-only like the audit chain it is recorded in.

    A clinical review answers the GP; a labelling review is one reader's independent labels
    in a labelling set. An amendment is a new row whose ``amends_id`` names the row it
    replaces (at most one amendment per row, so the history is a line)."""

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[ReviewPurpose] = mapped_column(Vocabulary(ReviewPurpose))
    labelling_set_id: Mapped[str | None] = mapped_column(ForeignKey("labelling_sets.id"), nullable=True,
                                                         index=True)
    amends_id: Mapped[str | None] = mapped_column(ForeignKey("reviews.id"), nullable=True, unique=True)
    prediction_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the AI answer it judges
    diagnosis: Mapped[Diagnosis] = mapped_column(Vocabulary(Diagnosis))
    diagnosis_other: Mapped[str] = mapped_column(Text, default="")
    patterns: Mapped[dict] = mapped_column(JSON)            # code -> present | absent | unsure
    regions: Mapped[dict] = mapped_column(JSON)             # code -> {key, sha256, area}
    management: Mapped[Management | None] = mapped_column(Vocabulary(Management, 30), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    override_reason: Mapped[str] = mapped_column(Text, default="")
    amendment_reason: Mapped[str] = mapped_column(Text, default="")
    ai: Mapped[dict | None] = mapped_column(JSON, nullable=True)      # what the AI said
    agreement: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    record_seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_reviews_case_created", "case_id", "created_at"),
        CheckConstraint(check_in("purpose", ReviewPurpose), name="ck_reviews_purpose"),
        CheckConstraint(check_in("diagnosis", Diagnosis), name="ck_reviews_diagnosis"),
        CheckConstraint("management IS NULL OR " + check_in("management", Management),
                        name="ck_reviews_management"),
        CheckConstraint("(purpose = 'labelling') = (labelling_set_id IS NOT NULL)",
                        name="ck_reviews_set"),
    )


class LabellingSet(Base):
    """Cases that several dermatologists label independently, merged by Dawid-Skene."""

    __tablename__ = "labelling_sets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    blind_to_ai: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabellingSetCase(Base):
    __tablename__ = "labelling_set_cases"

    set_id: Mapped[str] = mapped_column(ForeignKey("labelling_sets.id"), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)


class LabellingSetReader(Base):
    __tablename__ = "labelling_set_readers"

    set_id: Mapped[str] = mapped_column(ForeignKey("labelling_sets.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class AuditCheckpoint(Base):
    """A signed head of the audit chain (services/checkpoints.py); append-only."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(Integer)
    signed_at: Mapped[str] = mapped_column(String(40))     # ISO text, exactly as signed
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))    # base64 Ed25519


class AuditVerification(Base):
    """How far the chain verified last (so a page view verifies only what came since)."""

    __tablename__ = "audit_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    checkpoints_seen: Mapped[int] = mapped_column(Integer, default=0)   # checkpoint ids verified up to
    full: Mapped[bool] = mapped_column(Boolean)
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class FhirSubscription(Base):
    """An EHR's rest-hook (FHIR R5 Subscription on our one topic, services/subscriptions.py):
    where to send, how much, and how many events it has had (the notification's event number)."""

    __tablename__ = "fhir_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(2000))
    content: Mapped[str] = mapped_column(String(20))          # id-only | full-resource
    status: Mapped[str] = mapped_column(String(20))           # active | off
    events: Mapped[int] = mapped_column(Integer, default=0)   # eventsSinceSubscriptionStart
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FhirNotification(Base):
    """One event for one subscription: the outbox row the workers deliver, retry with backoff
    and mark delivered. Written in the transaction that makes the report final or amended."""

    __tablename__ = "fhir_notifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("fhir_subscriptions.id"))
    event_number: Mapped[int] = mapped_column(Integer)
    case_id: Mapped[str] = mapped_column(String(32))
    report_version: Mapped[int] = mapped_column(Integer)
    report_status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)   # null: done
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    gave_up_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("subscription_id", "event_number", name="uq_fhir_notifications_event"),
        Index("ix_fhir_notifications_due", "next_attempt_at"),
    )


class ModelVersion(Base):
    """A model in the registry (services/registry.py): its weights and card in the object
    store under the weights' hash, its status and its evidence. One champion at most, one
    shadow at most (partial unique indexes)."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(40))
    weights_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    weights_key: Mapped[str] = mapped_column(String(200))
    card_key: Mapped[str] = mapped_column(String(200))
    card: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))        # candidate | shadow | champion | retired
    registered_by: Mapped[str] = mapped_column(String(80))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    evidence: Mapped[dict] = mapped_column(JSON)           # out-of-fold figures, evaluate reports

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        Index("uq_model_versions_champion", "status", unique=True,
              postgresql_where=text("status = 'champion'"), sqlite_where=text("status = 'champion'")),
        Index("uq_model_versions_shadow", "status", unique=True,
              postgresql_where=text("status = 'shadow'"), sqlite_where=text("status = 'shadow'")),
    )


class ModelEvent(Base):
    """Every register, shadow, promote, rollback and override: who, when, why, and the
    evidence as it stood. Append-only (triggers, as the audit chain)."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(20))
    version_id: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(150))           # name and version, as read then
    previous_id: Mapped[str | None] = mapped_column(String(32), nullable=True)   # the champion before
    actor: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict] = mapped_column(JSON)


class ShadowReading(Base):
    """What a shadow model said of a case (services/shadow.py): kept apart from predictions,
    so it never reaches the referral queue, a GP or the case page."""

    __tablename__ = "shadow_readings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    findings: Mapped[list] = mapped_column(JSON)        # per dermoscopic image, as risk.ImageFinding
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("case_id", "model_version_id", name="uq_shadow_readings_case_model"),)
