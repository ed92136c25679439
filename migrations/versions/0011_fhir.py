"""FHIR: the Patient key of a case (a hash of the GP and the pseudonym, for the reports'
``subject`` search), the EHRs' rest-hook subscriptions and their notifications (the outbox
the workers deliver from).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
import hashlib

from alembic import op
import sqlalchemy as sa

from services.models import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("patient_key", sa.String(32), nullable=True))
        batch.create_index("ix_cases_patient", ["patient_key"])
    bind = op.get_bind()
    cases = sa.table("cases", sa.column("id", sa.String), sa.column("gp_id", sa.Integer),
                     sa.column("patient_pseudonym", sa.String), sa.column("patient_key", sa.String))
    for case_id, gp_id, pseudonym in bind.execute(sa.select(cases.c.id, cases.c.gp_id,
                                                            cases.c.patient_pseudonym)).all():
        key = hashlib.sha256(f"{gp_id}\0{pseudonym}".encode()).hexdigest()[:32]
        bind.execute(cases.update().where(cases.c.id == case_id).values(patient_key=key))
    op.create_index("ix_cases_last_updated", "cases",
                    [sa.func.coalesce(sa.text("answered_at"), sa.text("queued_at"), sa.text("created_at"))])
    op.create_table(
        "fhir_subscriptions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("endpoint", sa.String(2000), nullable=False),
        sa.Column("content", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "fhir_notifications",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("subscription_id", sa.String(32), sa.ForeignKey("fhir_subscriptions.id"), nullable=False),
        sa.Column("event_number", sa.Integer, nullable=False),
        sa.Column("case_id", sa.String(32), nullable=False),
        sa.Column("report_version", sa.Integer, nullable=False),
        sa.Column("report_status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("gave_up_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("subscription_id", "event_number", name="uq_fhir_notifications_event"),
    )
    op.create_index("ix_fhir_notifications_due", "fhir_notifications", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_fhir_notifications_due", "fhir_notifications")
    op.drop_table("fhir_notifications")
    op.drop_table("fhir_subscriptions")
    op.drop_index("ix_cases_last_updated", "cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_patient")
        batch.drop_column("patient_key")
