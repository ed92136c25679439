"""The scope gate's verdict on each analysed image (dermoscopic, clinical, not_a_lesion,
not_skin, unusable, with its reason and measures). Null for predictions made before the gate:
those were all read as dermoscopic.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("scope", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("scope")
