"""The SQLAlchemy 2.0 base, engine and session factory shared by every process."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import MetaData, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from common.errors import AlreadyExists, TransientError

# Stable constraint names, so Alembic autogenerate and downgrades are deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(database_url: str, **options) -> Engine:
    """An engine that survives database restarts (pre-ping) and speaks UTC."""
    return create_engine(
        database_url,
        pool_pre_ping=True,
        connect_args={"options": "-c timezone=UTC"},
        **options,
    )


class Database:
    """One engine and session factory for a process; built from settings, never at import."""

    def __init__(self, database_url: str, **engine_options):
        self.engine = make_engine(database_url, **engine_options)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any exception.

        Database failures leave in the shared vocabulary: a lost connection is transient, and a
        unique-constraint race (two creates of one name at once) is AlreadyExists.
        """
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException as exc:
                session.rollback()
                translated = _translated(exc)
                if translated is exc:
                    raise
                raise translated from exc

    def dispose(self) -> None:
        self.engine.dispose()


UNIQUE_VIOLATION = "23505"


def _translated(exc: BaseException) -> BaseException:
    if isinstance(exc, sa_exc.IntegrityError) and getattr(exc.orig, "sqlstate", None) == UNIQUE_VIOLATION:
        return AlreadyExists()
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return TransientError("The database is not reachable; try again in a moment")
    return exc
