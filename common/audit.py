"""Recording audit events in per-account hash chains, and verifying the chains.

Every event carries the hash of the one before; the account row (or, for events that belong
to no account, the service_state row) keeps the head and the count, so an edited, deleted,
reordered or truncated event is detectable. The chain hashes the stored (sealed) bytes, which
key rotation never changes. `record` runs in the caller's transaction and locks the chain's
head row, so concurrent writers cannot fork the chain.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import doors
from common.crypto import Keyring
from common.models import Account, AuditEvent, AuditExport, ServiceState, User

GENESIS = bytes(32)

ACTIONS = (
    "login", "login_failed", "logout", "upload", "download", "delete", "rename", "mkdir",
    "share", "unshare", "link_access", "lockout", "denied", "integrity_failure", "admin_change",
)
PROTOCOLS = doors.AUDIT_PROTOCOLS
DIRECTIONS = ("in", "out")
STATUSES = ("ok", "failed", "refused")


@dataclass(frozen=True)
class Event:
    """What happened; names and paths are given in clear here and sealed on the way in."""

    action: str
    protocol: str
    status: str = "ok"
    account_id: int | None = None
    user_id: int | None = None
    username: str | None = None
    ip: str | None = None
    direction: str | None = None
    path: str | None = None
    bytes: int | None = None
    duration_ms: int | None = None
    detail: str | None = None

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown audit protocol {self.protocol!r}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown audit status {self.status!r}")
        if self.direction not in (None, *DIRECTIONS):
            raise ValueError(f"unknown audit direction {self.direction!r}")


def record(session: Session, keyring: Keyring, event: Event) -> AuditEvent:
    """Append an event to its chain in the caller's transaction."""
    keys = keyring.account(session, event.account_id) if event.account_id else keyring.service(session)
    head = _lock_head(session, event.account_id)
    row = AuditEvent(
        account_id=event.account_id,
        seq=head.audit_count + 1,
        at=datetime.now(timezone.utc),
        user_id=event.user_id,
        username_sealed=keys.seal_text(event.username, "audit-username") if event.username else None,
        ip=normalise_ip(event.ip),
        protocol=event.protocol,
        action=event.action,
        direction=event.direction,
        path_sealed=keys.seal_text(event.path, "audit-path") if event.path else None,
        nbytes=event.bytes,
        duration_ms=event.duration_ms,
        status=event.status,
        detail=event.detail,
        prev_hash=head.audit_head,
    )
    row.hash = event_hash(row)
    session.add(row)
    head.audit_head, head.audit_count = row.hash, row.seq
    session.flush()
    return row


def _lock_head(session: Session, account_id: int | None) -> Account | ServiceState:
    model, key = (Account, account_id) if account_id else (ServiceState, 1)
    head = session.get(model, key, with_for_update=True, populate_existing=True)
    if head is None:
        raise LookupError("audit chain head is missing")
    return head


def normalise_ip(ip: str | None) -> str | None:
    """The address without port, IPv4-mapped IPv6 shown as IPv4."""
    if not ip:
        return None
    if ip.lower().startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def event_hash(row: AuditEvent) -> bytes:
    """SHA-256 over the previous hash and every stored field, length-prefixed."""
    fields = (
        row.prev_hash, row.account_id, row.seq, row.at.astimezone(timezone.utc).isoformat(),
        row.user_id, row.username_sealed, row.ip, row.protocol, row.action, row.direction,
        row.path_sealed, row.nbytes, row.duration_ms, row.status, row.detail,
    )
    digest = hashlib.sha256(b"sealdrop-audit-v1")
    for value in fields:
        encoded = _encode(value)
        digest.update(struct.pack(">q", len(encoded) if encoded is not None else -1))
        digest.update(encoded or b"")
    return digest.digest()


