"""The model registry: versions (weights and card in the object store under their hash,
status, evidence) with one champion and one shadow at most, the append-only log of every
register, shadow, promote, rollback and override, and the shadow model's readings of live
cases (kept apart from predictions).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

from migrations import append_only
from services.models import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("weights_key", sa.String(200), nullable=False),
        sa.Column("card_key", sa.String(200), nullable=False),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("registered_by", sa.String(80), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
    )
    for status in ("champion", "shadow"):
        op.create_index(f"uq_model_versions_{status}", "model_versions", ["status"], unique=True,
                        postgresql_where=sa.text(f"status = '{status}'"),
                        sqlite_where=sa.text(f"status = '{status}'"))
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("version_id", sa.String(32), nullable=False),
        sa.Column("label", sa.String(150), nullable=False),
        sa.Column("previous_id", sa.String(32), nullable=True),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )
    append_only.create("model_events")
    op.create_table(
        "shadow_readings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False, index=True),
        sa.Column("model_version_id", sa.String(32), sa.ForeignKey("model_versions.id"), nullable=False,
                  index=True),
        sa.Column("findings", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("case_id", "model_version_id", name="uq_shadow_readings_case_model"),
    )


def downgrade() -> None:
    op.drop_table("shadow_readings")
    append_only.drop("model_events")
    op.drop_table("model_events")
    for status in ("champion", "shadow"):
        op.drop_index(f"uq_model_versions_{status}", "model_versions")
    op.drop_table("model_versions")
