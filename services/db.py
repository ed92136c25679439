"""Database engine and sessions, the same code on SQLite and PostgreSQL.

``read`` and ``transaction`` are how use cases talk to the database: they own the session,
and a database that cannot be reached becomes ``Unavailable`` here, once, so no caller
needs to know SQLAlchemy's exceptions. Integrity errors pass through untouched: use cases
rely on them (a unique constraint is how a duplicate analysis loses).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .errors import Unavailable

DATABASE_DOWN = "the database is unavailable; please retry shortly"
READ_ONLY = "dermatriage_read_only"     # execution option of the engine behind read sessions


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn, _):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see below). WAL lets
        # the web process read while the worker writes; foreign keys are off by default.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        # Writing transactions take the write lock up front, so read-then-write transactions
        # (claims, hash-chain appends) queue behind each other instead of failing at commit.
        # Reads (READ_ONLY, see ``read``) begin deferred: under WAL they never wait for a
        # writer, so one long write cannot stall pages or /healthz.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine, read_only: bool = False) -> sessionmaker[Session]:
    if read_only:
        engine = engine.execution_options(**{READ_ONLY: True})
    return sessionmaker(engine, expire_on_commit=False)


def _is_outage(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or bool(exc.connection_invalidated)


@contextmanager
def _outage_is_unavailable() -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        if _is_outage(exc):
            raise Unavailable(DATABASE_DOWN) from exc
        raise


@contextmanager
def read(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reading; nothing is committed."""
    with _outage_is_unavailable(), sessions() as session:
        yield session


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a transaction: committed if the block ends normally, else rolled back."""
    with _outage_is_unavailable(), sessions() as session, session.begin():
        yield session
