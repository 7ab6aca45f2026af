"""Account and user administration racing the doors, on real Postgres, Redis and S3."""
from __future__ import annotations

import os
import threading
import time

from sqlalchemy import event, select, text

from common import accounts
from common.errors import NotFound
from common.models import Account, FileVersion, PendingPurge, User
from common.vfs import Principal, Workspace


def test_deleting_a_user_while_their_upload_commits_orphans_no_ciphertext(services, account, make_user):
    services.store.ensure_bucket()
    user_id, username = make_user(account)
    ws = Workspace(services, Principal(user_id, account.id, username, "user", "sftp", "127.0.0.1"))
    up = ws.open_write("/late.bin")
    up.write(os.urandom(200_000))
    key = up.storage_key
    outcome = {}

    def commit():
        try:
            outcome["commit"] = up.commit()
        except Exception as exc:  # noqa: BLE001 (the outcome is what the test checks)
            outcome["commit"] = exc

    committing = threading.Thread(target=commit)
    with services.db.session() as session:
        deleting = session.connection()
        pid = session.scalar(text("SELECT pg_backend_pid()"))

        def commit_in_the_middle(conn, cursor, statement, *_):
            # Right after the deletion has read the versions it will queue for purge, the
            # upload commits: it must wait for the deletion, or be seen by it.
            if conn is deleting and "file_versions" in statement and not committing.is_alive() \
                    and "commit" not in outcome:
                committing.start()
                wait_until(lambda: not committing.is_alive() or _blocked_by(services, pid))

        event.listen(services.db.engine, "after_cursor_execute", commit_in_the_middle)
        try:
            accounts.delete_user(session, services.keyring, session.get(Account, account.id),
                                 session.get(User, user_id))
        finally:
            event.remove(services.db.engine, "after_cursor_execute", commit_in_the_middle)
    committing.join(timeout=60)
    assert isinstance(outcome["commit"], NotFound)  # cleanly refused: the folder went first
    with services.db.session() as session:
        named = session.scalar(select(FileVersion.id).where(FileVersion.storage_key == key))
        queued = session.scalar(select(PendingPurge.id).where(PendingPurge.storage_key == key))
    assert named is None
    assert queued is not None or not services.spool.has(key)  # nothing left that nobody erases


def _blocked_by(services, pid: int) -> bool:
    with services.db.engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                           {"pid": pid}) > 0


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
