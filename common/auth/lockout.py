"""The per-name lockout: `lockout_threshold` failures within `lockout_seconds` freeze a user name.

Held in Postgres (login_throttles, one row per user-name index, known or not), so every process
and host agrees. An attempt is reserved before its secret is checked: under the row's lock the
attempt is counted pessimistically (and the name frozen when that reaches the threshold), the
lock is released, the secret is checked, and the attempt is un-counted only when it turns out
not to be a failure. So concurrent guesses evaluate at most `lockout_threshold` real secrets
before the freeze holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common import accounts
from common.accounts import SYSTEM, Actor
from common.auth.admin import audit_change
from common.auth.clock import db_now
from common.config import Settings
from common.crypto import Keyring
from common.models import LoginThrottle, User
from common.services import Services


@dataclass(frozen=True)
class Reservation:
    """An attempt counted before its secret was checked; `started_lock`: it froze the name."""

    stamp: datetime
    started_lock: bool


def reserve(session: Session, settings: Settings, subject: bytes) -> Reservation | None:
    """Count an attempt before its secret is checked; None when the name is frozen."""
    row = _throttle_for_update(session, subject)
    now = db_now(session)
    if row.locked_until is not None and row.locked_until > now:
        return None
    # After a lock has run out the name starts afresh.
    failures = [] if row.locked_until is not None else _recent(row.failures, now, settings)
    row.failures = failures + [now]
    started = len(row.failures) >= settings.lockout_threshold
    row.locked_until = now + timedelta(seconds=settings.lockout_seconds) if started else None
    row.updated_at = now
    return Reservation(now, started)


def uncount(session: Session, settings: Settings, subject: bytes, reservation: Reservation) -> None:
    """Take back a reservation that did not end in a failure, and its freeze if it caused one."""
    row = _throttle_for_update(session, subject)
    now = db_now(session)
    row.failures = [f for f in row.failures if f != reservation.stamp]
    still_counted = len(_recent(row.failures, now, settings))
    if row.locked_until is not None and still_counted < settings.lockout_threshold:
        row.locked_until = None
    row.updated_at = now


def confirm_failure(session: Session, settings: Settings, subject: bytes,
                    reservation: Reservation) -> str | None:
    """Keep a reservation that ended in a failure; why the name is now frozen, if it froze it."""
    row = _throttle_for_update(session, subject)
    # A success or an unlock in between clears the count; then this attempt started nothing.
    if reservation.started_lock and row.locked_until is not None and reservation.stamp in row.failures:
        return (f"user name frozen for {settings.lockout_seconds} s after "
                f"{len(row.failures)} failed logins")
    return None


def is_locked(session: Session, subject: bytes) -> bool:
    """Whether the name with this index is frozen now."""
    row = session.get(LoginThrottle, subject)
    return row is not None and row.locked_until is not None and row.locked_until > db_now(session)


def frozen_now():
    """The SQL condition of a login_throttles row frozen now (is_locked's rule, for queries over many names)."""
    return LoginThrottle.locked_until > func.clock_timestamp()


def is_locked_out(services: Services, username: str) -> bool:
    """Whether this user name (known or not) is frozen by the lockout now."""
    with services.db.session() as session:
        return is_locked(session, accounts.username_index(services.keyring.service(session), username))


def clear(session: Session, subject: bytes) -> None:
    """Forget the failures of a name and lift its freeze (a success, or an unlock)."""
    session.execute(update(LoginThrottle).where(LoginThrottle.subject == subject)
                    .values(failures=[], locked_until=None, updated_at=func.now()))


def unlock_user(session: Session, keyring: Keyring, user: User, *, actor: Actor = SYSTEM) -> None:
    """Lift a lockout and clear the failure count of a user's name, audited."""
    name = accounts.user_name(session, keyring, user)
    clear(session, accounts.username_index(keyring.service(session), name))
    audit_change(session, keyring, actor, user.account_id, f"user {user.id} unlocked")


def prune(session: Session, settings: Settings) -> int:
    """Delete throttle rows that can no longer matter: idle past the window and not frozen."""
    now = db_now(session)
    idle_since = now - timedelta(seconds=settings.lockout_seconds)
    return session.execute(delete(LoginThrottle).where(
        LoginThrottle.updated_at < idle_since,
        or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now))).rowcount


def _throttle_for_update(session: Session, subject: bytes) -> LoginThrottle:
    # A periodic prune may delete the row between the insert and the lock: then insert again.
    for _ in range(3):
        session.execute(insert(LoginThrottle).values(subject=subject).on_conflict_do_nothing())
        row = session.get(LoginThrottle, subject, with_for_update=True, populate_existing=True)
        if row is not None:
            return row
    raise RuntimeError("login throttle row vanished three times in a row")


def _recent(failures: list[datetime], now: datetime, settings: Settings) -> list[datetime]:
    start = now - timedelta(seconds=settings.lockout_seconds)
    return [f for f in failures if f > start]
