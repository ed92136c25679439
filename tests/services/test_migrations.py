import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, create_engine, inspect, text

from services import migrate
from services.models import Base

from tests.factories import empty_database


def test_single_head():
    assert migrate.heads("sqlite://") == ["0012"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_downgrade_upgrade(db_url):
    empty_database(db_url) if "postgresql" in db_url else None
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"users", "cases", "case_images", "analysis_jobs", "predictions",
            "explanation_records"} <= tables
    migrate.downgrade(db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(db_url)
    assert "explanation_records" in inspect(engine).get_table_names()
    engine.dispose()


def test_explanation_records_refuse_update_and_delete(db_url):
    empty_database(db_url) if "postgresql" in db_url else None
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO explanation_records (kind, case_id, prediction_id, payload, prev_hash, "
                       "record_hash, created_at) VALUES ('explanation', 'c', 'p', '{}', :a, :b, "
                       "CURRENT_TIMESTAMP)"),
                  {"a": "0" * 64, "b": "1" * 64})
    for stmt in ("UPDATE explanation_records SET payload = '{\"x\": 1}'",
                 "DELETE FROM explanation_records"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as c:
                c.execute(text(stmt))
    with engine.connect() as c:
        assert c.execute(text("SELECT payload FROM explanation_records")).scalar() == "{}"
    engine.dispose()
    migrate.downgrade(db_url, "base")


def test_downgrade_refuses_to_drop_human_decisions(db_url):
    empty_database(db_url) if "postgresql" in db_url else None
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO explanation_records (kind, case_id, review_id, payload, prev_hash, "
                       "record_hash, created_at) VALUES ('review', 'c', 'r', '{}', :a, :b, "
                       "CURRENT_TIMESTAMP)"), {"a": "0" * 64, "b": "1" * 64})
        with pytest.raises(Exception, match="CHECK|ck_explanation_records_subject"):
            with c.begin_nested():
                c.execute(text("INSERT INTO explanation_records (kind, case_id, payload, prev_hash, "
                               "record_hash, created_at) VALUES ('review', 'c', '{}', :a, :b, "
                               "CURRENT_TIMESTAMP)"), {"a": "2" * 64, "b": "3" * 64})
    engine.dispose()
    with pytest.raises(Exception, match="review records are in the audit chain"):
        migrate.downgrade(db_url, "0004")  # through 0006, then refused at 0005
    empty_database(db_url) if "postgresql" in db_url else None


def _check(sqltext: str) -> tuple[str, frozenset[str]]:
    """A CHECK ... IN (...) as (column, allowed values), however the database spells it back
    (PostgreSQL reflects it as `(col)::text = ANY (ARRAY[...])`)."""
    return re.search(r"[a-z_]+", sqltext).group(0), frozenset(re.findall(r"'([^']*)'", sqltext))


def test_models_and_migrations_agree(db_url):
    """The schema the migrations build is the one the models declare: columns, types,
    indexes and every vocabulary CHECK constraint."""
    empty_database(db_url) if "postgresql" in db_url else None
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    reflected = inspect(engine)
    for table in Base.metadata.sorted_tables:
        declared = {c.name: _check(str(c.sqltext)) for c in table.constraints
                    if isinstance(c, CheckConstraint)}
        found = {c["name"]: _check(c["sqltext"]) for c in reflected.get_check_constraints(table.name)}
        assert found == declared, table.name
    with pytest.raises(Exception, match="ck_cases_status|CHECK"):
        with engine.begin() as c:
            c.execute(text("INSERT INTO users (username, password_hash, role, active, created_at) "
                           "VALUES ('u', 'h', 'gp', true, CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO cases (id, gp_id, patient_pseudonym, age, sex, body_site, "
                           "changed, bleeding, gp_question, status, ai_available, needs_attention, "
                           "created_at) SELECT 'c1', id, 'p', 50, 'female', 'back', false, false, '', "
                           "'lost', true, false, CURRENT_TIMESTAMP FROM users"))
    engine.dispose()
    migrate.downgrade(db_url, "base")
