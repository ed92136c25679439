"""Initial schema: users, cases, images, analysis jobs, predictions, explanation records.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa

from services.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "explanation_records is append-only"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(80), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("role IN ('gp', 'dermatologist', 'auditor', 'admin')", name="ck_users_role"),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("gp_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False),
        sa.Column("age", sa.Integer, nullable=False),
        sa.Column("sex", sa.String(10), nullable=False),
        sa.Column("body_site", sa.String(40), nullable=False),
        sa.Column("duration_months", sa.Integer, nullable=True),
        sa.Column("changed", sa.Boolean, nullable=False),
        sa.Column("bleeding", sa.Boolean, nullable=False),
        sa.Column("gp_question", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("ai_available", sa.Boolean, nullable=False),
        sa.Column("risk_score", sa.Float, nullable=True),
        sa.Column("risk_tier", sa.String(10), nullable=True),
        sa.Column("risk_reasons", sa.JSON, nullable=True),
        sa.Column("needs_attention", sa.Boolean, nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("escalate_at", UTCDateTime(), nullable=True),
        sa.Column("queued_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_by", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_cases_queue", "cases", ["status", "claimed_by", "escalate_at"])
    op.create_table(
        "case_images",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("object_key", sa.String(200), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("media_type", sa.String(40), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
    )
    op.create_table(
        "analysis_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("dispatches", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("dispatched_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(32), sa.ForeignKey("case_images.id"), nullable=False, index=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False, index=True),
        sa.Column("model_name", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(40), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("preprocessing_version", sa.String(40), nullable=False),
        sa.Column("bcc_probability", sa.Float, nullable=False),
        sa.Column("diagnosis", sa.String(20), nullable=False),
        sa.Column("pattern_probabilities", sa.JSON, nullable=False),
        sa.Column("patterns_present", sa.JSON, nullable=False),
        sa.Column("clinical", sa.JSON, nullable=False),
        sa.Column("map_numbers", sa.JSON, nullable=False),
        sa.Column("maps", sa.JSON, nullable=False),
        sa.Column("quality", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("image_id", "model_name", "model_version", name="uq_prediction_image_model"),
    )
    op.create_table(
        "explanation_records",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("case_id", sa.String(32), nullable=False, index=True),
        sa.Column("prediction_id", sa.String(32), nullable=False, unique=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("record_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION explanation_records_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}';
            END;
            $$ LANGUAGE plpgsql""")
        op.execute("""
            CREATE TRIGGER explanation_records_no_change
            BEFORE UPDATE OR DELETE ON explanation_records
            FOR EACH ROW EXECUTE FUNCTION explanation_records_append_only()""")
        op.execute("""
            CREATE TRIGGER explanation_records_no_truncate
            BEFORE TRUNCATE ON explanation_records
            FOR EACH STATEMENT EXECUTE FUNCTION explanation_records_append_only()""")
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"""
                CREATE TRIGGER explanation_records_no_{action.lower()}
                BEFORE {action} ON explanation_records
                BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS explanation_records_no_truncate ON explanation_records")
        op.execute("DROP TRIGGER IF EXISTS explanation_records_no_change ON explanation_records")
        op.execute("DROP FUNCTION IF EXISTS explanation_records_append_only()")
    for table in ("explanation_records", "predictions", "analysis_jobs", "case_images"):
        op.drop_table(table)
    op.drop_index("ix_cases_queue", table_name="cases")
    op.drop_table("cases")
    op.drop_table("users")
