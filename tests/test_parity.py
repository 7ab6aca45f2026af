"""One behaviour table, run through every door: the Workspace itself and each real protocol.

Each door is a small client wrapper (tests/doors.py) that performs the table's operations and
reports failures as one of a few outcome words, so the same expectations hold for all doors.
A door joins the matrix by adding its name to DOORS and a branch in the `door` fixture.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from tests.doors import DoorError, WorkspaceDoor, make_door

DOORS = ["workspace", "ftps", "sftp", "web"]


@pytest.fixture(params=DOORS)
def door(request, services, make_account, make_user):
    """A logged-in client of one door, for the admin of a fresh account."""
    services.store.ensure_bucket()
    account = make_account()
    return make_door(request, request.param, services, account)


def outcome(call, *args):
    try:
        call(*args)
        return "ok"
    except DoorError as exc:
        return exc.kind


def test_round_trip_keeps_every_byte(door):
    data = os.urandom(300_000) + b"\x00\r\n" * 5
    door.mkdir("/in")
    door.upload("/in/data.bin", data)
    got = door.download("/in/data.bin")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert door.size("/in/data.bin") == len(data)


def test_listing_shows_reserved_folders_and_entries(door):
    door.mkdir("/alpha")
    door.upload("/beta.txt", b"b")
    assert door.list("/") == ["Audit Logs", "Shared", "alpha", "beta.txt"]


def test_rename_and_delete(door):
    door.upload("/old.txt", b"content")
    door.rename("/old.txt", "/new.txt")
    assert door.download("/new.txt") == b"content"
    assert outcome(door.download, "/old.txt") == "not_found"
    door.remove("/new.txt")
    assert outcome(door.download, "/new.txt") == "not_found"


def test_overwrite_is_atomic_replacement(door):
    door.upload("/f.txt", b"first version")
    door.upload("/f.txt", b"second")
    assert door.download("/f.txt") == b"second"


def test_folders_nest_and_remove(door):
    door.mkdir("/a")
    door.mkdir("/a/b")
    door.upload("/a/b/c.txt", b"c")
    assert door.list("/a/b") == ["c.txt"]
    door.rmdir_tree("/a")
    assert outcome(door.list, "/a") == "not_found"


@pytest.mark.parametrize("path, expected", [
    ("/Shared/x.txt", "denied"),
    ("/Audit Logs/x.txt", "denied"),
    ("/no/such/folder/x.txt", "not_found"),
])
def test_uploads_where_they_are_not_allowed(door, path, expected):
    assert outcome(door.upload, path, b"x") == expected


@pytest.mark.parametrize("name", ["bad\u202ename.txt", "zero\u200bwidth.txt", "ctl\x07.txt"])
def test_hostile_names_are_refused(door, name):
    assert outcome(door.upload, "/" + name, b"x") in ("invalid", "denied")
    assert name not in door.list("/")


def test_missing_things(door):
    assert outcome(door.download, "/nope.txt") == "not_found"
    assert outcome(door.remove, "/nope.txt") == "not_found"
    assert outcome(door.mkdir, "/exists") == "ok"
    assert outcome(door.mkdir, "/exists") == "exists"


def test_workspace_door_is_the_reference(services, make_account):
    """The in-process door must agree with the real ones; this pins its own error mapping."""
    services.store.ensure_bucket()
    door = WorkspaceDoor.for_admin(services, make_account(), "web")
    assert outcome(door.download, "/missing") == "not_found"


def test_a_session_ends_with_one_logout_event(services, make_account, request):
    """Both protocol doors audit the end of a logged-in session exactly once."""
    import time as _time
    from common import audit
    from tests.transfer.ftps_door import connect as ftps_connect, quit_quietly
    from tests.transfer.sftp_door import connect as sftp_connect
    account = make_account()
    ftp = ftps_connect(request.getfixturevalue("ftps_server"), account.admin_username, account.password)
    ftp.pwd()
    quit_quietly(ftp)
    transport, client = sftp_connect(request.getfixturevalue("sftp_server").port, account.admin_username,
                                     password=account.password)
    client.listdir("/")
    transport.close()
    deadline = _time.monotonic() + 10
    while _time.monotonic() < deadline:
        with services.db.session() as session:
            logouts = audit.query_events(session, services.keyring, account.id,
                                         audit.EventFilter(actions=("logout",)))
        if len(logouts) >= 2:
            break
        _time.sleep(0.2)
    assert sorted(e.protocol for e in logouts) == ["ftps", "sftp"]
    assert all(e.user_id == account.admin_id and e.duration_ms is not None for e in logouts)


# -- one gate: lockout and allow-lists hold across the real doors ------------------------------

def _ftps_login(request, username, password, source="127.0.0.1"):
    from tests.transfer.ftps_door import connect, quit_quietly
    import ftplib
    try:
        quit_quietly(connect(request.getfixturevalue("ftps_server"), username, password, source=source))
        return "ok"
    except ftplib.error_perm as exc:
        assert str(exc).startswith("530")
        return "refused"


def _sftp_login(request, username, password, source="127.0.0.1"):
    import paramiko
    from tests.transfer.sftp_door import connect
    try:
        transport, _ = connect(request.getfixturevalue("sftp_server").port, username, password=password,
                               source=source)
        transport.close()
        return "ok"
    except paramiko.AuthenticationException:
        return "refused"


LOGINS = {"ftps": _ftps_login, "sftp": _sftp_login}


@pytest.mark.parametrize("failing, checking", [("ftps", "sftp"), ("sftp", "ftps")])
def test_a_lockout_on_one_door_holds_on_the_other(request, services, make_account, make_user, failing, checking):
    from tests.fixtures import STRONG_PASSWORD
    _, username = make_user(make_account())
    for _ in range(3):
        assert LOGINS[failing](request, username, "not-the-password") == "refused"
    assert LOGINS[checking](request, username, STRONG_PASSWORD) == "refused"
    assert LOGINS[failing](request, username, STRONG_PASSWORD) == "refused"


@pytest.mark.parametrize("door", ["ftps", "sftp"])
def test_an_allow_list_holds_on_every_door(request, services, make_account, door):
    from common import auth
    from common.models import Account
    account = make_account("t2")
    with services.db.session() as session:
        auth.add_ip_rule(session, services.keyring, session.get(Account, account.id), "127.0.0.1/32")
    assert LOGINS[door](request, account.admin_username, account.password, source="127.0.0.2") == "refused"
    assert LOGINS[door](request, account.admin_username, account.password, source="127.0.0.1") == "ok"
