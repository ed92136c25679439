"""Running Alembic migrations from code (CLI, `make install`, tests, the deployed image).

The migration scripts are package data of the top-level ``migrations`` package, found
through its import location, so an installed wheel (the Docker image) migrates exactly as a
source checkout does; no alembic.ini is needed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def script_location() -> Path:
    import migrations
    return Path(migrations.__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def heads(database_url: str) -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
