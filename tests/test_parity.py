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

DOORS = ["workspace", "ftps", "sftp"]


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
