"""Dermatologist review: reviews (append-only), labelling sets, human decisions in the audit
chain, the GP's "new answer" marks, one map array per prediction, the 'reviewed' status.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

The audit chain gains a record kind: an explanation record has a prediction, a review record
has a review. SQLite cannot drop NOT NULL in place, so batch mode rebuilds the table there,
which drops its triggers: they are created again below, with the same text as 0001.
"""
from alembic import op
import sqlalchemy as sa

from migrations import append_only
from services.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATUS_OLD = "status IN ('received', 'analysing', 'analysed', 'analysis_failed', 'claimed')"
STATUS_NEW = "status IN ('received', 'analysing', 'analysed', 'analysis_failed', 'claimed', 'reviewed')"
WAITING = "status IN ('analysed', 'analysis_failed') AND claimed_by IS NULL"
KIND = "kind IN ('explanation', 'review')"
SUBJECT = ("(kind = 'explanation') = (prediction_id IS NOT NULL) AND "
           "(kind = 'review') = (review_id IS NOT NULL)")


def _sqlite() -> bool:
    return op.get_context().dialect.name == "sqlite"


def _waiting_indexes(create: bool) -> None:
    # Rebuilt around the batch on SQLite, where a table copy might not keep a partial index.
    if create:
        where = {"postgresql_where": sa.text(WAITING), "sqlite_where": sa.text(WAITING)}
        op.create_index("ix_cases_waiting_deadline", "cases",
                        ["risk_tier", "due_at", sa.text("risk_score DESC"), "queued_at", "id",
                         "escalate_at"], **where)
        op.create_index("ix_cases_waiting_risk", "cases",
                        ["risk_tier", sa.text("risk_score DESC"), "queued_at", "id", "escalate_at",
                         "due_at"], **where)
    else:
        op.drop_index("ix_cases_waiting_risk", table_name="cases")
        op.drop_index("ix_cases_waiting_deadline", table_name="cases")


def upgrade() -> None:
    sqlite = _sqlite()
    if sqlite:
        _waiting_indexes(create=False)
    with op.batch_alter_table("cases") as batch:
        batch.drop_constraint("ck_cases_status", type_="check")
        batch.create_check_constraint("ck_cases_status", STATUS_NEW)
        batch.add_column(sa.Column("answered_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("answer_seen_at", UTCDateTime(), nullable=True))
    if sqlite:
        _waiting_indexes(create=True)

    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("map_array", sa.JSON, nullable=True))

    with op.batch_alter_table("explanation_records") as batch:
        batch.add_column(sa.Column("kind", sa.String(20), nullable=False, server_default="explanation"))
        batch.add_column(sa.Column("review_id", sa.String(32), nullable=True))
        batch.alter_column("prediction_id", existing_type=sa.String(32), nullable=True)
        batch.create_unique_constraint("uq_explanation_records_review_id", ["review_id"])
        batch.create_check_constraint("ck_explanation_records_kind", KIND)
        batch.create_check_constraint("ck_explanation_records_subject", SUBJECT)
    with op.batch_alter_table("explanation_records") as batch:
        batch.alter_column("kind", existing_type=sa.String(20), server_default=None)
    if sqlite:      # the batch rebuilt the table without its triggers
        append_only.drop("explanation_records")
        append_only.create("explanation_records")

    op.create_table(
        "labelling_sets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(80), nullable=False, unique=True),
        sa.Column("blind_to_ai", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "labelling_set_cases",
        sa.Column("set_id", sa.String(32), sa.ForeignKey("labelling_sets.id"), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), primary_key=True),
    )
    op.create_table(
        "labelling_set_readers",
        sa.Column("set_id", sa.String(32), sa.ForeignKey("labelling_sets.id"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False, index=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("labelling_set_id", sa.String(32), sa.ForeignKey("labelling_sets.id"), nullable=True,
                  index=True),
        sa.Column("amends_id", sa.String(32), sa.ForeignKey("reviews.id"), nullable=True, unique=True),
        sa.Column("prediction_id", sa.String(32), nullable=True),
        sa.Column("diagnosis", sa.String(20), nullable=False),
        sa.Column("diagnosis_other", sa.Text, nullable=False),
        sa.Column("patterns", sa.JSON, nullable=False),
        sa.Column("regions", sa.JSON, nullable=False),
        sa.Column("management", sa.String(30), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("override_reason", sa.Text, nullable=False),
        sa.Column("amendment_reason", sa.Text, nullable=False),
        sa.Column("ai", sa.JSON, nullable=True),
        sa.Column("agreement", sa.JSON, nullable=True),
        sa.Column("record_seq", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("purpose IN ('clinical', 'labelling')", name="ck_reviews_purpose"),
        sa.CheckConstraint("diagnosis IN ('nv', 'mel', 'bcc', 'akiec', 'bkl', 'df', 'vasc', 'other')",
                           name="ck_reviews_diagnosis"),
        sa.CheckConstraint("management IS NULL OR management IN ('discharge_with_advice', "
                           "'routine_appointment', 'urgent_two_week_wait', 'biopsy', 'retake_photos')",
                           name="ck_reviews_management"),
        sa.CheckConstraint("(purpose = 'labelling') = (labelling_set_id IS NOT NULL)", name="ck_reviews_set"),
    )
    op.create_index("ix_reviews_case_created", "reviews", ["case_id", "created_at"])
    append_only.create("reviews")


def downgrade() -> None:
    sqlite = _sqlite()
    reviewed = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM explanation_records WHERE kind = 'review'")).scalar()
    if reviewed:
        # The 0004 chain has no place for human decisions, and the chain is append-only.
        raise RuntimeError(f"{reviewed} review records are in the audit chain: downgrading past 0005 "
                           "would have to delete them; restore a backup from before 0005 instead")
    append_only.drop("reviews")
    op.drop_index("ix_reviews_case_created", table_name="reviews")
    for table in ("reviews", "labelling_set_readers", "labelling_set_cases", "labelling_sets"):
        op.drop_table(table)
    with op.batch_alter_table("explanation_records") as batch:
        batch.drop_constraint("ck_explanation_records_subject", type_="check")
        batch.drop_constraint("ck_explanation_records_kind", type_="check")
        batch.drop_constraint("uq_explanation_records_review_id", type_="unique")
        batch.alter_column("prediction_id", existing_type=sa.String(32), nullable=False)
        batch.drop_column("review_id")
        batch.drop_column("kind")
    if sqlite:      # the batch rebuilt the table without its triggers
        append_only.drop("explanation_records")
        append_only.create("explanation_records")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("map_array")
    if sqlite:
        _waiting_indexes(create=False)
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("answer_seen_at")
        batch.drop_column("answered_at")
        batch.drop_constraint("ck_cases_status", type_="check")
        batch.create_check_constraint("ck_cases_status", STATUS_OLD)
    if sqlite:
        _waiting_indexes(create=True)
