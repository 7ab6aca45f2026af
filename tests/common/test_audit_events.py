"""Every transfer, change and refusal through the Workspace is exactly one complete audit event."""
from __future__ import annotations

import pytest

from common import audit
from common.errors import PermissionDenied
from common.vfs import Principal, Workspace


@pytest.fixture
def ws(services, account):
    services.store.ensure_bucket()
    return Workspace(services, Principal(account.admin_id, account.id, account.admin_username, "admin",
                                         "ftps", "::ffff:127.0.0.5"))


def events_during(services, account_id, action):
    with services.db.session() as session:
        before = audit.query_events(session, services.keyring, account_id, limit=1)
    last = before[0].seq if before else 0
    action()
    with services.db.session() as session:
        return [e for e in audit.iter_events(session, services.keyring, account_id) if e.seq > last]


def upload(ws, path, data):
    up = ws.open_write(path)
    up.write(data)
    up.commit()


@pytest.mark.parametrize("operation, expected", [
    ("mkdir", ("mkdir", None, None, "ok", "/docs")),
    ("upload", ("upload", "in", 11, "ok", "/docs/a.txt")),
    ("download", ("download", "out", 11, "ok", "/docs/a.txt")),
    ("rename", ("rename", None, None, "ok", "/docs/a.txt -> /docs/b.txt")),
    ("delete", ("delete", None, None, "ok", "/docs/b.txt")),
    ("aborted upload", ("upload", "in", 5, "failed", "/docs/c.txt")),
    ("refused upload", ("denied", None, None, "refused", "/Audit Logs/x")),
])
def test_each_operation_is_one_event(services, account, ws, operation, expected):
    steps = {
        "mkdir": lambda: ws.make_dir("/docs"),
        "upload": lambda: upload(ws, "/docs/a.txt", b"hello world"),
        "download": lambda: b"".join(ws.open_read("/docs/a.txt")),
        "rename": lambda: ws.rename("/docs/a.txt", "/docs/b.txt"),
        "delete": lambda: ws.remove("/docs/b.txt"),
    }
    order = list(steps)
    for name in order[:order.index(operation)] if operation in steps else order[:1]:
        steps[name]()
    if operation == "aborted upload":
        def act():
            up = ws.open_write("/docs/c.txt")
            up.write(b"12345")
            up.abort()
    elif operation == "refused upload":
        def act():
            with pytest.raises(PermissionDenied):
                ws.open_write("/Audit Logs/x")
    else:
        act = steps[operation]
    [event] = events_during(services, account.id, act)
    assert (event.action, event.direction, event.bytes, event.status, event.path) == expected
    assert event.protocol == "ftps" and event.ip == "127.0.0.5"
    assert event.username == account.admin_username and event.user_id == account.admin_id
    if event.action in ("upload", "download"):
        assert event.duration_ms is not None


def test_listing_and_stat_are_not_audited(services, account, ws):
    ws.make_dir("/quiet")
    assert events_during(services, account.id, lambda: (ws.list_dir("/"), ws.stat("/quiet"))) == []
