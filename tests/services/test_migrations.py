import pytest
from sqlalchemy import create_engine, inspect, text

from services import migrate


def test_single_head():
    assert migrate.heads("sqlite://") == ["0001"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_downgrade_upgrade(db_url):
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
    migrate.downgrade(db_url, "base") if "postgresql" in db_url else None
    migrate.upgrade(db_url)
    engine = create_engine(db_url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO explanation_records (case_id, prediction_id, payload, prev_hash, "
                       "record_hash, created_at) VALUES ('c', 'p', '{}', :a, :b, CURRENT_TIMESTAMP)"),
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
