"""Factories and helpers the tests share: accounts with files, logins, keys, uploads and waits."""
from __future__ import annotations

import base64
import hashlib
import secrets
import time

import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select, text

from common import accounts, auth, sharing
from common.auth import totp
from common.errors import (
    AuthFailed,
)
from common.jobs.ingest import ingest_version
from common.models import Account, FileVersion, User, WrappedKey
from common.services import Services
from common.vfs import Principal, Workspace
from tests.fixtures import STRONG_PASSWORD


def random_ip() -> str:
    # A fresh address per test keeps the per-IP defender of one test out of the others.
    return "10.{}.{}.{}".format(secrets.randbelow(256), secrets.randbelow(256), 1 + secrets.randbelow(254))


def login(services, username, secret, *, protocol="web", method="password", ip=None):
    return auth.authenticate(services, username, secret, method=method, protocol=protocol,
                             ip=ip or random_ip())


def require_mfa(services, account_id, on=True):
    with_account(services, account_id,
                 lambda s, a: auth.set_policy(s, services.keyring, a, require_mfa=on))


def enrol(services, user_id) -> pyotp.TOTP:
    uri = with_user(services, user_id, lambda s, u: totp.enrol_totp(s, services.keyring, u))
    return pyotp.parse_uri(uri)


def new_ed25519_line(comment="laptop") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " " + comment


def add_key(services, user_id, line) -> bytes:
    with_user(services, user_id, lambda s, u: auth.add_ssh_key(s, services.keyring, u, line))
    return auth.parse_public_key(line).blob


def allow(services, account_id, cidr, user_id=None):
    def change(session, account):
        user = session.get(User, user_id) if user_id else None
        auth.add_ip_rule(session, services.keyring, account, cidr, user=user)
    with_account(services, account_id, change)


def refused(call) -> AuthFailed:
    with pytest.raises(AuthFailed) as caught:
        call()
    assert caught.value.message == AuthFailed.default_message
    assert caught.value.code == "auth_failed"
    return caught.value


MiB = 1024 * 1024


def upload(ws: Workspace, path: str, data: bytes):
    up = ws.open_write(path)
    for i in range(0, len(data), MiB):
        up.write(data[i:i + MiB])
    return up.commit()


def download(ws: Workspace, path: str) -> bytes:
    return b"".join(ws.open_read(path))


def current_version(svc: Services, ws: Workspace, path: str) -> FileVersion:
    with svc.db.session() as session:
        return session.get(FileVersion, ws.stat(path).version)


def wait_for(predicate, timeout: float = 60, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def assert_stored_once(svc: Services, version: FileVersion, data: bytes) -> None:
    with svc.db.session() as session:
        row = session.get(FileVersion, version.id)
        assert row.state == "stored" and row.stored_at is not None
        siblings = session.scalars(select(FileVersion).where(FileVersion.node_id == row.node_id)).all()
        assert [v.id for v in siblings] == [row.id]
    assert svc.store.stat(row.storage_key).size == row.cipher_size
    assert svc.store.sha256(row.storage_key) == row.cipher_sha256
    assert not svc.spool.has(row.storage_key)
    assert hashlib.sha256(data).digest() == row.sha256


NEW_KEY = "k2:" + base64.b64encode(b"sealdrop-test-master-key-0000002").decode()


def make_account_with_files(svc: Services, files: dict[str, bytes], ingest: tuple[str, ...] = ()):
    name, admin = "acct-" + secrets.token_hex(4), "admin" + secrets.token_hex(4)
    with svc.db.session() as session:
        account, user = accounts.create_account(
            session, svc.keyring, name=name, tier="t5", admin_username=admin,
            admin_email=f"{admin}@example.test", admin_password=STRONG_PASSWORD)
        ids = (account.id, user.id)
    ws = workspace(svc, *ids, admin)
    for path, data in files.items():
        up = ws.open_write(path)
        up.write(data)
        up.commit()
        if path in ingest:
            assert ingest_version(svc, current_version_id(svc, ws, path)) == "stored"
    return ids[0], ids[1], admin, name


def read_all(svc: Services, who: tuple, files: dict[str, bytes]) -> None:
    ws = workspace(svc, *who)
    for path, data in files.items():
        assert b"".join(ws.open_read(path)) == data


def master_kids(svc: Services) -> set[str]:
    with svc.db.session() as session:
        return set(session.scalars(select(WrappedKey.master_kid)))


def rows_of(svc: Services, account_id: int) -> dict[str, int]:
    """Rows in any table that still point at the account."""
    from common.db import Base
    left = {}
    with svc.db.session() as session:
        for table in Base.metadata.sorted_tables:
            column = table.c.get("account_id") if table.name != "accounts" else table.c.id
            if column is None:
                continue
            count = session.scalar(select(text("count(*)")).select_from(table).where(column == account_id))
            if count:
                left[table.name] = count
    return left


def file_key_versions(svc: Services, account_id: int) -> list[int]:
    with svc.db.session() as session:
        return sorted(session.scalars(select(WrappedKey.version).where(
            WrappedKey.account_id == account_id, WrappedKey.purpose == "file")))


class CommittingUpload:
    """A second connection holding what an upload's commit holds: its account's file-wrapping
    key row, FOR SHARE, until `release()`."""

    def __init__(self, svc: Services, account_id: int):
        self.connection = svc.db.engine.connect()
        self.connection.execute(text(
            "SELECT id FROM wrapped_keys WHERE account_id = :a AND purpose = 'file' FOR SHARE"),
            {"a": account_id})

    def release(self) -> None:
        self.connection.rollback()
        self.connection.close()


def with_account(services, account_id, change):
    with services.db.session() as session:
        return change(session, session.get(Account, account_id))


def with_user(services, user_id, change):
    with services.db.session() as session:
        return change(session, session.get(User, user_id))


def workspace(svc: Services, account_id: int, user_id: int, username: str, *, door: str = "web") -> Workspace:
    return Workspace(svc, Principal(user_id, account_id, username, "admin", door, "127.0.0.1"))


def admin_workspace(svc: Services, account, *, door: str = "web") -> Workspace:
    """The Workspace of the admin of an account as the `account` fixture gives it."""
    return workspace(svc, account.id, account.admin_id, account.admin_username, door=door)


def current_version_id(svc, ws, path):
    return ws.stat(path).version


def principal(account, user_id: int, username: str, role: str = "user", protocol: str = "web") -> Principal:
    """A logged-in user of `account` (an AccountInfo) on a door."""
    return Principal(user_id, account.id, username, role, protocol, "127.0.0.1")


def share(services, account, owner_name: str, folder: str, to: str, perm: str) -> int:
    """Share the owner's folder (a path in their home) with a user name or an email; the share's id."""
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        owner = accounts.find_account_user(session, services.keyring, acct, owner_name)
        node = sharing.find_folder(session, services.keyring, owner, folder)
        return sharing.share_folder(session, services.keyring, acct, owner, node, to=to, permission=perm).id
