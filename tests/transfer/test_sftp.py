"""The SFTP door over real clients: paramiko, OpenSSH (sftp, ssh, sshpass) and rclone.

Every server runs in-process on 127.0.0.1 (tests/transfer/sftp_door.py). A missing client
tool fails the test: CI installs them all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import paramiko
import pyotp
import pytest
from paramiko.common import cMSG_CHANNEL_DATA, cMSG_CHANNEL_REQUEST, cMSG_DISCONNECT, cMSG_USERAUTH_INFO_RESPONSE
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE, CMD_EXTENDED, CMD_HANDLE, CMD_INIT, CMD_OPEN, CMD_OPENDIR, CMD_READ, CMD_STATUS, CMD_VERSION,
    CMD_WRITE, SFTP_BAD_MESSAGE, SFTP_FAILURE, SFTP_OP_UNSUPPORTED, int64,
)
from sqlalchemy import func, select

from common import accounts, auth
from common.auth import defender, totp
from common.cipherstream import CHUNK_SIZE, chunk_offset
from common.errors import AuthFailed, NotFound
from common.jobs.ingest import ingest_version
from common.models import AuditEvent, DefenderFailure, FileVersion, User
from common.services import Services
from tests.factories import admin_workspace
from tests.fixtures import STRONG_PASSWORD, client_env, tool
from tests.transfer.sftp_door import (
    SftpStatus, StatusSFTPClient, close_checked, connect, fresh_source, open_transport, start_sftp_server,
    write_host_key,
)
from transfer.sftp import CIPHERS, MACS, Limits
from transfer.sftp.limits import MAX_HANDLES, TRANSFER_LENGTH

SSH_OPTIONS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentityAgent=none", "-o", "ConnectTimeout=20", "-o", "NumberOfPasswordPrompts=1",
               "-o", "LogLevel=ERROR"]
PASSWORD_AUTH = ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no",
                 "-o", "PreferredAuthentications=password,keyboard-interactive"]


# -- helpers -------------------------------------------------------------------------------------

@pytest.fixture
def client_home(tmp_path, test_env) -> dict[str, str]:
    """A clean environment for third-party clients: throwaway HOME, no agent, no config."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in client_env(test_env).items() if not k.startswith(("SSH_", "RCLONE_"))}
    return {**env, "HOME": str(home)}


def run(args: list[str], env: dict[str, str], *, timeout: float = 180, password: str | None = None):
    if password is not None:
        args, env = [tool("sshpass"), "-e", *args], {**env, "SSHPASS": password}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def sftp_batch(server, user: str, lines: list[str], env, tmp_path: Path, *, password: str | None = None,
               key: Path | None = None, extra: tuple[str, ...] = ()):
    batch = tmp_path / f"batch-{time.monotonic_ns()}"
    batch.write_text("\n".join(lines) + "\n")
    auth_options = PASSWORD_AUTH if key is None else [
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "PreferredAuthentications=publickey",
        "-i", str(key)]
    args = [tool("sftp"), *SSH_OPTIONS, *auth_options, *extra, "-P", str(server.port), "-b", str(batch),
            f"{user}@127.0.0.1"]
    return run(args, env, password=password)


def events(services, account_id: int | None, *, action: str | None = None, since: datetime | None = None):
    with services.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.protocol == "sftp").order_by(AuditEvent.id)
        if account_id is not None:
            query = query.where(AuditEvent.account_id == account_id)
        if action:
            query = query.where(AuditEvent.action == action)
        if since:
            query = query.where(AuditEvent.at >= since)
        rows = session.scalars(query).all()
        session.expunge_all()
        return rows


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def user_row(session, services, username: str) -> User:
    return accounts.find_user(session, services.keyring, username)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def login(sftp_server, account):
    """An SFTP client logged in as the admin of a fresh account."""
    transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
    yield client
    transport.close()


# -- transfers -----------------------------------------------------------------------------------

def test_50_mib_round_trip_with_openssh_and_stored_checksums(sftp_server, services, account, client_home, tmp_path):
    data = os.urandom(50 * 1024 * 1024)
    local, back = tmp_path / "big.bin", tmp_path / "back.bin"
    local.write_bytes(data)
    result = sftp_batch(sftp_server, account.admin_username,
                        ["mkdir /in", f"put {local} /in/big.bin", f"get /in/big.bin {back}"],
                        client_home, tmp_path, password=account.password)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        with client.open("/in/big.bin", "rb") as handle:
            assert handle.check("sha256") == hashlib.sha256(data).digest()
            assert handle.check("md5") == hashlib.md5(data).digest()
    finally:
        transport.close()
    uploads = events(services, account.id, action="upload")
    assert [(e.status, e.direction, e.nbytes) for e in uploads] == [("ok", "in", len(data))]
    downloads = events(services, account.id, action="download")
    assert downloads[0].status == "ok" and downloads[0].nbytes == len(data) and downloads[0].direction == "out"


def test_close_reply_comes_after_the_commit(login, services, account):
    payload = os.urandom(700_000)
    handle = login.open("/c.bin", "wb")
    handle.set_pipelined(True)
    handle.write(payload)
    close_checked(login, handle)
    # No waiting: once CLOSE was answered the version is committed, spooled and visible.
    entry = admin_workspace(services, account).stat("/c.bin")
    assert entry.size == len(payload) and entry.sha256 == hashlib.sha256(payload).digest()


def test_resume_download_at_an_offset(login, services, account):
    payload = os.urandom(1_000_000)
    with login.open("/r.bin", "wb") as handle:
        handle.write(payload)
    with login.open("/r.bin", "rb") as handle:
        handle.seek(654_321)
        assert handle.read() == payload[654_321:]
    partial = events(services, account.id, action="download")[-1]
    assert partial.status == "ok" and partial.nbytes == len(payload) - 654_321


