"""Sessions that can be ended, login throttling on the embedded stack, and the access log.

users.session_version ends every session and token of an account at once (logout, password
change, deactivation, revocation); login_throttle counts failed logins per account and per
client where no Redis is configured; access_log records who read which patient data, when and
from where, and every account action, append-only (triggers as for the audit chain).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

from migrations import append_only
from services.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("session_version", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
    )
    op.create_table(
        "access_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("username", sa.String(80), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("case_id", sa.String(32), nullable=True),
        sa.Column("subject", sa.String(200), nullable=True),
        sa.Column("client", sa.String(64), nullable=False),
    )
    op.create_index("ix_access_log_case_at", "access_log", ["case_id", "at"])
    op.create_index("ix_access_log_user_at", "access_log", ["username", "at"])
    append_only.create("access_log")

def downgrade() -> None:
    append_only.drop("access_log")
    op.drop_index("ix_access_log_user_at", table_name="access_log")
    op.drop_index("ix_access_log_case_at", table_name="access_log")
    op.drop_table("access_log")
    op.drop_table("login_throttle")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_version")
