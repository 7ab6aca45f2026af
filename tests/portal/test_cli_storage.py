"""`accounts delete` and `keys rotate` through Flask's CLI runner on real Postgres, Redis and S3."""
from __future__ import annotations

import dataclasses
import os

import pytest
from sqlalchemy import select

from common.config import parse_master_keys
from common.models import FileVersion
from tests.factories import (
    NEW_KEY,
    CommittingUpload,
    file_key_versions,
    make_account_with_files,
    master_kids,
    read_all,
    rows_of,
)
from tests.fixtures import TEST_MASTER_KEYS, assert_one_line_error


def make_cli_app(settings):
    from portal import create_app
    return create_app(settings)


@pytest.fixture
def cli_app(settings, migrated, tmp_path):
    app = make_cli_app(dataclasses.replace(settings, spool_dir=tmp_path / "spool"))
    yield app
    app.extensions["sealdrop"].close()


def run(app, *args):
    with app.app_context():
        return app.test_cli_runner().invoke(args=[str(a) for a in args])




def test_accounts_delete_removes_everything_of_that_account_only(cli_app):
    svc = cli_app.extensions["sealdrop"]
    svc.store.ensure_bucket()
    files = {"/stored.bin": os.urandom(80_000), "/spooled.bin": os.urandom(90_000)}
    doomed = make_account_with_files(svc, files, ingest=("/stored.bin",))
    kept = make_account_with_files(svc, {"/mine.txt": b"still here"}, ingest=("/mine.txt",))
    with svc.db.session() as session:
        keys = session.scalars(select(FileVersion.storage_key).where(
            FileVersion.account_id == doomed[0])).all()
    assert len(keys) == 2 and any(svc.spool.has(k) for k in keys)  # one still awaits ingest

    result = run(cli_app, "accounts", "delete", doomed[3].upper())  # names are case-insensitive
    assert result.exit_code == 0, result.output
    assert f"Deleted account {doomed[0]}" in result.output
    assert rows_of(svc, doomed[0]) == {}
    for key in keys:
        assert svc.store.stat(key) is None and not svc.spool.has(key)
    read_all(svc, kept[:3], {"/mine.txt": b"still here"})
    assert rows_of(svc, kept[0])["file_versions"] == 1
    assert_one_line_error(run(cli_app, "accounts", "delete", doomed[3]), "No such account")


def test_keys_rotate_then_retire_the_old_master_key(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    files = {"/a.txt": b"rotate me " * 500}
    who = make_account_with_files(svc, files, ingest=("/a.txt",))

    both = dataclasses.replace(fresh_settings, master_keys=parse_master_keys(f"{NEW_KEY},{TEST_MASTER_KEYS}"))
    app = make_cli_app(both)
    try:
        first = run(app, "keys", "rotate")
        assert first.exit_code == 0, first.output
        assert "Re-wrapped 3 key(s) under master key k2" in first.output
        again = run(app, "keys", "rotate")
        assert "Re-wrapped 0 key(s)" in again.output  # a second run is a no-op
        by_account = run(app, "keys", "rotate", "--account", who[3])
        assert by_account.exit_code == 0, by_account.output
        assert "file-wrapping key version 2 (new): 1 file key(s) re-wrapped, 1 old version(s)" \
            in by_account.output
        assert_one_line_error(run(app, "keys", "rotate", "--account", "no-such-account"), "No such account")
    finally:
        app.extensions["sealdrop"].close()
    only_new = open_services(fresh_settings, NEW_KEY)
    assert master_kids(only_new) == {"k2"} and file_key_versions(only_new, who[0]) == [2]
    read_all(only_new, who[:3], files)


def test_keys_rotate_exits_1_with_the_counts_when_keys_stay_locked(fresh_settings, open_services):
    svc = open_services(fresh_settings)
    who = make_account_with_files(svc, {"/a.txt": b"locked during rotation"})
    both = dataclasses.replace(fresh_settings, master_keys=parse_master_keys(f"{NEW_KEY},{TEST_MASTER_KEYS}"))
    app = make_cli_app(both)
    upload = CommittingUpload(svc, who[0])  # an upload that never gets to finish its commit
    try:
        stuck = run(app, "keys", "rotate", "--wait", "0.5")
        upload.release()
        assert stuck.exit_code == 1
        assert_one_line_error(stuck, "1 stored key(s) are still under an old master key (1 under t1)")
        done = run(app, "keys", "rotate")
        assert done.exit_code == 0, done.output
        assert "Re-wrapped 1 key(s) under master key k2" in done.output
    finally:
        app.extensions["sealdrop"].close()
    assert master_kids(svc) == {"k2"}