def test_check_file_by_name_and_unsupported_ranges(login):
    payload = b"fingerprinted" * 1000
    with login.open("/h.txt", "wb") as handle:
        handle.write(payload)
    _, msg = login._request(CMD_EXTENDED, "check-file-name", "/h.txt", "sha1,sha256", int64(0), int64(0), 0)
    assert msg.get_text() == "check-file" and msg.get_text() == "sha256"
    assert msg.get_remainder() == hashlib.sha256(payload).digest()
    with pytest.raises(SftpStatus) as refused:
        login._request(CMD_EXTENDED, "check-file-name", "/h.txt", "md5", int64(10), int64(0), 0)
    assert refused.value.code == SFTP_OP_UNSUPPORTED
    with pytest.raises(SftpStatus) as refused:
        login._request(CMD_EXTENDED, "check-file-name", "/h.txt", "sha1", int64(0), int64(0), 0)
    assert refused.value.code == SFTP_OP_UNSUPPORTED


def test_limits_extension_offers_255_kib_requests(login):
    _, msg = login._request(CMD_EXTENDED, "limits@openssh.com")
    packet, read, write, handles = (msg.get_int64() for _ in range(4))
    assert (read, write, handles) == (TRANSFER_LENGTH, TRANSFER_LENGTH, MAX_HANDLES)
    assert TRANSFER_LENGTH + 1024 <= packet  # a full WRITE request fits the packets we accept


def test_openssh_moves_255_kib_per_request_once_told_the_limits(sftp_server, account, client_home, tmp_path):
    data = os.urandom(3 * TRANSFER_LENGTH + 1000)
    local, back = tmp_path / "l.bin", tmp_path / "back.bin"
    local.write_bytes(data)
    result = sftp_batch(sftp_server, account.admin_username, [f"put {local} /l.bin", f"get /l.bin {back}"],
                        client_home, tmp_path, password=account.password, extra=("-vvv",))
    assert result.returncode == 0, result.stderr
    assert back.read_bytes() == data
    assert re.search(rf"using {TRANSFER_LENGTH} / {TRANSFER_LENGTH}|Using server download size {TRANSFER_LENGTH}",
                     result.stderr), result.stderr[-3000:]


def test_out_of_order_writes_within_the_window_are_reordered(login, services, account):
    pieces = [os.urandom(32 * 1024) for _ in range(6)]
    handle = login.open("/o.bin", "wb")
    for index in (1, 0, 3, 2, 5, 4):
        login._request(CMD_WRITE, handle.handle, int64(index * 32 * 1024), pieces[index])
    close_checked(login, handle)
    assert admin_workspace(services, account).stat("/o.bin").sha256 == hashlib.sha256(b"".join(pieces)).digest()


def test_early_writes_held_in_memory_are_bounded(login, services, account):
    from transfer.sftp import SESSION_REORDER_BYTES
    piece = os.urandom(256 * 1024)
    handles = [login.open(f"/hog{i}.bin", "wb") for i in range(4)]
    refused = 0
    for h_index, handle in enumerate(handles):
        for offset in range(1, 25):  # never offset 0: every piece waits for a gap that never fills
            try:
                login._request(CMD_WRITE, handle.handle, int64(offset * len(piece)), piece)
            except SftpStatus as exc:
                assert exc.code == SFTP_OP_UNSUPPORTED
                refused += 1
                break
    assert 4 * 24 * len(piece) > SESSION_REORDER_BYTES  # the test offers more than the budget
    assert refused > 0


def test_open_handles_are_capped_per_session(login):
    from transfer.sftp import MAX_HANDLES
    opened = []
    with pytest.raises(SftpStatus):
        for _ in range(MAX_HANDLES + 1):
            opened.append(login._request(CMD_OPENDIR, "/"))
    assert len(opened) == MAX_HANDLES


def test_random_offset_writes_and_appends_are_unsupported(login, services, account):
    handle = login.open("/x.bin", "wb")
    login._request(CMD_WRITE, handle.handle, int64(0), b"a" * 100)
    with pytest.raises(SftpStatus) as refused:
        login._request(CMD_WRITE, handle.handle, int64(10), b"b" * 10)
    assert refused.value.code == SFTP_OP_UNSUPPORTED
    with pytest.raises(SftpStatus):
        close_checked(login, handle)
    with pytest.raises(NotFound):
        admin_workspace(services, account).stat("/x.bin")
    with pytest.raises(SftpStatus) as refused:
        login.open("/x.bin", "ab")
    assert refused.value.code == SFTP_OP_UNSUPPORTED
    assert any(e.detail == "write" for e in events(services, account.id, action="denied"))


def test_directory_operations(login, services, account):
    login.mkdir("/d")
    login.mkdir("/d/e")
    with login.open("/d/e/f.txt", "wb") as handle:
        handle.write(b"f")
    assert sorted(login.listdir("/d")) == ["e"]
    assert login.stat("/d/e").st_mode & 0o040000 and login.stat("/d/e/f.txt").st_size == 1
    assert login.normalize("d/./e/../e") == "/d/e"
    with pytest.raises(SftpStatus):
        login.rename("/d/e/f.txt", "/d/e")  # SFTP v3 rename never replaces
    login.rename("/d/e/f.txt", "/d/g.txt")
    with login.open("/d/h.txt", "wb") as handle:
        handle.write(b"h")
    login.posix_rename("/d/h.txt", "/d/g.txt")
    assert login.open("/d/g.txt").read() == b"h"
    with pytest.raises(SftpStatus):
        login.rmdir("/d")  # not empty
    with pytest.raises(SftpStatus):
        login.remove("/d/e")  # a folder
    login.rmdir("/d/e")
    login.remove("/d/g.txt")
    login.rmdir("/d")
    assert "d" not in login.listdir("/")
    actions = [e.action for e in events(services, account.id) if e.action in ("mkdir", "rename", "delete")]
    assert actions == ["mkdir", "mkdir", "rename", "rename", "delete", "delete", "delete"]


