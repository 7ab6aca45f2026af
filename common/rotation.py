"""Key rotation: re-wrapping of stored keys (account deletion, the crypto-shredding, is in
common.accounts).

Rotation re-wraps keys only. It never re-seals data or recomputes blind indexes, so logins,
lookups and the audit chain stay valid. Every step commits in batches and only touches rows
not yet done, so an interrupted run is finished by running it again; a run with nothing left
to do changes nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from common.errors import SealdropError
from common.models import Account, FileVersion, WrappedKey
from common.services import Services

log = logging.getLogger(__name__)

BATCH = 500
LOCK_WAIT_SECONDS = 60.0  # how long a key locked by a committing upload is waited for
LOCK_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RotationReport:
    rewrapped_keys: int  # service and account keys moved under the active master key
    file_key_version: int | None = None  # the account's file-wrapping key version now active
    new_version: bool = False  # False when an unfinished earlier rotation was resumed
    rewrapped_files: int = 0
    deleted_versions: int = 0


class KeysLeftBehind(SealdropError):
    """Stored keys still wrapped by an old master key after a rotation gave up waiting for them."""

    code = "keys_left_behind"

    def __init__(self, left: dict[str, int]):
        self.left = left
        counts = ", ".join(f"{count} under {kid}" for kid, count in sorted(left.items()))
        super().__init__(f"{sum(left.values())} stored key(s) are still under an old master key "
                         f"({counts}); keep the old key in MASTER_KEYS and run the rotation again")

    def __reduce__(self):
        return type(self), (self.left,)


def rotate_master(services: Services, batch: int = BATCH, *, wait_seconds: float = LOCK_WAIT_SECONDS) -> int:
    """Re-wrap every stored key not under the active master key; returns how many moved.

    Rows locked at the moment (an upload committing holds its account's file-wrapping key) are
    skipped and tried again until `wait_seconds` pass without progress; any key still under an
    old master key then raises KeysLeftBehind, so a rotation never reports success too soon.
    """
    active, moved, deadline = services.keyring.master.active.kid, 0, None
    while True:
        with services.db.session() as session:
            rows = session.scalars(
                select(WrappedKey).where(WrappedKey.master_kid != active)
                .order_by(WrappedKey.id).limit(batch).with_for_update(skip_locked=True)).all()
            moved += sum(services.keyring.rewrap(row) for row in rows)
        if len(rows) == batch:
            continue
        left = _keys_left(services, active)
        if not left:
            break
        if rows or deadline is None:
            deadline = time.monotonic() + wait_seconds
        elif time.monotonic() >= deadline:
            log.warning("master rotation stopped with %d key(s) left under old master keys", sum(left.values()))
            raise KeysLeftBehind(left)
        time.sleep(LOCK_POLL_SECONDS)
    log.info("re-wrapped %d stored key(s) under master key %s", moved, active)
    return moved


def _keys_left(services: Services, active: str) -> dict[str, int]:
    """How many stored keys each old master key still wraps."""
    with services.db.session() as session:
        return dict(session.execute(select(WrappedKey.master_kid, func.count()).where(
            WrappedKey.master_kid != active).group_by(WrappedKey.master_kid)).all())


def rotate_account(services: Services, account_id: int, batch: int = BATCH, *,
                   wait_seconds: float = LOCK_WAIT_SECONDS) -> RotationReport:
    """Replace an account's file-wrapping key and re-wrap its file keys (resuming a crashed run)."""
    moved = rotate_master(services, batch, wait_seconds=wait_seconds)
    version, new = _target_version(services, account_id)
    rewrapped = _rewrap_file_keys(services, account_id, version, batch)
    deleted = _drop_old_versions(services, account_id, version, batch)
    log.info("account %s: file-wrapping key v%d, %d file key(s) re-wrapped, %d old version(s) deleted",
             account_id, version, rewrapped, deleted)
    return RotationReport(moved, version, new, rewrapped, deleted)


def _target_version(services: Services, account_id: int) -> tuple[int, bool]:
    """The version to move file keys to: a new one, or the one an unfinished run created.

    A finished rotation leaves exactly one file-wrapping key; older versions still present
    mean an earlier run stopped before its end, so we carry on with its newest version.
    """
    with services.db.session() as session:
        _lock_account(session, account_id)
        versions = session.scalars(select(WrappedKey.version).where(
            WrappedKey.account_id == account_id, WrappedKey.purpose == "file")).all()
        if len(versions) > 1:
            return max(versions), False
        return services.keyring.add_file_key_version(session, account_id), True


def _lock_account(session, account_id: int) -> None:
    # Two rotations of one account at once would each add a version; the second waits here.
    if session.get(Account, account_id, with_for_update=True) is None:
        raise LookupError(f"account {account_id} does not exist")


def _rewrap_file_keys(services: Services, account_id: int, version: int, batch: int) -> int:
    keyring, done = services.keyring, 0
    while True:
        with services.db.session() as session:
            rows = session.scalars(
                select(FileVersion).where(FileVersion.account_id == account_id,
                                          FileVersion.key_version < version)
                .order_by(FileVersion.id).limit(batch).with_for_update(skip_locked=True)).all()
            for row in rows:
                file_key = keyring.unwrap_file_key(session, account_id, row.wrapped_key,
                                                   row.key_version, row.id.bytes)
                row.wrapped_key, row.key_version = keyring.wrap_file_key(
                    session, account_id, file_key, row.id.bytes)
            done += len(rows)
        if len(rows) < batch:
            return done


def _drop_old_versions(services: Services, account_id: int, version: int, batch: int) -> int:
    """Delete the file-wrapping keys older than `version` once no file version uses them."""
    while True:
        with services.db.session() as session:
            # Lock the old keys first: an upload committing under one holds it (see the
            # report), and once we hold them the count below sees every committed user.
            old = session.scalars(select(WrappedKey).where(
                WrappedKey.account_id == account_id, WrappedKey.purpose == "file",
                WrappedKey.version < version).with_for_update()).all()
            if not old:
                return 0
            users = session.scalar(select(func.count()).select_from(FileVersion).where(
                FileVersion.account_id == account_id, FileVersion.key_version < version))
            if users == 0:
                for row in old:
                    session.delete(row)
                return len(old)
        # Files committed under an old key while we worked: move them too, then try again.
        _rewrap_file_keys(services, account_id, version, batch)
