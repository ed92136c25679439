from alembic import context

from services.config import Settings
from services.db import make_engine
from services.models import Base

config = context.config
url = config.attributes.get("database_url") or Settings.from_env().database_url
sqlite = url.startswith("sqlite")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=sqlite)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        if sqlite:
            # SQLite changes a table's constraints by copying it; foreign keys must be off
            # while the old table is dropped (they cannot be switched inside a transaction).
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