def test_setstat_keeps_times_and_ignores_modes(login, services, account):
    with login.open("/t.txt", "wb") as handle:
        handle.write(b"t")
    login.utime("/t.txt", (1_600_000_000, 1_600_000_000))
    login.chmod("/t.txt", 0o600)
    assert login.stat("/t.txt").st_mtime == 1_600_000_000
    assert admin_workspace(services, account).stat("/t.txt").mtime == datetime.fromtimestamp(1_600_000_000, timezone.utc)
    with pytest.raises(SftpStatus) as refused:
        login.truncate("/t.txt", 0)
    assert refused.value.code == SFTP_OP_UNSUPPORTED


def test_symlinks_are_refused_cleanly(login):
    for call in (lambda: login.symlink("/a", "/b"), lambda: login.readlink("/a")):
        with pytest.raises(SftpStatus) as refused:
            call()
        assert refused.value.code == SFTP_OP_UNSUPPORTED


# -- real clients ----------------------------------------------------------------------------------

def test_openssh_password_directory_operations_and_reget(sftp_server, account, client_home, tmp_path):
    local, back = tmp_path / "a.txt", tmp_path / "back.txt"
    data = os.urandom(300_000)
    local.write_bytes(data)
    back.write_bytes(data[:100_000])  # a download interrupted earlier, resumed with reget
    result = sftp_batch(sftp_server, account.admin_username, [
        "mkdir /docs", "cd /docs", f"put {local} a.txt", "rename a.txt b.txt", "ls -1 /docs",
        f"reget b.txt {back}", "mkdir sub", "rmdir sub", "rm b.txt", "ls -1 /docs", "cd /", "rmdir docs",
    ], client_home, tmp_path, password=account.password)
    assert result.returncode == 0, result.stderr
    assert back.read_bytes() == data
    listing = result.stdout.splitlines()
    assert "/docs/b.txt" in listing and "/docs/a.txt" not in listing


def test_openssh_key_login_with_a_key_added_like_users_add_key(sftp_server, services, account, client_home, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   env=client_home, timeout=30)
    with services.db.session() as session:
        auth.add_ssh_key(session, services.keyring, user_row(session, services, account.admin_username),
                         (tmp_path / "id_ed25519.pub").read_text())
    local = tmp_path / "k.txt"
    local.write_bytes(b"by key")
    result = sftp_batch(sftp_server, account.admin_username, [f"put {local} /k.txt", "ls -1 /"],
                        client_home, tmp_path, key=key)
    assert result.returncode == 0, result.stderr
    assert admin_workspace(services, account).stat("/k.txt").size == 6
    logins = events(services, account.id, action="login")
    assert [(e.status, e.detail) for e in logins] == [("ok", "publickey")]


def test_rclone_round_trip_sets_the_modification_time(sftp_server, services, account, client_home, tmp_path):
    config = tmp_path / "rclone.conf"
    config.write_text("")
    obscured = run([tool("rclone"), "--config", str(config), "obscure", account.password], client_home).stdout.strip()
    remote = f":sftp,host=127.0.0.1,port={sftp_server.port},user={account.admin_username},pass={obscured}:"
    common = ["--config", str(config), "--retries", "1", "--low-level-retries", "2", "--contimeout", "20s",
              "--timeout", "60s"]
    data = os.urandom(2 * 1024 * 1024 + 17)
    local, back = tmp_path / "r.bin", tmp_path / "r-back.bin"
    local.write_bytes(data)
    os.utime(local, (1_500_000_000, 1_500_000_000))
    up = run([tool("rclone"), *common, "copyto", str(local), remote + "/rc/r.bin"], client_home)
    assert up.returncode == 0, up.stderr
    down = run([tool("rclone"), *common, "copyto", remote + "/rc/r.bin", str(back)], client_home)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    entry = admin_workspace(services, account).stat("/rc/r.bin")
    assert entry.mtime == datetime.fromtimestamp(1_500_000_000, timezone.utc)


