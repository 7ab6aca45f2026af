"""The per-IP defender: an address with many failed logins for several names is banned a while.

A client is an IPv4 address or an IPv6 /64 (common.auth.addresses). Failures are kept in
Postgres (defender_failures) for `defender_window_seconds`; once a client has at least
`defender_max_failures` of them for at least `defender_min_users` names it is banned for
`defender_ban_seconds` (ip_bans), and every door refuses it at connect time.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, distinct, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.auth.addresses import address_group, client_ip
from common.auth.clock import db_now
from common.config import Settings
from common.models import DefenderFailure, IpBan
from common.services import Services

log = logging.getLogger(__name__)


def count_failure(session: Session, settings: Settings, ip: str | None, subject: bytes) -> str | None:
    """Record a failure from an address; ban it once it crosses both thresholds (returns why)."""
    client = address_group(ip)
    if client is None:
        return None
    # Serialise per address, so concurrent failures all see each other's rows.
    session.execute(select(func.pg_advisory_xact_lock(_address_lock_key(client))))
    now = db_now(session)
    start = now - timedelta(seconds=settings.defender_window_seconds)
    session.execute(delete(DefenderFailure)
                    .where(DefenderFailure.ip == client, DefenderFailure.at <= start))
    session.add(DefenderFailure(ip=client, subject=subject, at=now))
    session.flush()
    total, names = session.execute(
        select(func.count(), func.count(distinct(DefenderFailure.subject)))
        .where(DefenderFailure.ip == client, DefenderFailure.at > start)).one()
    if total < settings.defender_max_failures or names < settings.defender_min_users:
        return None
    ban(session, client, now + timedelta(seconds=settings.defender_ban_seconds))
    log.warning("defender banned an address for %s s", settings.defender_ban_seconds)
    return (f"address banned for {settings.defender_ban_seconds} s after {total} failed logins "
            f"for {names} user names")


def recent_failures(session: Session, ip: str | None, subject: bytes, *, seconds: int) -> int:
    """Failures the defender holds from this address for this name over the last seconds."""
    if ip is None:
        return 0
    since = db_now(session) - timedelta(seconds=seconds)
    return session.scalar(select(func.count()).where(
        DefenderFailure.ip == ip, DefenderFailure.subject == subject, DefenderFailure.at > since))


def ban(session: Session, ip: str, until: datetime) -> None:
    """Ban a client until a time; the failures that led to it are spent."""
    session.execute(insert(IpBan).values(ip=ip, banned_until=until)
                    .on_conflict_do_update(index_elements=[IpBan.ip], set_={"banned_until": until}))
    # After the ban the address starts afresh.
    session.execute(delete(DefenderFailure).where(DefenderFailure.ip == ip))


def banned_until(session: Session, ip: str) -> datetime | None:
    """When the ban of this address's client ends, or None when it is not banned."""
    return session.scalar(select(IpBan.banned_until)
                          .where(IpBan.ip == address_group(ip), IpBan.banned_until > func.clock_timestamp()))


def is_banned(services: Services, ip: str | None) -> bool:
    """Whether the per-IP defender bans this address now (adapters check at connect time)."""
    address = client_ip(ip)
    if address is None:
        return False
    with services.db.session() as session:
        return banned_until(session, address) is not None


def prune(session: Session, settings: Settings) -> int:
    """Delete failures older than the window and bans that have run out."""
    now = db_now(session)
    window_start = now - timedelta(seconds=settings.defender_window_seconds)
    removed = session.execute(delete(DefenderFailure).where(DefenderFailure.at < window_start)).rowcount
    return removed + session.execute(delete(IpBan).where(IpBan.banned_until < now)).rowcount


def _address_lock_key(ip: str) -> int:
    return int.from_bytes(hashlib.sha256(b"defender:" + ip.encode()).digest()[:8], "big", signed=True)
