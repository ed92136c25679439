"""The adapters a process needs, built once from settings: database and object store."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import make_engine, make_session_factory
from .storage import ObjectStore, StorageError, open_store


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings.object_store_url)

    def health(self) -> dict[str, str]:
        """'ok' or the reason, for the database and the object store."""
        out = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            out["database"] = "ok"
        except Exception as exc:  # any driver error means "not reachable" here
            out["database"] = f"unreachable: {type(exc).__name__}"
        try:
            self.store.ping()
            out["object_store"] = "ok"
        except (StorageError, OSError) as exc:
            out["object_store"] = f"unreachable: {exc}"
        return out