def test_ssh_exec_and_port_forwarding_are_refused_and_audited(sftp_server, services, account, client_home):
    base = [tool("ssh"), *SSH_OPTIONS, *PASSWORD_AUTH, "-p", str(sftp_server.port)]
    target = f"{account.admin_username}@127.0.0.1"
    ls = run([*base, target, "ls"], client_home, password=account.password, timeout=60)
    assert ls.returncode != 0
    remote = run([*base, "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:0:127.0.0.1:{sftp_server.port}",
                  target], client_home, password=account.password, timeout=60)
    assert remote.returncode != 0
    local_port = free_port()
    forward = subprocess.Popen(
        [tool("sshpass"), "-e", *base, "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:{sftp_server.port}", target],
        env={**client_home, "SSHPASS": account.password}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sock = wait_for(lambda: _try_connect(local_port), timeout=20)
        assert sock, "ssh -L never listened"
        with sock:
            sock.settimeout(20)
            assert sock.recv(100) == b""  # had it been forwarded, our own SSH banner would arrive
    finally:
        os.killpg(forward.pid, signal.SIGKILL)
        forward.wait(20)
    details = {e.detail for e in events(services, account.id, action="denied")}
    assert {"exec", "port forwarding (remote)", "port forwarding (local)"} <= details


def _try_connect(port: int):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None


def test_weak_algorithms_are_never_negotiated(sftp_server, client_home, tmp_path, account):
    every = paramiko.Transport
    weak_ciphers = {"ciphers": [c for c in every._preferred_ciphers if c not in ("3des-cbc", "aes128-cbc", "aes256-cbc")]}
    weak_macs = {"ciphers": [c for c in every._preferred_ciphers if c != "aes256-ctr"],
                 "macs": [m for m in every._preferred_macs if m not in ("hmac-sha1", "hmac-md5", "hmac-sha1-96")]}
    for offer in (weak_ciphers, weak_macs):
        with pytest.raises(paramiko.SSHException):
            open_transport(sftp_server.port, disabled_algorithms=offer).close()
    cbc = sftp_batch(sftp_server, account.admin_username, ["ls"], client_home, tmp_path,
                     password=account.password, extra=("-c", "aes256-cbc"))
    assert cbc.returncode != 0
    # What a modern client gets: strict kex, the hybrid post-quantum kex, AES-256 and SHA-2.
    only_pq = {"kex": [k for k in every._preferred_kex if k != "mlkem768x25519-sha256"]}
    transport = open_transport(sftp_server.port, disabled_algorithms=only_pq)
    try:
        assert transport.agreed_on_strict_kex
        assert transport.local_cipher in CIPHERS and transport.local_mac in MACS
    finally:
        transport.close()


def test_a_client_killed_mid_upload_leaves_no_file_and_no_object(sftp_server, services, account, client_home, tmp_path):
    local = tmp_path / "slow.bin"
    local.write_bytes(os.urandom(8 * 1024 * 1024))
    batch = tmp_path / "kill-batch"
    batch.write_text(f"put {local} /slow.bin\n")
    spool = services.spool
    ready_before, temps_before = set(spool.ready_keys()), set(spool.tmp.iterdir()) if spool.tmp.exists() else set()
    sftp = subprocess.Popen(
        [tool("sshpass"), "-e", tool("sftp"), *SSH_OPTIONS, *PASSWORD_AUTH, "-l", "2000", "-P", str(sftp_server.port),
         "-b", str(batch), f"{account.admin_username}@127.0.0.1"],
        env={**client_home, "SSHPASS": account.password}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: set(spool.tmp.iterdir()) - temps_before if spool.tmp.exists() else None, 20)
        time.sleep(0.5)
    finally:
        os.killpg(sftp.pid, signal.SIGKILL)
        sftp.wait(20)
    aborted = wait_for(lambda: [e for e in events(services, account.id, action="upload") if e.status == "failed"])
    assert aborted and aborted[0].detail == "session ended" and aborted[0].nbytes > 0
    with pytest.raises(NotFound):
        admin_workspace(services, account).stat("/slow.bin")
    assert not set(spool.tmp.iterdir()) - temps_before
    assert set(spool.ready_keys()) - ready_before == set()


# -- logging in ------------------------------------------------------------------------------------

def _wrong_password(port: int, username: str, source: str) -> None:
    transport = open_transport(port, source=source)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password(username, "not-the-password-1")
    finally:
        transport.close()


def test_an_unproven_key_offer_counts_nothing_and_clears_nothing(sftp_server, services, account, make_user,
                                                                client_home, tmp_path):
    user_id, username = make_user(account)
    key = tmp_path / "id_ed25519"
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   env=client_home, timeout=30)
    with services.db.session() as session:
        auth.add_ssh_key(session, services.keyring, user_row(session, services, username),
                         (tmp_path / "id_ed25519.pub").read_text())
    key.unlink()  # the client keeps only the public half: it can offer the key, never sign
    source = fresh_source()
    for _ in range(2):
        _wrong_password(sftp_server.port, username, source)
    since = datetime.now(timezone.utc)
    probe = sftp_batch(sftp_server, username, ["ls"], client_home, tmp_path, key=tmp_path / "id_ed25519.pub",
                       extra=("-o", f"BindAddress={source}"))
    assert probe.returncode != 0
    ended = wait_for(lambda: events(services, account.id, action="login_failed", since=since))
    assert [(e.user_id, e.detail) for e in ended] == [(user_id, "connection ended before authentication")]
    assert not events(services, account.id, action="login", since=since)
    assert not auth.is_locked_out(services, username)
    _wrong_password(sftp_server.port, username, source)  # the third counted failure: the probe cleared nothing
    assert auth.is_locked_out(services, username)


def test_lockout_is_shared_with_every_door(sftp_server, services, account, make_user):
    _, username = make_user(account)
    source = fresh_source()
    for _ in range(3):
        _wrong_password(sftp_server.port, username, source)
    with pytest.raises(paramiko.AuthenticationException):
        connect(sftp_server.port, username, password=STRONG_PASSWORD, source=source)
    for door in ("web", "ftps"):  # the other doors log in through this same call
        with pytest.raises(AuthFailed):
            auth.authenticate(services, username, STRONG_PASSWORD, method="password", protocol=door, ip=source)
    _, other = make_user(account)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            auth.authenticate(services, other, "wrong-wrong-wrong", method="password", protocol="web", ip=source)
    with pytest.raises(paramiko.AuthenticationException):
        connect(sftp_server.port, other, password=STRONG_PASSWORD, source=source)


def test_allow_list_is_shared_with_every_door(sftp_server, services, account):
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        auth.add_ip_rule(session, services.keyring, acct, "10.0.0.0/8")
    with pytest.raises(paramiko.AuthenticationException):
        connect(sftp_server.port, account.admin_username, password=account.password)
    for door in ("web", "ftps"):
        with pytest.raises(AuthFailed):
            auth.authenticate(services, account.admin_username, account.password, method="password",
                              protocol=door, ip="127.0.0.1")
    refused = events(services, account.id, action="login_failed")
    assert refused[-1].detail == "address not in allow-list"
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        auth.add_ip_rule(session, services.keyring, acct, "127.0.0.0/8")
    transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
    transport.close()


def _require_mfa(services, account, username) -> pyotp.TOTP:
    with services.db.session() as session:
        acct = session.get(accounts.Account, account.id)
        auth.set_policy(session, services.keyring, acct, require_mfa=True)
        uri = totp.enrol_totp(session, services.keyring, user_row(session, services, username))
    return pyotp.parse_uri(uri)


