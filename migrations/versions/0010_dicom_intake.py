"""DICOM intake: where a case image came from (the object's class, whether it is
dermoscopic, the acquisition device; null for JPEG and PNG uploads), and the sender's own
reference for a referral (an accession number), unique per GP, so a referral sent twice is
one case.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case_images") as batch:
        batch.add_column(sa.Column("origin", sa.JSON, nullable=True))
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("external_ref", sa.String(200), nullable=True))
        batch.create_unique_constraint("uq_cases_gp_external_ref", ["gp_id", "external_ref"])


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_constraint("uq_cases_gp_external_ref", type_="unique")
        batch.drop_column("external_ref")
    with op.batch_alter_table("case_images") as batch:
        batch.drop_column("origin")
