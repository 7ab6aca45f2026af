"""Key rotation (master and per-account file-wrapping keys) and crypto-shredding.

Rotation re-wraps every stored key in a database, the service key included, so these tests
run on a database of their own: the shared one's keys must stay under the test master key.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import func, select

from common import accounts, rotation
from common.errors import ConfigError
from common.models import FileVersion, WrappedKey
from common.services import Services
from tests.fixtures import TEST_MASTER_KEYS
from tests.factories import CommittingUpload, NEW_KEY, file_key_versions, rows_of, make_account_with_files, master_kids, read_all


FILES = {"/a.txt": b"alpha " * 1000, "/b.bin": os.urandom(300_000)}


def test_master_rotation_keeps_every_file_readable(fresh_settings, open_services):
    old = open_services(fresh_settings)
    account_id, user_id, admin, _ = make_account_with_files(old, FILES, ingest=("/a.txt",))
    who = (account_id, user_id, admin)

    both = open_services(fresh_settings, f"{NEW_KEY},{TEST_MASTER_KEYS}")
    moved = rotation.rotate_master(both)
    assert moved == 3  # the service key, the account's data key and its file-wrapping key
    assert master_kids(both) == {"k2"}
    read_all(open_services(fresh_settings, f"{NEW_KEY},{TEST_MASTER_KEYS}"), who, FILES)

    only_new = open_services(fresh_settings, NEW_KEY)  # the old master key is retired
    read_all(only_new, who, FILES)
    with only_new.db.session() as session:  # names and logins still resolve: nothing re-sealed
        assert accounts.find_user(session, only_new.keyring, admin).id == user_id
    assert rotation.rotate_master(only_new) == 0  # a second run is a no-op
    with pytest.raises(ConfigError):
        read_all(open_services(fresh_settings), who, FILES)  # the old key alone opens nothing


def test_account_rotation_replaces_the_file_wrapping_key(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    account_id, user_id, admin, _ = make_account_with_files(svc, FILES, ingest=("/b.bin",))
    other_id, other_user, other_admin, _ = make_account_with_files(svc, {"/o.txt": b"other"})
    before = _wrapped_file_keys(svc, account_id)

    report = rotation.rotate_account(svc, account_id)
    assert (report.file_key_version, report.new_version) == (2, True)
    assert (report.rewrapped_files, report.deleted_versions) == (2, 1)
    assert file_key_versions(svc, account_id) == [2]
    assert {v for _, v in _wrapped_file_keys(svc, account_id).values()} == {2}
    assert all(_wrapped_file_keys(svc, account_id)[i][0] != before[i][0] for i in before)
    read_all(open_services(fresh_settings), (account_id, user_id, admin), FILES)  # a fresh keyring
    read_all(open_services(fresh_settings), (other_id, other_user, other_admin), {"/o.txt": b"other"})
    assert file_key_versions(svc, other_id) == [1]  # another account is untouched


def test_account_rotation_resumes_an_interrupted_run(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    files = {f"/f{i}.txt": f"file {i}".encode() * 100 for i in range(5)}
    account_id, user_id, admin, _ = make_account_with_files(svc, files)
    # An earlier run that died after adding version 2 and re-wrapping two of five files.
    with svc.db.session() as session:
        assert svc.keyring.add_file_key_version(session, account_id) == 2
        for row in session.scalars(select(FileVersion).where(FileVersion.account_id == account_id)
                                   .order_by(FileVersion.id).limit(2)):
            key = svc.keyring.unwrap_file_key(session, account_id, row.wrapped_key, 1, row.id.bytes)
            row.wrapped_key, row.key_version = svc.keyring.wrap_file_key(session, account_id, key, row.id.bytes)
    report = rotation.rotate_account(svc, account_id, batch=2)
    assert (report.file_key_version, report.new_version) == (2, False)  # resumed, not restarted
    assert (report.rewrapped_files, report.deleted_versions) == (3, 1)
    assert file_key_versions(svc, account_id) == [2]
    read_all(open_services(fresh_settings), (account_id, user_id, admin), files)


def test_account_deletion_shreds_keys_and_purges(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    files = {"/x.bin": os.urandom(50_000), "/y.bin": os.urandom(60_000)}
    doomed = make_account_with_files(svc, files, ingest=("/x.bin",))
    kept = make_account_with_files(svc, {"/k.txt": b"keep me"}, ingest=("/k.txt",))
    with svc.db.session() as session:
        keys = session.execute(select(FileVersion.storage_key, FileVersion.state)
                               .where(FileVersion.account_id == doomed[0])).all()
    report = accounts.delete_account(svc, doomed[0])
    assert report.versions == 2 and report.purged >= 2
    for key, _ in keys:
        assert svc.store.stat(key) is None and not svc.spool.has(key)
    assert rows_of(svc, doomed[0]) == {}
    read_all(open_services(fresh_settings), kept[:3], {"/k.txt": b"keep me"})
    with pytest.raises(LookupError):
        accounts.delete_account(svc, doomed[0])


def _wrapped_file_keys(svc: Services, account_id: int) -> dict:
    with svc.db.session() as session:
        rows = session.execute(select(FileVersion.id, FileVersion.wrapped_key, FileVersion.key_version)
                               .where(FileVersion.account_id == account_id)).all()
        return {i: (w, v) for i, w, v in rows}


def test_master_rotation_waits_for_a_key_locked_by_a_committing_upload(fresh_settings, open_services):
    old = open_services(fresh_settings)
    account_id, user_id, admin, _ = make_account_with_files(old, FILES)
    both = open_services(fresh_settings, f"{NEW_KEY},{TEST_MASTER_KEYS}")
    upload = CommittingUpload(both, account_id)
    outcome = {}
    rotating = threading.Thread(target=lambda: outcome.setdefault("moved", rotation.rotate_master(both)))
    rotating.start()
    try:
        # Release the lock only once every other key has moved: the rotation has passed the
        # locked row by then and must still be waiting for it.
        wait_until(lambda: master_kids(both) == {"k2", "t1"} and _left_under(both, "t1") == 1)
        assert rotating.is_alive()
    finally:
        upload.release()
    rotating.join(timeout=60)
    assert outcome == {"moved": 3} and master_kids(both) == {"k2"}
    read_all(open_services(fresh_settings, NEW_KEY), (account_id, user_id, admin), FILES)


def test_master_rotation_that_cannot_finish_says_what_is_left(fresh_settings, open_services):
    old = open_services(fresh_settings)
    account_id, *_ = make_account_with_files(old, {"/a.txt": b"a"})
    both = open_services(fresh_settings, f"{NEW_KEY},{TEST_MASTER_KEYS}")
    upload = CommittingUpload(both, account_id)
    try:
        with pytest.raises(rotation.KeysLeftBehind) as raised:
            rotation.rotate_master(both, wait_seconds=0.5)
    finally:
        upload.release()
    assert raised.value.left == {"t1": 1}
    assert "1 under t1" in raised.value.message and raised.value.exit_code == 1
    assert rotation.rotate_master(both) == 1 and master_kids(both) == {"k2"}


def _left_under(svc: Services, kid: str) -> int:
    with svc.db.session() as session:
        return session.scalar(select(func.count()).select_from(WrappedKey).where(WrappedKey.master_kid == kid))


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
