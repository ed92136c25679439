"""Index-backed referral queue and case lists.

The queue's order depends on the current time (escalated cases first), so it is served by
per-tier scans of two partial indexes over the waiting rows (services/queue.py); the case
lists read newest first, all cases or one GP's. The old (status, claimed_by, escalate_at)
index could give neither order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The predicate exactly as services/models.py writes it (a migration keeps its own copy).
WAITING = "status IN ('analysed', 'analysis_failed') AND claimed_by IS NULL"


def upgrade() -> None:
    op.drop_index("ix_cases_queue", table_name="cases")
    where = {"postgresql_where": sa.text(WAITING), "sqlite_where": sa.text(WAITING)}
    op.create_index("ix_cases_waiting_deadline", "cases",
                    ["risk_tier", "due_at", sa.text("risk_score DESC"), "queued_at", "id",
                     "escalate_at"], **where)
    op.create_index("ix_cases_waiting_risk", "cases",
                    ["risk_tier", sa.text("risk_score DESC"), "queued_at", "id", "escalate_at",
                     "due_at"], **where)
    op.create_index("ix_cases_created", "cases", ["created_at"])
    op.create_index("ix_cases_gp_created", "cases", ["gp_id", "created_at"])


def downgrade() -> None:
    for name in ("ix_cases_gp_created", "ix_cases_created", "ix_cases_waiting_risk",
                 "ix_cases_waiting_deadline"):
        op.drop_index(name, table_name="cases")
    op.create_index("ix_cases_queue", "cases", ["status", "claimed_by", "escalate_at"])