def test_mfa_asks_for_the_code_by_keyboard_interactive(sftp_server, services, account, make_user, tmp_path):
    _, username = make_user(account)
    code = _require_mfa(services, account, username)
    transport = open_transport(sftp_server.port)
    try:
        assert transport.auth_password(username, STRONG_PASSWORD) == ["keyboard-interactive"]
        assert not transport.is_authenticated()
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_interactive(username, lambda title, instructions, prompts: ["000000"])
        transport.auth_interactive(username, lambda title, instructions, prompts: [code.now()])
        assert transport.is_authenticated()
    finally:
        transport.close()
    details = [(e.action, e.detail) for e in events(services, account.id) if e.action.startswith("login")]
    assert details == [("login_failed", "wrong code"), ("login", "password + totp")]


def test_mfa_after_a_key_and_keyboard_interactive_only_clients(sftp_server, services, account, make_user, tmp_path):
    _, username = make_user(account)
    code = _require_mfa(services, account, username)
    key = paramiko.Ed25519Key.from_private_key_file(str(write_host_key(tmp_path / "user_key")))
    with services.db.session() as session:
        auth.add_ssh_key(session, services.keyring, user_row(session, services, username),
                         f"{key.get_name()} {key.get_base64()}")
    transport = open_transport(sftp_server.port)
    try:
        assert transport.auth_publickey(username, key) == ["keyboard-interactive"]
        transport.auth_interactive(username, lambda title, instructions, prompts: [code.now()])
        assert transport.is_authenticated()
    finally:
        transport.close()
    # A client speaking keyboard-interactive only: the password, then the code, in one exchange.
    _, second = make_user(account)
    code = _require_mfa(services, account, second)
    answers = iter([[STRONG_PASSWORD], [code.now()]])
    transport = open_transport(sftp_server.port)
    try:
        transport.auth_interactive(second, lambda title, instructions, prompts: next(answers))
        assert transport.is_authenticated()
    finally:
        transport.close()


# -- refusals and malformed input --------------------------------------------------------------------

def test_every_channel_request_but_sftp_is_refused_and_audited(sftp_server, services, account):
    transport, _ = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        attempts = {
            "exec": lambda ch: ch.exec_command("id"),
            "shell": lambda ch: ch.invoke_shell(),
            "pty": lambda ch: ch.get_pty(),
            "subsystem": lambda ch: ch.invoke_subsystem("scp"),
        }
        for name, attempt in attempts.items():
            channel = transport.open_session()
            with pytest.raises(paramiko.SSHException):
                attempt(channel)
            channel.close()
        channel = transport.open_session()
        channel.set_environment_variable("LANG", "C")  # sent without asking for a reply
        with pytest.raises(paramiko.SSHException):
            channel.request_x11(single_connection=True)
        transport.open_session().request_forward_agent(lambda *_: None)  # no reply asked either
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", sftp_server.port), ("127.0.0.1", 1))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
        assert transport.global_request("custom@example.test", wait=True) is None
        assert wait_for(lambda: len(events(services, account.id, action="denied")) >= 10)
    finally:
        transport.close()
    details = {e.detail for e in events(services, account.id, action="denied")}
    assert {"exec", "shell", "pty", "env", "subsystem", "x11", "agent forwarding", "port forwarding (local)",
            "port forwarding (remote)", "global request"} <= details
    assert all(e.status == "refused" and e.protocol == "sftp" for e in events(services, account.id, action="denied"))


