"""The clock the lockout and the defender measure their windows with: the database's."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session


def db_now(session: Session) -> datetime:
    """The database's clock, so every host measures windows against the same time."""
    return session.scalar(select(func.clock_timestamp()))