def _encode(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    problem: str | None = None
    head: bytes | None = None  # the hash of the last event checked (GENESIS when none)


def verify_chain(session: Session, account_id: int | None, *, until: datetime | None = None) -> ChainReport:
    """Walk a chain in order and check every link, the head and the count.

    With `until`, only the events before that time: the chain as it stood then (the head row,
    which records the present, is not compared).
    """
    head = session.get(Account, account_id) if account_id else session.get(ServiceState, 1)
    if head is None:
        return ChainReport(False, 0, "the chain's head row is missing")
    query = (select(AuditEvent)
             .where(AuditEvent.account_id == account_id if account_id else AuditEvent.account_id.is_(None))
             .order_by(AuditEvent.seq)
             .execution_options(yield_per=2000))
    if until is not None:
        query = query.where(AuditEvent.at < until)
    expected_prev, count = GENESIS, 0
    for row in session.scalars(query):
        count += 1
        if row.seq != count:
            return ChainReport(False, count - 1, f"event {count} is missing (found {row.seq} next)")
        if row.prev_hash != expected_prev:
            return ChainReport(False, count - 1, f"event {row.seq} does not follow the one before")
        if event_hash(row) != row.hash:
            return ChainReport(False, count - 1, f"event {row.seq} was altered")
        expected_prev = row.hash
    if until is not None:
        return _check_continues(session, account_id, until, count, expected_prev)
    if count != head.audit_count or expected_prev != head.audit_head:
        return ChainReport(False, count, f"chain holds {count} events but its head records {head.audit_count}")
    return ChainReport(True, count, head=expected_prev)


def _check_continues(session: Session, account_id: int | None, until: datetime, count: int,
                     head: bytes) -> ChainReport:
    """The first later event (if any) must follow the last one checked: nothing cut at the edge."""
    following = session.scalars(
        select(AuditEvent).where(AuditEvent.account_id == account_id if account_id else AuditEvent.account_id.is_(None),
                                 AuditEvent.at >= until).order_by(AuditEvent.seq).limit(1)).first()
    if following is not None and (following.seq != count + 1 or following.prev_hash != head):
        return ChainReport(False, count, f"event {following.seq} does not follow the one before")
    return ChainReport(True, count, head=head)


@dataclass(frozen=True)
class EventView:
    """An event as an admin sees it: names and paths decrypted, IP without port."""

    seq: int
    at: datetime
    user_id: int | None
    username: str | None
    ip: str | None
    protocol: str
    action: str
    direction: str | None
    path: str | None
    bytes: int | None
    duration_ms: int | None
    status: str
    detail: str | None
    hash: bytes


@dataclass(frozen=True)
class EventFilter:
    """Which events: every field narrows; `path_text` matches inside the unsealed path (no case)."""

    actions: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    user_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    ip: str | None = None
    path_text: str | None = None
    max_seq: int | None = None  # pins a download to the chain as it stood when it began


@dataclass(frozen=True)
class EventPage:
    """One page of events, newest first, with the keyset bounds of its neighbours.

    `older`: pass as `before_seq` for the next older page; `newer`: as `after_seq` for the
    next newer one (None: no such page). `stopped_at`: a path search looked at `scanned`
    events and stopped at this seq before filling the page; the neighbours continue from there.
    """

    events: list[EventView]
    older: int | None
    newer: int | None
    scanned: int = 0
    stopped_at: int | None = None


PATH_SCAN_LIMIT = 20_000  # events a path search unseals for one page, at most


def query_events(session: Session, keyring: Keyring, account_id: int, flt: EventFilter = EventFilter(), *,
                 before_seq: int | None = None, limit: int = 50) -> list[EventView]:
    """One page of an account's events, newest first; pass the last seq as `before_seq` for more."""
    query = _filtered(account_id, flt).order_by(AuditEvent.seq.desc()).limit(min(limit, 1000))
    if before_seq is not None:
        query = query.where(AuditEvent.seq < before_seq)
    keys = keyring.account(session, account_id)
    return [_view(keys, row) for row in session.scalars(query)]


def iter_events(session: Session, keyring: Keyring, account_id: int, flt: EventFilter = EventFilter()):
    """Every matching event, oldest first, streamed in bounded memory (exports): plain columns
    through a server-side cursor, no ORM objects (a million of them cost more than the export)."""
    keys = keyring.account(session, account_id)
    openers = keys.text_opener("audit-username"), keys.text_opener("audit-path")
    query = _filtered(account_id, flt, *VIEW_COLUMNS).order_by(AuditEvent.seq).execution_options(yield_per=2000)
    for row in session.execute(query):
        view = _view_of_columns(openers, row)
        if _path_matches(view, flt.path_text):
            yield view


def page_events(session: Session, keyring: Keyring, account_id: int, flt: EventFilter = EventFilter(), *,
                before_seq: int | None = None, after_seq: int | None = None, limit: int = 50,
                scan_limit: int | None = None) -> EventPage:
    """One page of matching events by keyset on (account, seq): older than `before_seq`, or
    else the ones just newer than `after_seq`. A path search unseals at most `scan_limit` events."""
    limit, ascending = max(1, min(limit, 1000)), after_seq is not None
    scan_limit = scan_limit or PATH_SCAN_LIMIT
    query = _filtered(account_id, flt)
    bounded = query.where(AuditEvent.seq > after_seq) if ascending else (
        query.where(AuditEvent.seq < before_seq) if before_seq is not None else query)
    found, scanned, last_seq = _scan(session, keyring.account(session, account_id),
                                     bounded.order_by(AuditEvent.seq.asc() if ascending else AuditEvent.seq.desc()),
                                     flt.path_text, limit + 1, scan_limit)
    stopped = bool(flt.path_text) and scanned >= scan_limit and len(found) <= limit
    ahead = (last_seq if stopped else found[limit - 1].seq) if stopped or len(found) > limit else None
    found = found[:limit]
    start = found[0].seq if found else _just_past(after_seq, before_seq)
    behind = start if start is not None and _any(session, query, start, newer=not ascending) else None
    if ascending:
        return EventPage(found[::-1], older=behind, newer=ahead, scanned=scanned,
                         stopped_at=last_seq if stopped else None)
    return EventPage(found, older=ahead, newer=behind, scanned=scanned, stopped_at=last_seq if stopped else None)


def _scan(session: Session, keys, query, path_text: str | None, wanted: int, scan_limit: int):
    """(matching views, rows looked at, the last seq looked at), stopping at `wanted` matches."""
    if not path_text:
        views = [_view(keys, row) for row in session.scalars(query.limit(wanted))]
        return views, len(views), views[-1].seq if views else None
    found, scanned, last_seq = [], 0, None
    query = query.where(AuditEvent.path_sealed.is_not(None)).limit(scan_limit).execution_options(yield_per=500)
    for row in session.scalars(query):
        scanned, last_seq = scanned + 1, row.seq
        view = _view(keys, row)
        if _path_matches(view, path_text):
            found.append(view)
            if len(found) >= wanted:
                break
    return found, scanned, last_seq


def _just_past(after_seq: int | None, before_seq: int | None) -> int | None:
    """Where an empty page's neighbour starts: the bound it was asked for, taken inclusively."""
    if after_seq is not None:
        return after_seq + 1
    return before_seq - 1 if before_seq is not None else None


def _any(session: Session, query, seq: int, *, newer: bool) -> bool:
    """Whether a matching event lies beyond `seq` (path text aside: its page may then be empty)."""
    beyond = query.where(AuditEvent.seq > seq if newer else AuditEvent.seq < seq)
    return session.scalar(beyond.with_only_columns(AuditEvent.id).limit(1)) is not None


def _path_matches(view: EventView, path_text: str | None) -> bool:
    return not path_text or (view.path is not None and path_text.casefold() in view.path.casefold())


VIEW_COLUMNS = (AuditEvent.seq, AuditEvent.at, AuditEvent.user_id, AuditEvent.username_sealed, AuditEvent.ip,
                AuditEvent.protocol, AuditEvent.action, AuditEvent.direction, AuditEvent.path_sealed,
                AuditEvent.nbytes, AuditEvent.duration_ms, AuditEvent.status, AuditEvent.detail, AuditEvent.hash)


def _filtered(account_id: int, flt: EventFilter, *columns):
    """The filter's query: of whole events, or of `columns` when given."""
    query = select(*columns or (AuditEvent,)).where(AuditEvent.account_id == account_id)
    if flt.actions:
        query = query.where(AuditEvent.action.in_(flt.actions))
    if flt.protocols:
        query = query.where(AuditEvent.protocol.in_(flt.protocols))
    if flt.statuses:
        query = query.where(AuditEvent.status.in_(flt.statuses))
    if flt.user_id is not None:
        query = query.where(AuditEvent.user_id == flt.user_id)
    if flt.since is not None:
        query = query.where(AuditEvent.at >= flt.since)
    if flt.until is not None:
        query = query.where(AuditEvent.at < flt.until)
    if flt.ip:
        query = query.where(AuditEvent.ip == normalise_ip(flt.ip))
    if flt.max_seq is not None:
        query = query.where(AuditEvent.seq <= flt.max_seq)
    return query


def _view(keys, row: AuditEvent) -> EventView:
    return EventView(
        seq=row.seq, at=row.at, user_id=row.user_id,
        username=keys.open_text(row.username_sealed, "audit-username") if row.username_sealed else None,
        ip=row.ip, protocol=row.protocol, action=row.action, direction=row.direction,
        path=keys.open_text(row.path_sealed, "audit-path") if row.path_sealed else None,
        bytes=row.nbytes, duration_ms=row.duration_ms, status=row.status, detail=row.detail, hash=row.hash)


def _view_of_columns(openers, row) -> EventView:
    """A VIEW_COLUMNS row's view, unpacked by position (a Row's named access costs more than the rest)."""
    open_username, open_path = openers
    seq, at, user_id, username, ip, protocol, action, direction, path, nbytes, duration_ms, status, detail, digest = row
    return EventView(seq, at, user_id, open_username(username) if username else None, ip, protocol, action,
                     direction, open_path(path) if path else None, nbytes, duration_ms, status, detail, digest)


def user_choices(session: Session, keyring: Keyring, account_id: int) -> list[tuple[int, str]]:
    """(id, user name) of the account's users, by name: what the audit page's user filter offers."""
    service = keyring.service(session)
    rows = session.execute(select(User.id, User.username_sealed).where(User.account_id == account_id)).all()
    return sorted(((user_id, service.open_text(sealed, "username")) for user_id, sealed in rows),
                  key=lambda choice: (choice[1].casefold(), choice[0]))


def recent_exports(session: Session, account_id: int, limit: int = 31) -> list[AuditExport]:
    """The account's latest daily exports, newest day first (detached rows)."""
    rows = session.scalars(select(AuditExport).where(AuditExport.account_id == account_id)
                           .order_by(AuditExport.day.desc()).limit(limit)).all()
    for row in rows:
        session.expunge(row)
    return list(rows)