class Collect(logging.Handler):
    """Our own handler on the server's loggers, whatever the root logger's setup is."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str, bool]] = []

    def emit(self, record):
        self.records.append((record.name, record.getMessage(), record.exc_info is not None))


@contextlib.contextmanager
def server_logs():
    collect, loggers = Collect(), [logging.getLogger(name) for name in ("transfer", "common")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)  # setLevel, not the attribute: it clears logging's caches
        logger.addHandler(collect)
    try:
        yield collect
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(collect)
            logger.setLevel(level)


class RawSftp:
    """The sftp subsystem spoken by hand, to send what no client library would."""

    def __init__(self, transport: paramiko.Transport):
        self.channel = transport.open_session()
        self.channel.settimeout(20)
        self.channel.invoke_subsystem("sftp")
        self.send(CMD_INIT, struct.pack(">I", 3))
        assert self.receive()[0] == CMD_VERSION

    def send(self, kind: int, body: bytes) -> None:
        self.channel.sendall(struct.pack(">IB", len(body) + 1, kind) + body)

    def request(self, kind: int, request_id: int, body: bytes) -> tuple[int, bytes]:
        self.send(kind, struct.pack(">I", request_id) + body)
        return self.receive()

    def receive(self) -> tuple[int, bytes]:
        header = self._exactly(5)
        size, kind = struct.unpack(">IB", header)
        return kind, self._exactly(size - 1)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.channel.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _status(reply: tuple[int, bytes]) -> int:
    kind, body = reply
    assert kind == CMD_STATUS
    return struct.unpack(">I", body[4:8])[0]


def test_malformed_requests_get_a_status_or_a_clean_disconnect(sftp_server, account):
    transport, _ = connect(sftp_server.port, account.admin_username, password=account.password)
    with server_logs() as logs, contextlib.closing(transport):
        raw = RawSftp(transport)
        no_attrs = struct.pack(">II", 0x1A, 0)
        assert _status(raw.request(CMD_OPEN, 1, _string(b"/a\x00b") + no_attrs)) == SFTP_FAILURE
        assert _status(raw.request(CMD_OPEN, 2, _string(b"/\xff\xfe.txt") + no_attrs)) == SFTP_FAILURE
        assert _status(raw.request(CMD_OPEN, 3, _string(b"/truncated"))) == SFTP_BAD_MESSAGE
        assert _status(raw.request(CMD_READ, 4, _string(b"no-such-handle") + struct.pack(">QI", 0, 10))) == SFTP_BAD_MESSAGE
        assert _status(raw.request(CMD_EXTENDED, 5, b"")) == SFTP_BAD_MESSAGE
        assert _status(raw.request(150, 5, b"")) == SFTP_OP_UNSUPPORTED
        assert _status(raw.request(CMD_EXTENDED, 6, _string(b"copy-data"))) == SFTP_OP_UNSUPPORTED
        kind, body = raw.request(CMD_OPEN, 7, _string(b"/fine.txt") + no_attrs)
        assert kind == CMD_HANDLE  # the session survived all of the above
        raw.channel.sendall(struct.pack(">I", 0x00FFFFFF) + b"\x01")  # a 16 MiB "request"
        with pytest.raises(EOFError):
            raw.receive()
    assert any("sftp channel closed" in message for _, message, _ in logs.records)
    assert not [r for r in logs.records if "Traceback" in r[1] or r[2]]


def test_logs_carry_ids_not_names_or_paths(sftp_server, account):
    with server_logs() as logs:
        transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
        with contextlib.closing(transport):
            client.mkdir("/secret-plans")
            with client.open("/secret-plans/merger.txt", "wb") as handle:
                handle.write(b"x")
            client.listdir("/secret-plans")
        wait_for(lambda: any("ended" in message for _, message, _ in logs.records), timeout=10)
    messages = [message for _, message, _ in logs.records]
    assert any("logged in" in m for m in messages)
    assert any(name.startswith("transfer.sftp.ssh") for name, _, _ in logs.records)  # paramiko's, server side
    for message in messages:
        assert account.admin_username not in message and "secret-plans" not in message and "merger" not in message


# -- limits, timeouts and the process -----------------------------------------------------------------

def test_session_caps_and_timeouts(services, sftp_host_key_file, account):
    server = start_sftp_server(services, sftp_host_key_file,
                               Limits(max_sessions_per_ip=2, auth_timeout=1.0, idle_timeout=1.0))
    try:
        source = fresh_source()
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
                for _ in range(2)]
        assert all(s.recv(4).startswith(b"SSH-") for s in held)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0)) as third:
            assert third.recv(4) == b""  # over the per-address cap: closed before any banner
        for sock in held:  # never authenticated: dropped after the auth timeout
            sock.settimeout(10)
            assert sock.recv(4096) is not None and _drained(sock)
            sock.close()
        transport, client = connect(server.port, account.admin_username, password=account.password)
        assert wait_for(lambda: not transport.is_active(), timeout=10)  # idle for longer than 1 s
    finally:
        server.stop()


def _drained(sock: socket.socket) -> bool:
    while sock.recv(4096):
        pass
    return True


def test_banned_address_is_disconnected_at_once(sftp_server, services):
    source = fresh_source()
    with services.db.session() as session:
        defender.ban(session, source, datetime(2999, 1, 1, tzinfo=timezone.utc))
    with socket.create_connection(("127.0.0.1", sftp_server.port), timeout=10, source_address=(source, 0)) as sock:
        sock.settimeout(10)
        assert sock.recv(100) == b""


def test_python_m_transfer_sftp_serves_and_stops_on_sigterm(test_env, account, tmp_path):
    port = free_port()
    key = write_host_key(tmp_path / "host_key")
    env = {**client_env(test_env), "SFTP_PORT": str(port), "SFTP_HOST_KEY_FILE": str(key)}
    process = subprocess.Popen([sys.executable, "-m", "transfer.sftp"], env=env, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        line = process.stderr.readline()
        assert "sftp listening on 127.0.0.1:%d" % port in line, line
        transport, client = connect(port, account.admin_username, password=account.password)
        assert "Shared" in client.listdir("/")
        transport.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_permission_refusal_is_audited_once(login, services, account):
    with pytest.raises(SftpStatus) as refused:
        login.open("/Audit Logs/x.txt", "wb")
    assert refused.value.errno == 13
    denied = events(services, account.id, action="denied")
    assert [(e.detail, e.status) for e in denied] == [("upload", "refused")]


# -- pre-auth parsing, failed downloads, windows and handles, refusals, logs -------------

def _server_side(server) -> paramiko.Transport:
    """The server transport of the one connection a private server holds."""
    return wait_for(lambda: next(iter(server.transports()), None))


class _ClaimsMany(list):
    """No answers at all, claiming 2^32 - 1 of them: paramiko's client sends the claimed count."""

    def __len__(self):
        return 0xFFFFFFFF


def _unasked_response(client: paramiko.Transport) -> None:
    response = Message()
    response.add_byte(cMSG_USERAUTH_INFO_RESPONSE)
    response.add_int(0xFFFFFFFF)  # paramiko would read that many answers from an empty message
    client._send_message(response)


def _too_many_answers(client: paramiko.Transport) -> None:
    with pytest.raises(paramiko.SSHException):  # AuthenticationException is one
        client.auth_interactive("anyone", lambda title, instructions, prompts: _ClaimsMany())


@pytest.mark.parametrize("send", [_unasked_response, _too_many_answers], ids=["unasked", "too many answers"])
def test_keyboard_interactive_answers_we_did_not_ask_for_end_the_connection(services, sftp_host_key_file, send):
    server = start_sftp_server(services, sftp_host_key_file)
    client = None
    try:
        client = open_transport(server.port, source=fresh_source())
        served = _server_side(server)
        send(client)
        assert wait_for(lambda: not client.is_active(), timeout=10)
        assert wait_for(lambda: not served.is_alive(), timeout=10), "the server is still reading answers"
    finally:
        if client is not None:
            client.close()
        server.stop()


