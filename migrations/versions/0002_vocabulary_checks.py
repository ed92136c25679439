"""CHECK constraints for every closed vocabulary (services/vocabulary.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The constraints are spelled out here rather than generated from the enums: a migration is
a record of what the schema was at that revision, and must not change when the code does.
tests/services/test_migrations.py checks that they equal what the models declare.
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHECKS = {
    "cases": {
        "ck_cases_status": "status IN ('received', 'analysing', 'analysed', 'analysis_failed', 'claimed')",
        "ck_cases_sex": "sex IN ('female', 'male', 'other', 'unknown')",
        "ck_cases_body_site": ("body_site IN ('scalp', 'face', 'nose', 'ear', 'eyelid', 'lip', 'neck', "
                               "'trunk', 'back', 'chest', 'abdomen', 'upper_limb', 'hand', "
                               "'lower_limb', 'foot', 'genital', 'other')"),
        "ck_cases_risk_tier": "risk_tier IN ('urgent', 'routine', 'low')",
    },
    "case_images": {"ck_case_images_kind": "kind IN ('dermoscopic', 'clinical')"},
    "analysis_jobs": {
        "ck_analysis_jobs_status": "status IN ('pending', 'queued', 'running', 'done', 'failed')",
    },
}


def upgrade() -> None:
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for name, condition in checks.items():
                batch.create_check_constraint(name, condition)


def downgrade() -> None:
    for table, checks in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for name in checks:
                batch.drop_constraint(name, type_="check")