def _stored_file(services, account, path: str, data: bytes) -> FileVersion:
    """A file uploaded and ingested into the object store; its version row."""
    services.store.ensure_bucket()
    ws = admin_workspace(services, account)
    upload = ws.open_write(path)
    upload.write(data)
    upload.commit()
    version_id = ws.stat(path).version
    assert ingest_version(services, version_id) == "stored"
    with services.db.session() as session:
        version = session.get(FileVersion, version_id)
        session.expunge(version)
        return version


def _read_at(client, handle, offset: int, length: int = 32 * 1024) -> str | bytes:
    try:
        _, msg = client._request(CMD_READ, handle.handle, int64(offset), length)
    except EOFError:
        return "eof"
    except SftpStatus:
        return "failed"
    return msg.get_binary()


def _read_until_failure(client, handle, size: int) -> int:
    """Read from the start, 32 KiB at a time; the offset of the first failed read."""
    offset = 0
    while True:
        got = _read_at(client, handle, offset)
        if got == "failed":
            return offset
        assert got != "eof" and offset < size, "the damaged file was read to its end"
        offset += len(got)


def test_a_download_failing_a_chunk_tag_fails_every_later_read(sftp_server, services, account):
    data = os.urandom(4 * CHUNK_SIZE)
    version = _stored_file(services, account, "/damaged.bin", data)
    stored = bytearray(b"".join(services.store.read(version.storage_key)))
    stored[chunk_offset(2) + 100] ^= 1  # one flipped bit in the third chunk of the stored object
    services.store.put(version.storage_key, io.BytesIO(bytes(stored)), len(stored))
    transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        handle = client.open("/damaged.bin", "rb")
        failed_at = _read_until_failure(client, handle, len(data))
        assert failed_at == 2 * CHUNK_SIZE
        # A client retrying (or with reads pipelined past the failure) never gets an EOF.
        assert [_read_at(client, handle, failed_at) for _ in range(2)] == ["failed", "failed"]
        assert _read_at(client, handle, len(data)) == "failed"
        assert _read_at(client, handle, 0) == "failed"
    finally:
        transport.close()
    assert any(e.status == "failed" and e.detail == "integrity failure"
               for e in events(services, account.id, action="download"))


def test_a_download_failing_its_fingerprint_fails_every_later_read(sftp_server, services, account):
    data = os.urandom(100_000)
    version = _stored_file(services, account, "/mismatch.bin", data)
    with services.db.session() as session:
        # The recorded fingerprint disagrees with the content: no real way to make the chunk
        # tags pass over other content, so the row is changed instead.
        session.get(FileVersion, version.id).sha256 = hashlib.sha256(b"other content").digest()
    transport, client = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        handle = client.open("/mismatch.bin", "rb")
        failed_at = _read_until_failure(client, handle, len(data))
        assert [_read_at(client, handle, failed_at) for _ in range(2)] == ["failed", "failed"]
        assert _read_at(client, handle, len(data)) == "failed"
    finally:
        transport.close()


class CuttingRelay:
    """A TCP relay to the object store whose responses stop after a byte budget: a real outage
    in the middle of a download (the store itself is shared, so it is not stopped)."""

    def __init__(self, upstream: str, budget: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream, self.budget = (host, int(port)), budget
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            store = socket.create_connection(self.upstream, timeout=20)
            threading.Thread(target=self._pump, args=(client, store, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(store, client, self.budget), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        try:
            while budget is None or budget > 0:
                data = source.recv(64 * 1024)
                if not data:
                    break
                data = data if budget is None else data[:budget]
                budget = None if budget is None else budget - len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_a_download_cut_by_a_store_outage_fails_every_later_read(services, sftp_host_key_file, account):
    data = os.urandom(16 * CHUNK_SIZE)
    _stored_file(services, account, "/cut.bin", data)
    relay = CuttingRelay(services.settings.s3_endpoint, budget=len(data) // 2)
    cut = Services(dataclasses.replace(services.settings, s3_endpoint=relay.endpoint))
    server = start_sftp_server(cut, sftp_host_key_file)
    transport = None
    try:
        transport, client = connect(server.port, account.admin_username, password=account.password)
        handle = client.open("/cut.bin", "rb")
        failed_at = _read_until_failure(client, handle, len(data))
        assert 0 < failed_at < len(data)  # some blocks arrived before the outage
        assert [_read_at(client, handle, failed_at) for _ in range(2)] == ["failed", "failed"]
        assert _read_at(client, handle, len(data)) == "failed"
    finally:
        if transport is not None:
            transport.close()
        server.stop()
        cut.close()
        relay.close()
    assert any(e.status == "failed" and e.detail == "store unavailable"
               for e in events(services, account.id, action="download"))


def test_a_channel_fed_past_its_window_ends_the_connection(sftp_server, account):
    transport, _ = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        channel = transport.open_session()  # no subsystem: nothing on the server ever reads it
        window, piece = channel.out_window_size, b"x" * (channel.out_max_packet_size // 2)
        sent = 0
        while sent <= window + 1024 * 1024 and transport.is_active():
            data = Message()  # paramiko's client would wait for the window: send it by hand
            data.add_byte(cMSG_CHANNEL_DATA)
            data.add_int(channel.remote_chanid)
            data.add_string(piece)
            try:
                transport._send_user_message(data)
            except (EOFError, OSError):
                break  # the server has closed the connection already
            sent += len(piece)
        assert wait_for(lambda: not transport.is_active(), timeout=10), "the server buffered past its window"
    finally:
        transport.close()


def test_open_handles_are_capped_per_connection_over_all_channels(sftp_server, account):
    from transfer.sftp import MAX_HANDLES
    transport, first = connect(sftp_server.port, account.admin_username, password=account.password)
    try:
        clients = [first] + [StatusSFTPClient.from_transport(transport) for _ in range(3)]
        held = [(client, client._request(CMD_OPENDIR, "/")[1].get_binary())
                for client in clients for _ in range(MAX_HANDLES // len(clients))]
        assert len(held) == MAX_HANDLES
        for client in clients:
            with pytest.raises(SftpStatus):
                client._request(CMD_OPENDIR, "/")
        owner, handle = held[0]
        owner._request(CMD_CLOSE, handle)
        clients[-1]._request(CMD_OPENDIR, "/")  # a slot freed on one channel serves another
    finally:
        transport.close()


# Refusals: every kind leaves the connection in the same state after the same number of tries.

def _connection_states(port: int, username: str, password: str, source: str,
                       tries: int = 5, connections: int = 2) -> list[list[str]]:
    """After each refused password, whether the connection is still open; per connection."""
    states = []
    for _ in range(connections):
        transport, seen = open_transport(port, source=source), []
        try:
            for _ in range(tries):
                with pytest.raises(paramiko.SSHException):  # refused, or refused and closed
                    transport.auth_password(username, password)
                seen.append("open" if _still_open(transport) else "closed")
                if seen[-1] == "closed":
                    break
        finally:
            transport.close()
        states.append(seen)
    return states


def _still_open(transport: paramiko.Transport) -> bool:
    # A pre-auth global request is answered (refused) on an open connection only; the server
    # handles it after the login attempt before it, so the state seen here is settled.
    try:
        transport.global_request("probe@example.test", wait=True)
    except (EOFError, OSError):
        return False  # the server had closed it before the request went out
    return transport.is_active()


def test_every_refusal_leaves_the_same_connection_state(sftp_server, services, make_account, make_user):
    threshold = services.settings.lockout_threshold
    expected = [["open"] * (threshold - 1) + ["closed"]] * 2
    plain, restricted, mfa = make_account(), make_account(), make_account()
    with services.db.session() as session:
        auth.add_ip_rule(session, services.keyring, session.get(accounts.Account, restricted.id), "10.0.0.0/8")
        auth.set_policy(session, services.keyring, session.get(accounts.Account, mfa.id), require_mfa=True)
    _, locked_real = make_user(plain)
    locked_unknown = "nobody" + os.urandom(5).hex()
    for name in (locked_real, locked_unknown):
        for _ in range(threshold):
            with pytest.raises(AuthFailed):
                auth.authenticate(services, name, "wrong-wrong-wrong", method="password", protocol="web",
                                  ip=fresh_source())
        assert auth.is_locked_out(services, name)
    cases = {
        "wrong password": (make_user(plain)[1], "not-the-password-1"),
        "unknown name": ("nobody" + os.urandom(5).hex(), STRONG_PASSWORD),
        "locked real user": (locked_real, STRONG_PASSWORD),
        "locked unknown name": (locked_unknown, STRONG_PASSWORD),
        "allow-list": (make_user(restricted)[1], STRONG_PASSWORD),
        "mfa not enrolled": (make_user(mfa)[1], STRONG_PASSWORD),
    }
    states = {case: _connection_states(sftp_server.port, name, password, fresh_source())
              for case, (name, password) in cases.items()}
    assert states == {case: expected for case in cases}


# Connections that end unauthenticated: counted for the defender, their events rate-limited.

def test_unauthenticated_ends_are_counted_and_their_events_rate_limited(sftp_server, services, account):
    source, ends = fresh_source(), 8
    for _ in range(ends):
        transport = open_transport(sftp_server.port, source=source)
        try:
            with pytest.raises(paramiko.BadAuthenticationType):
                transport.auth_none(account.admin_username)
        finally:
            transport.close()
    with services.db.session() as session:
        counted = lambda: session.scalar(select(func.count()).where(DefenderFailure.ip == source))  # noqa: E731
        assert wait_for(lambda: counted() >= ends) and counted() == ends
    assert wait_for(lambda: len(events(services, account.id, action="login_failed")) >= 4)
    recorded = [e.detail for e in events(services, account.id, action="login_failed")]
    summary = auth.UNAUTHENTICATED_ENDS_AUDITED_PER_MINUTE
    assert recorded[:summary] == ["connection ended before authentication"] * summary
    assert recorded[summary:] == ["connection ended before authentication; more from this address for "
                                  "this name within 60 s are counted, not recorded"]


# Client text in paramiko's log lines.

def test_client_banner_and_disconnect_text_never_reach_the_logs_raw(sftp_server, account):
    forged = f"\r\n\x1b[2K{account.admin_username} logged in\x1b[0m"
    with server_logs() as logs:
        sock = socket.create_connection(("127.0.0.1", sftp_server.port), timeout=20)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        transport.local_version = "SSH-2.0-Evil\x1b[31m\r" + account.admin_username
        try:
            transport.start_client(timeout=20)
            bye = Message()
            bye.add_byte(cMSG_DISCONNECT)
            bye.add_int(11)
            bye.add_string("bye" + forged)
            bye.add_string("en")
            transport._send_message(bye)
            assert wait_for(lambda: any("Disconnect" in m for _, m, _ in logs.records), timeout=10)
        finally:
            transport.close()
        transport, _ = connect(sftp_server.port, account.admin_username, password=account.password)
        try:
            channel = transport.open_session()
            request = Message()  # a request type paramiko logs (at DEBUG) as it came
            request.add_byte(cMSG_CHANNEL_REQUEST)
            request.add_int(channel.remote_chanid)
            request.add_string("x-" + forged)
            request.add_boolean(False)
            transport._send_user_message(request)
            with pytest.raises(paramiko.SSHException):
                channel.exec_command("id")  # answered after the request above was handled
        finally:
            transport.close()
    messages = [message for _, message, _ in logs.records]
    assert any(m.startswith("Connected") for m in messages)  # paramiko's line is there, cut short
    for message in messages:
        assert account.admin_username not in message
        assert not {"\r", "\n", "\x1b"} & set(message), repr(message)
