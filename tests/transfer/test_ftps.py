"""The FTPS door over real FTPS: ftplib, curl and lftp against the in-process server.

Each known data-channel attack on FTP is played against the server and must fail;
logins go through common.auth, so the lockout and allow-lists are the other doors' too.
"""
from __future__ import annotations

import contextlib
import ftplib
import hashlib
import inspect
import io
import logging
import os
import random
import select as select_module  # `select` is SQLAlchemy's here
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from OpenSSL import SSL
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers.ftp.data import DTPHandler
from pyftpdlib.handlers.ftps.control import TLS_FTPHandler
from pyftpdlib.handlers.ftps.ssl import SSLConnectionMixin
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer
from sqlalchemy import delete, select

from common import auth
from common.auth import totp
from common.errors import AuthFailed
from common.models import Account, AuditEvent, IpBan, User
from tests.factories import admin_workspace
from tests.fixtures import REPO_ROOT, STRONG_PASSWORD, client_env, tool
from tests.transfer.ftps_door import (
    HOST, SessionReusingFTP_TLS, client_context, connect, quit_quietly, running_ftps,
)
from transfer import ftps
from transfer.ftps.data import WorkspacePassiveDTP

MIB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------------

def exists(services, account, path) -> bool:
    return any(e.path == path for e in admin_workspace(services, account).list_dir(path.rsplit("/", 1)[0] or "/"))


def reply_code(call) -> str:
    try:
        return call()[:3]
    except ftplib.Error as exc:
        return str(exc)[:3]


def audit_rows(services, account_id, action=None) -> list[AuditEvent]:
    with services.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.account_id == account_id).order_by(AuditEvent.seq)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


def run_client(args, test_env, tmp_path, timeout=120) -> subprocess.CompletedProcess:
    env = {**client_env(test_env), "HOME": str(tmp_path)}
    return subprocess.run(args, env=env, capture_output=True, timeout=timeout, cwd=tmp_path)


def curl(server, account, *args, implicit=False, test_env, tmp_path):
    scheme, port = ("ftps", server.implicit_port) if implicit else ("ftp", server.port)
    base = f"{scheme}://{HOST}:{port}"
    argv = [tool("curl"), "--silent", "--show-error", "--ssl-reqd", "--cacert", str(server.cert),
            "--connect-timeout", "20", "--max-time", "120",
            "-u", f"{account.admin_username}:{account.password}"]
    return run_client(argv + [a.replace("URL", base) for a in args], test_env, tmp_path)


def lftp(server, account, script, test_env, tmp_path):
    settings = ("set cmd:fail-exit yes; set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                "set ftp:ssl-protect-list true; set ssl:verify-certificate no; set ssl:check-hostname no; "
                "set net:max-retries 1; set net:timeout 20; set ftp:use-feat yes;")
    login = f"open -u '{account.admin_username},{account.password}' -p {server.port} ftp://{HOST};"
    return run_client([tool("lftp"), "-c", f"{settings} {login} {script}"], test_env, tmp_path)


def raw_data_connection(ftp: ftplib.FTP) -> socket.socket:
    """Open the passive data connection ourselves (plain TCP), as an attacker would."""
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    return socket.create_connection((HOST, port), timeout=10)


# -- the filesystem and the configuration ---------------------------------------------------------

def test_every_public_abstractedfs_method_is_overridden():
    public = [name for name, _ in inspect.getmembers(AbstractedFS) if not name.startswith("_")]
    assert public, "pyftpdlib's AbstractedFS lost its methods?"
    missing = [name for name in public if name not in vars(ftps.WorkspaceFS)]
    assert missing == [], f"WorkspaceFS must override {missing}: nothing may fall through to the disk"


def test_options_live_on_our_subclasses_not_the_library(ftps_server):
    handler = ftps.handler_class(ftps_server.services)
    assert handler.permit_foreign_addresses is False and handler.permit_privileged_ports is False
    assert handler.unicode_errors == "strict" and handler.tls_control_required and handler.tls_data_required
    assert "SITE CHMOD" not in handler.proto_cmds and "REIN" not in handler.proto_cmds
    assert all(handler.proto_cmds[c]["auth"] for c in ("STAT", "SITE", "SITE HELP", "LIST"))
    assert handler.max_login_attempts == ftps_server.services.settings.lockout_threshold
    # The library's own classes are untouched.
    assert "SITE CHMOD" in TLS_FTPHandler.proto_cmds and TLS_FTPHandler.proto_cmds["STAT"]["auth"] is False
    assert TLS_FTPHandler.ssl_context is None and TLS_FTPHandler.unicode_errors == "replace"
    # Transfers end in _TransferEnd, below the TLS mixin: its shutdown paths must land there too.
    mro = ftps.WorkspaceDTPHandler.__mro__
    assert mro.index(SSLConnectionMixin) < mro.index(ftps._TransferEnd) < mro.index(DTPHandler)
    server = ftps.FTPSServer((HOST, 0), handler, ioloop=IOLoop())
    try:
        assert server._exit is not ThreadedFTPServer._exit and server._lock is not ThreadedFTPServer._lock
        assert server.max_cons_per_ip == ftps_server.services.settings.max_sessions_per_ip
    finally:
        server.close_all()


def test_one_tls_context_per_server(ftps_server):
    handler = ftps.handler_class(ftps_server.services)
    assert handler.get_ssl_context() is handler.get_ssl_context() is handler.tls_sessions.context
    assert ftps.handler_class(ftps_server.services).tls_sessions is not handler.tls_sessions


# -- TLS ----------------------------------------------------------------------------------------------

def _handshake(server_context, client_context_, session=None, prepare=None):
    """One TLS connection over a socket pair; returns (reused on the server, client session).

    `prepare(conn)` runs on the server's connection before its handshake; it may return a
    function of the connection, whose result after the handshake is returned third."""
    ours, theirs = socket.socketpair()
    outcome = {}

    def serve():
        conn = SSL.Connection(server_context, ours)
        after = prepare(conn) if prepare else None
        conn.set_accept_state()
        conn.do_handshake()
        outcome["reused"] = ftps.session_reused(conn)
        outcome["after"] = after(conn) if after else None
        conn.sendall(b"x")  # lets a TLS 1.3 client read its session ticket
        conn.shutdown()

    thread = threading.Thread(target=serve)
    thread.start()
    client = client_context_.wrap_socket(theirs, server_hostname=HOST, session=session)
    client.recv(1)
    session = client.session
    thread.join(10)
    client.close()
    ours.close()
    return (outcome["reused"], session, outcome["after"]) if prepare else (outcome["reused"], session)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_reused_tells_resumption_from_a_fresh_or_foreign_session(tls_files, version):
    client = client_context(tls_files.cert)
    client.maximum_version = version
    control = ftps.tls_context(str(tls_files.cert), str(tls_files.key))
    other = ftps.tls_context(str(tls_files.cert), str(tls_files.key))
    reused, session = _handshake(control, client)
    assert reused is False
    assert _handshake(control, client, session)[0] is True
    # Another control connection's context cannot resume it: that is what binds the data channel.
    assert _handshake(other, client, session)[0] is False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_each_issued_session_is_booked_to_its_connections_login(tls_files, version):
    client = client_context(tls_files.cert)
    client.maximum_version = version
    sessions = ftps.TLSSessions(str(tls_files.cert), str(tls_files.key))
    control = ftps.SessionOwner()

    def as_control(conn):
        sessions.attach(conn, control)

    def as_data(conn):
        sessions.attach(conn, None)
        return sessions.owner_of_resumed

    issued = _handshake(sessions.context, client, prepare=as_control)[1]
    # Resumed while its control connection has not logged in: booked, but to nobody yet.
    reused, _, owner = _handshake(sessions.context, client, issued, prepare=as_data)
    assert reused is True and owner is control and owner.user_id is None
    control.user_id = 7
    assert _handshake(sessions.context, client, issued, prepare=as_data)[2].user_id == 7
    # A fresh session belongs to no one.
    assert _handshake(sessions.context, client, prepare=as_data)[2] is None
    # Another server's book knows nothing of these sessions.
    other = ftps.TLSSessions(str(tls_files.cert), str(tls_files.key))
    assert _handshake(other.context, client, issued, prepare=lambda c: other.attach(c, None))[0] is False


def _unread_after_handshake(sessions, client_context_, session, owner):
    """One handshake as a connection of `owner` (None: a data connection); returns whether it
    resumed, and whether the server sent anything the client has not read once both ended."""
    ours, theirs = socket.socketpair()
    outcome = {}

    def serve():
        conn = SSL.Connection(sessions.context, ours)
        sessions.attach(conn, owner)
        conn.set_accept_state()
        conn.do_handshake()
        outcome["reused"] = ftps.session_reused(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    client = client_context_.wrap_socket(theirs, server_hostname=HOST, session=session)
    thread.join(10)
    unread = bool(select_module.select([client], [], [], 0)[0])
    client.close()
    ours.close()
    return outcome["reused"], unread


def test_a_data_connection_resumes_but_is_sent_no_ticket_to_leave_unread(tls_files):
    """rclone never reads on an upload's data connection: a TLS 1.3 ticket left unread there makes
    its kernel reset the connection at close, which cuts the upload (see the rclone tests)."""
    client = client_context(tls_files.cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_3
    sessions = ftps.TLSSessions(str(tls_files.cert), str(tls_files.key))
    control = ftps.SessionOwner(7)
    issued = _handshake(sessions.context, client, prepare=lambda conn: sessions.attach(conn, control))[1]
    assert _unread_after_handshake(sessions, client, None, control) == (False, True)  # its tickets
    assert _unread_after_handshake(sessions, client, issued, None) == (True, False)


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_or_13_with_aes_256_gcm_only(ftps_server, maximum):
    context = client_context(ftps_server.cert)
    context.maximum_version = maximum
    ftp = ftplib.FTP_TLS(context=context, timeout=20)
    ftp.connect(HOST, ftps_server.port)
    ftp.auth()
    cipher, version, bits = ftp.sock.cipher()
    assert "AES256-GCM" in cipher or "AES_256_GCM" in cipher
    assert bits == 256 and version in ("TLSv1.2", "TLSv1.3")
    quit_quietly(ftp)


def test_weak_tls_is_refused(ftps_server):
    context = client_context(ftps_server.cert)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    ftp = ftplib.FTP_TLS(context=context, timeout=20)
    ftp.connect(HOST, ftps_server.port)
    with pytest.raises(ssl.SSLError):
        ftp.auth()
    ftp.close()


def test_plain_ftp_login_is_refused(ftps_server, account):
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, ftps_server.port)
    with pytest.raises(ftplib.error_perm):
        ftp.login(account.admin_username, account.password)
    assert reply_code(lambda: ftp.sendcmd("PASV")) == "530"
    quit_quietly(ftp)
    assert audit_rows(ftps_server.services, account.id, "login") == []


# -- transfers with ftplib ----------------------------------------------------------------------------

def test_ftplib_round_trip_listing_and_changes(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    data = os.urandom(3 * MIB + 17)
    ftp.mkd("/docs")
    assert ftp.storbinary("STOR /docs/a.bin", io.BytesIO(data)).startswith("226")
    assert ftp.fetch("RETR /docs/a.bin") == data
    ftp.voidcmd("TYPE I")
    assert ftp.size("/docs/a.bin") == len(data)
    assert [n for n, _ in ftp.mlsd("/")] == ["Audit Logs", "Shared", "docs"]
    ftp.cwd("/docs")
    assert ftp.pwd() == "/docs"
    assert ftp.nlst() == ["a.bin"]
    assert "a.bin" in ftp.fetch("LIST").decode()
    ftp.rename("a.bin", "b.bin")
    assert ftp.sendcmd("MLST b.bin").splitlines()[1].strip().startswith("modify=")
    assert ftp.sendcmd("MFMT 20200102030405 b.bin").startswith("213")
    assert ftp.sendcmd("MDTM b.bin") == "213 20200102030405"
    ftp.cwd("..")
    ftp.delete("/docs/b.bin")
    ftp.rmd("/docs")
    assert [n for n, _ in ftp.mlsd("/")] == ["Audit Logs", "Shared"]
    quit_quietly(ftp)


def test_rest_resumes_a_download(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    data = os.urandom(2 * MIB + 5)
    ftp.storbinary("STOR /r.bin", io.BytesIO(data))
    for offset in (1, 65536, MIB + 3, len(data)):
        assert ftp.fetch("RETR /r.bin", rest=offset) == data[offset:]
    assert reply_code(lambda: ftp.fetch("RETR /r.bin", rest=len(data) + 1)) == "554"
    assert ftp.voidcmd("NOOP").startswith("200")
    quit_quietly(ftp)


def test_hash_and_x_commands_match_the_stored_fingerprint(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    data = os.urandom(300_000)
    ftp.storbinary("STOR /h.bin", io.BytesIO(data))
    stored = admin_workspace(services, account).fingerprint("/h.bin")
    assert stored.sha256 == hashlib.sha256(data).digest() and stored.md5 == hashlib.md5(data).digest()
    assert ftp.sendcmd("HASH /h.bin") == f"213 SHA-256 0-{len(data)} {stored.sha256.hex()} /h.bin"
    assert ftp.sendcmd("OPTS HASH MD5") == "200 MD5"
    assert ftp.sendcmd("HASH /h.bin") == f"213 MD5 0-{len(data)} {stored.md5.hex()} /h.bin"
    assert "HASH SHA-256;MD5*" in ftp.sendcmd("FEAT")
    assert ftp.sendcmd("XMD5 /h.bin") == f"250 {stored.md5.hex()}"
    assert ftp.sendcmd("XSHA256 /h.bin") == f"250 {stored.sha256.hex()}"
    assert reply_code(lambda: ftp.sendcmd("OPTS HASH CRC32")) == "501"
    quit_quietly(ftp)


def test_type_a_stores_and_sends_the_bytes_as_they_are(ftps_server, account, services):
    """TYPE A (pyftpdlib's default) must not rewrite line endings: fingerprints are the client's."""
    ftp = connect(ftps_server, account.admin_username, account.password)
    data = b"dos\r\nunix\nold mac\rmixed\r\r\n\n\rend\r" + os.urandom(70_000) + b"\r\n"
    ftp.voidcmd("TYPE A")
    with ftp.transfercmd("STOR /ascii.txt") as conn:
        conn.sendall(data)
        conn.unwrap()
    assert ftp.voidresp().startswith("226")
    stored = admin_workspace(services, account).fingerprint("/ascii.txt")
    assert (stored.size, stored.sha256, stored.md5) == (
        len(data), hashlib.sha256(data).digest(), hashlib.md5(data).digest())
    ftp.voidcmd("TYPE A")
    received = b""
    with ftp.transfercmd("RETR /ascii.txt") as conn:
        while chunk := conn.recv(65536):
            received += chunk
    ftp.voidresp()
    assert received == data
    quit_quietly(ftp)


def test_the_226_follows_the_commit(ftps_server, account, services):
    """When the client reads 226 the file is already current and fingerprinted."""
    ftp = connect(ftps_server, account.admin_username, account.password)
    for n in range(3):
        data = os.urandom(100_000 + n)
        assert ftp.storbinary("STOR /c.bin", io.BytesIO(data)).startswith("226")
        assert admin_workspace(services, account).fingerprint("/c.bin").sha256 == hashlib.sha256(data).digest()
    quit_quietly(ftp)


def test_writes_at_an_offset_are_refused_clearly(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.storbinary("STOR /w.txt", io.BytesIO(b"original"))
    assert reply_code(lambda: ftp.storbinary("APPE /w.txt", io.BytesIO(b"more"))) == "504"
    assert reply_code(lambda: ftp.storbinary("STOR /w.txt", io.BytesIO(b"x"), rest=3)) == "504"
    assert reply_code(lambda: ftp.sendcmd("STOU")) == "504"
    assert reply_code(lambda: ftp.sendcmd("SITE CHMOD 777 /w.txt")) == "500"
    assert reply_code(lambda: ftp.sendcmd("SITE EXEC /bin/sh")) == "500"
    assert ftp.fetch("RETR /w.txt") == b"original"
    refusals = [row.detail for row in audit_rows(services, account.id, "denied")]
    assert {"APPE", "STOR", "STOU", "SITE EXEC"} <= set(refusals)
    assert "APPE" not in ftp.sendcmd("HELP") and "STOU" not in ftp.sendcmd("HELP")
    quit_quietly(ftp)


def test_transfers_are_audited_with_protocol_ip_bytes_and_duration(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.storbinary("STOR /au.bin", io.BytesIO(b"a" * 1000))
    ftp.fetch("RETR /au.bin")
    ftp.mkd("/au")
    quit_quietly(ftp)
    rows = audit_rows(services, account.id)
    by_action = {row.action: row for row in rows if row.protocol == "ftps"}
    assert {"login", "upload", "download", "mkdir"} <= set(by_action)
    for action, direction in (("upload", "in"), ("download", "out")):
        row = by_action[action]
        assert (row.ip, row.direction, row.nbytes, row.status) == (HOST, direction, 1000, "ok")
        assert row.duration_ms is not None


# -- data-channel attacks -----------------------------------------------------------------------------

def test_prot_c_is_refused_and_a_clear_text_data_connection_stores_nothing(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.voidcmd("TYPE I")
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert reply_code(lambda: ftp.sendcmd("PBSZ 0")) == "200"
    assert reply_code(lambda: ftp.sendcmd("PROT C")) == "534"
    plain = socket.create_connection((HOST, port), timeout=10)
    ftp.sendcmd("STOR /clear.txt")  # 150 (queued or already connected)
    plain.sendall(b"clear text that must never be stored")
    plain.close()
    # The refusal may come only when the passive port times out (20 s after PASV): wait past
    # it, whatever the load on the machine.
    ftp.sock.settimeout(WorkspacePassiveDTP.timeout * 3)
    assert _error_reply(ftp)[:3] in ("522", "426")
    assert ftp.voidcmd("NOOP").startswith("200")
    assert not exists(services, account, "/clear.txt")
    assert "PROT C" in [row.detail for row in audit_rows(services, account.id, "denied")]
    quit_quietly(ftp)


def test_a_client_that_does_not_resume_the_session_is_refused(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password, cls=ftplib.FTP_TLS)
    with pytest.raises((ftplib.Error, OSError, EOFError)):
        ftp.storbinary("STOR /nr.txt", io.BytesIO(b"data"))
    quit_quietly(ftp)
    assert not exists(services, account, "/nr.txt")


def _read_all(conn) -> bytes:
    received = b""
    with contextlib.suppress(OSError, ssl.SSLError):
        while chunk := conn.recv(65536):
            received += chunk
    return received


def _thief_first_then_rightful(victim, port, thief_connects, *, refused_first=True) -> bytes:
    """A thief's connection to the victim's passive port comes first (and, with `refused_first`,
    is refused before the victim connects); the victim's own connection, resuming its session,
    then gets the queued download, and the thief nothing."""
    thief = thief_connects(socket.create_connection((HOST, port), timeout=10))
    if refused_first:
        assert _read_all(thief) == b""
    rightful = victim.context.wrap_socket(socket.create_connection((HOST, port), timeout=10),
                                          server_hostname=HOST, session=victim.sock.session)
    received = _read_all(rightful)
    rightful.close()
    assert victim.voidresp().startswith("226")
    assert _read_all(thief) == b""  # closed by the server once the rightful connection came
    thief.close()
    return received


def test_a_same_address_thief_gets_nothing_and_the_transfer_goes_on(ftps_server, account, services):
    victim = connect(ftps_server, account.admin_username, account.password)
    secret = os.urandom(200_000)
    victim.storbinary("STOR /secret.bin", io.BytesIO(secret))
    victim.voidcmd("TYPE I")
    host, port = ftplib.parse227(victim.sendcmd("PASV"))
    assert victim.sendcmd("RETR /secret.bin").startswith("150")
    # The thief comes first, from the same address, with a TLS session of its own.
    fresh = client_context(ftps_server.cert)
    assert _thief_first_then_rightful(
        victim, port, lambda raw: fresh.wrap_socket(raw, server_hostname=HOST)) == secret
    # A silent thief, which never starts its handshake, does not stop the transfer either.
    host, port = ftplib.parse227(victim.sendcmd("PASV"))
    assert victim.sendcmd("RETR /secret.bin").startswith("150")
    assert _thief_first_then_rightful(victim, port, lambda raw: raw, refused_first=False) == secret
    assert "data connection without TLS session reuse" in [r.detail for r in audit_rows(services, account.id, "denied")]
    quit_quietly(victim)


def test_a_session_of_a_connection_that_never_logged_in_is_refused(ftps_server, account, services):
    victim = connect(ftps_server, account.admin_username, account.password)
    secret = os.urandom(100_000)
    victim.storbinary("STOR /secret2.bin", io.BytesIO(secret))
    thief = connect(ftps_server)  # AUTH TLS on a control connection of its own, never logged in
    thief.voidcmd("NOOP")  # reads the TLS 1.3 session ticket
    victim.voidcmd("TYPE I")
    host, port = ftplib.parse227(victim.sendcmd("PASV"))
    assert victim.sendcmd("RETR /secret2.bin").startswith("150")
    resume_thiefs = lambda raw: thief.context.wrap_socket(raw, server_hostname=HOST, session=thief.sock.session)
    # Its connection might yet log in (a sibling still logging in): it waits, and gets nothing.
    assert _thief_first_then_rightful(victim, port, resume_thiefs, refused_first=False) == secret
    quit_quietly(thief)
    quit_quietly(victim)


def _queue_upload(ftp, path) -> int:
    """PASV and STOR on `ftp`, its data connection not yet open; returns the passive port."""
    ftp.voidcmd("TYPE I")
    port = ftplib.parse227(ftp.sendcmd("PASV"))[1]
    assert ftp.sendcmd(f"STOR {path}").startswith("150")
    return port


def _send_resuming(lender, port, data: bytes, *, refused=False) -> None:
    """Upload `data` over a data connection to `port` that resumes `lender`'s TLS session."""
    conn = lender.context.wrap_socket(socket.create_connection((HOST, port), timeout=10),
                                      server_hostname=HOST, session=lender.sock.session)
    with contextlib.suppress(OSError, ssl.SSLError) if refused else contextlib.nullcontext():
        conn.sendall(data)
        conn.unwrap()
    conn.close()


def test_a_session_of_another_user_is_refused(ftps_server, account, services, make_user):
    _, other_name = make_user(account)
    alice = connect(ftps_server, other_name, STRONG_PASSWORD)
    mallory = connect(ftps_server, account.admin_username, account.password)
    port = _queue_upload(mallory, "/foreign.txt")
    _send_resuming(alice, port, b"foreign bytes", refused=True)
    denied = [r.detail for r in audit_rows(services, account.id, "denied")]
    assert "data connection resuming another login's TLS session" in denied
    assert not exists(services, account, "/foreign.txt")
    # The port still waits for mallory's own connection, which stores mallory's bytes.
    _send_resuming(mallory, port, b"own bytes")
    assert mallory.voidresp().startswith("226")
    assert mallory.fetch("RETR /foreign.txt") == b"own bytes"
    quit_quietly(alice)
    quit_quietly(mallory)


def test_a_sibling_connection_of_the_same_user_may_lend_its_session(ftps_server, account, services):
    """Go clients (rclone) share one TLS session cache between their parallel connections."""
    first = connect(ftps_server, account.admin_username, account.password)
    second = connect(ftps_server, account.admin_username, account.password)
    _send_resuming(first, _queue_upload(second, "/sibling.txt"), b"sibling")
    assert second.voidresp().startswith("226")
    assert second.fetch("RETR /sibling.txt") == b"sibling"
    quit_quietly(first)
    quit_quietly(second)


def _stor_socket(ftp, path):
    ftp.voidcmd("TYPE I")
    conn, _ = ftp.ntransfercmd(f"STOR {path}")
    return conn


def test_an_upload_cut_without_close_notify_stores_nothing(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    conn = _stor_socket(ftp, "/cut.bin")
    conn.sendall(os.urandom(500_000))
    # A bare TCP FIN: shut the socket under TLS without close-notify (a crash, or an injected FIN).
    socket.socket.shutdown(conn, socket.SHUT_RDWR)
    conn.close()
    assert _error_reply(ftp)[:3] == "426"
    assert not exists(services, account, "/cut.bin")
    assert "incomplete" in [r.detail for r in audit_rows(services, account.id, "upload") if r.status == "failed"]
    quit_quietly(ftp)


def test_abor_during_an_upload_stores_nothing(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    conn = _stor_socket(ftp, "/abor.bin")
    conn.sendall(os.urandom(300_000))
    time.sleep(0.3)
    ftp.sock.sendall(b"ABOR\r\n")
    replies = [ftp.getline() for _ in range(2)]
    conn.close()
    assert [r[:3] for r in replies] == ["426", "226"]
    assert ftp.voidcmd("NOOP").startswith("200")
    assert not exists(services, account, "/abor.bin")
    quit_quietly(ftp)


def test_port_to_a_foreign_or_privileged_address_is_refused(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    assert reply_code(lambda: ftp.sendcmd("PORT 127,0,0,2,200,10")) == "501"
    assert reply_code(lambda: ftp.sendcmd("PORT 127,0,0,1,0,21")) == "501"
    assert reply_code(lambda: ftp.sendcmd("EPRT |1|10.1.2.3|50000|")) == "501"
    quit_quietly(ftp)


def test_active_mode_to_the_clients_own_address_works(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.set_pasv(False)
    ftp.storbinary("STOR /active.txt", io.BytesIO(b"active"))
    assert ftp.fetch("RETR /active.txt") == b"active"
    quit_quietly(ftp)


def test_relaxed_session_reuse_lets_old_clients_in(settings, migrated, tls_files, account):
    with running_ftps(settings, tls_files, ftps_require_session_reuse=False) as server:
        ftp = connect(server, account.admin_username, account.password, cls=ftplib.FTP_TLS)
        ftp.storbinary("STOR /old-client.txt", io.BytesIO(b"ok"))
        quit_quietly(ftp)


def test_pasv_announces_the_masquerade_address(settings, migrated, tls_files, account):
    with running_ftps(settings, tls_files, ftps_masquerade_address="192.0.2.10") as server:
        ftp = connect(server, account.admin_username, account.password)
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        assert host == "192.0.2.10" and port in server.services.settings.ftps_passive_ports
        quit_quietly(ftp)


# -- authentication -----------------------------------------------------------------------------------

def test_unknown_users_and_wrong_passwords_get_one_reply(ftps_server, account):
    replies = []
    for username, password in ((account.admin_username, "wrong-password-1"), ("nobody-here-x", "whatever")):
        ftp = connect(ftps_server, source="127.0.0.3")
        with pytest.raises(ftplib.error_perm) as caught:
            ftp.login(username, password)
        replies.append(str(caught.value))
        quit_quietly(ftp)
    assert replies[0] == replies[1] == "530 Login incorrect"
    ftp = connect(ftps_server, source="127.0.0.3")
    with pytest.raises(ftplib.error_perm):
        ftp.login("anonymous", "guest@example.com")
    quit_quietly(ftp)


def test_lockout_after_three_wrong_passwords_holds_on_every_door(ftps_server, account, services):
    for n in range(3):
        ftp = connect(ftps_server, source="127.0.0.4")
        with pytest.raises(ftplib.error_perm):
            ftp.login(account.admin_username, f"wrong-{n}")
        quit_quietly(ftp)
    ftp = connect(ftps_server, source="127.0.0.4")
    with pytest.raises(ftplib.error_perm) as caught:
        ftp.login(account.admin_username, account.password)
    assert str(caught.value) == "530 Login incorrect"
    quit_quietly(ftp)
    for door in ("web", "sftp"):
        with pytest.raises(AuthFailed):
            auth.authenticate(services, account.admin_username, account.password, method="password",
                              protocol=door, ip="127.0.0.5")


def test_the_connection_limit_on_failures_agrees_with_the_lockout(ftps_server, make_account):
    account = make_account()
    ftp = connect(ftps_server, source="127.0.0.6")
    for n in range(ftps_server.services.settings.lockout_threshold):
        with pytest.raises(ftplib.error_perm):
            ftp.login(account.admin_username, f"nope-{n}")
    with pytest.raises((EOFError, OSError, ftplib.Error)):
        ftp.voidcmd("NOOP")
    ftp.close()


def test_allow_list_refuses_another_source_address(ftps_server, account, services):
    with services.db.session() as session:
        auth.add_ip_rule(session, services.keyring, session.get(Account, account.id), "127.0.0.1/32")
    ftp = connect(ftps_server, account.admin_username, account.password, source="127.0.0.1")
    assert ftp.voidcmd("NOOP").startswith("200")
    quit_quietly(ftp)
    ftp = connect(ftps_server, source="127.0.0.2")
    with pytest.raises(ftplib.error_perm) as caught:
        ftp.login(account.admin_username, account.password)
    assert str(caught.value) == "530 Login incorrect"
    quit_quietly(ftp)


def test_mfa_accounts_log_in_with_app_passwords_only(ftps_server, make_account, services):
    account = make_account()
    with services.db.session() as session:
        acct = session.get(Account, account.id)
        auth.set_policy(session, services.keyring, acct, require_mfa=True)
        user = session.get(User, account.admin_id)
        totp.enrol_totp(session, services.keyring, user)
        token = auth.create_app_password(session, services.keyring, user, "ftps")
    ftp = connect(ftps_server, source="127.0.0.7")
    with pytest.raises(ftplib.error_perm):
        ftp.login(account.admin_username, account.password)
    quit_quietly(ftp)
    ftp = connect(ftps_server, account.admin_username, token, source="127.0.0.7")
    ftp.storbinary("STOR /mfa.txt", io.BytesIO(b"ok"))
    quit_quietly(ftp)


# -- malformed input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("line, code", [
    (b"CWD /bad\x00name", "553"),
    (b"MKD /caf\xe9", "501"),
    (b"X" * 5000, "500"),
    (b"FROB something", "500"),
    (b"MKD /bidi\xe2\x80\xaename", "553"),
    (b"STAT", "211"),
    (b"CWD /no/such", "550"),
    (b"MLSD /nope", "550"),
    (b"RNTO /x", "503"),
    (b"HELP APPE", "501"),
])
def test_malformed_input_gets_a_reply_and_the_session_lives(ftps_server, account, line, code):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.sock.sendall(line + b"\r\n")
    reply = ftp.getresp() if code[0] in "12" else _error_reply(ftp)
    assert reply[:3] == code
    assert "Traceback" not in reply
    assert ftp.voidcmd("NOOP").startswith("200")
    quit_quietly(ftp)


def _error_reply(ftp) -> str:
    try:
        return ftp.getresp()
    except ftplib.Error as exc:
        return str(exc)


def test_a_reply_cannot_be_forged_with_a_bare_line_feed(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.sock.sendall(b"FROB\n200 forged\r\n")
    assert _error_reply(ftp)[:3] == "500"
    assert ftp.voidcmd("NOOP").startswith("200 I successfully")
    quit_quietly(ftp)


def test_the_small_commands(ftps_server, account):
    ftp = connect(ftps_server, account.admin_username, account.password)
    for command, code in (("SYST", "215"), ("TYPE I", "200"), ("MODE S", "200"), ("STRU F", "200"),
                          ("OPTS UTF8 ON", "200"), ("NOOP", "200"), ("MODE B", "504"), ("TYPE X", "504"),
                          ("PBSZ 0", "200"), ("PROT P", "200"), ("AUTH TLS", "503"), ("REIN", "500")):
        assert reply_code(lambda: ftp.sendcmd(command)) == code, command
    ftp.mkd("/deep")
    ftp.cwd("/deep")
    assert ftp.sendcmd("CDUP").startswith("250") and ftp.pwd() == "/"
    assert ftp.sendcmd("EPSV").startswith("229")
    assert ftp.sendcmd("ABOR")[:3] in ("225", "226")
    feat = ftp.sendcmd("FEAT")
    assert "CHMOD" not in feat and "AUTH TLS" in feat and "MLST" in feat and "APPE" not in feat
    quit_quietly(ftp)


def test_refused_operations_are_audited(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    assert reply_code(lambda: ftp.storbinary("STOR /Shared/x.txt", io.BytesIO(b"x"))) == "550"
    assert reply_code(lambda: ftp.mkd("/Audit Logs/x")) == "550"
    quit_quietly(ftp)
    denied = [(row.detail, row.status) for row in audit_rows(services, account.id, "denied")]
    assert ("STOR", "refused") in denied and ("MKD", "refused") in denied


def test_a_banned_address_is_told_421_and_dropped(ftps_server, services):
    address = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    with services.db.session() as session:
        session.add(IpBan(ip=address, banned_until=datetime.now(timezone.utc) + timedelta(minutes=2)))
    try:
        ftp = SessionReusingFTP_TLS(context=client_context(ftps_server.cert), timeout=20)
        ftp.connect(HOST, ftps_server.port, source_address=(address, 0))
        with pytest.raises(ftplib.error_temp, match="^421"):
            ftp.auth()
        with pytest.raises((EOFError, OSError)):
            ftp.voidcmd("NOOP")
        ftp.close()
    finally:
        with services.db.session() as session:
            session.execute(delete(IpBan).where(IpBan.ip == address))


def test_commands_need_login_first(ftps_server):
    ftp = connect(ftps_server, source="127.0.0.8")
    for command in ("STAT /", "LIST", "SITE HELP", "PASV", "HASH /x"):
        assert reply_code(lambda: ftp.sendcmd(command)) == "530", command
    quit_quietly(ftp)


def test_logs_carry_ids_not_names_or_paths(ftps_server, account, caplog):
    caplog.set_level(logging.DEBUG)
    assert not ftps.log.disabled  # migrations must not silence our loggers
    ftp = connect(ftps_server, account.admin_username, account.password)
    ftp.mkd("/very-private-folder")
    ftp.storbinary("STOR /very-private-folder/f.txt", io.BytesIO(b"x"))
    quit_quietly(ftp)
    time.sleep(0.3)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert any(record.name == "transfer.ftps" for record in caplog.records), "nothing was logged at all?"
    assert "very-private-folder" not in text and account.admin_username not in text


def test_a_slow_session_does_not_stall_the_others(ftps_server, account):
    busy = connect(ftps_server, account.admin_username, account.password)
    conn = _stor_socket(busy, "/slow.bin")
    conn.sendall(b"part")
    started = time.monotonic()
    other = connect(ftps_server, account.admin_username, account.password)
    assert "slow.bin" not in other.nlst("/")
    assert time.monotonic() - started < 10
    conn.unwrap()
    conn.close()
    assert busy.voidresp().startswith("226")
    quit_quietly(other)
    quit_quietly(busy)


# -- curl and lftp ------------------------------------------------------------------------------------

def test_curl_50_mib_round_trip(ftps_server, account, services, test_env, tmp_path):
    data = os.urandom(50 * MIB)
    (tmp_path / "up.bin").write_bytes(data)
    up = curl(ftps_server, account, "-T", "up.bin", "URL/big.bin", test_env=test_env, tmp_path=tmp_path)
    assert up.returncode == 0, up.stderr
    down = curl(ftps_server, account, "-o", "down.bin", "URL/big.bin", test_env=test_env, tmp_path=tmp_path)
    assert down.returncode == 0, down.stderr
    expected = hashlib.sha256(data).digest()
    assert hashlib.sha256((tmp_path / "down.bin").read_bytes()).digest() == expected
    assert admin_workspace(services, account).fingerprint("/big.bin").sha256 == expected
    resumed = curl(ftps_server, account, "-C", str(40 * MIB), "-o", "tail.bin", "URL/big.bin",
                   test_env=test_env, tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "tail.bin").read_bytes() == data[40 * MIB:]


def test_curl_lists_and_changes(ftps_server, account, test_env, tmp_path):
    (tmp_path / "c.txt").write_bytes(b"curl")
    assert curl(ftps_server, account, "-T", "c.txt", "--ftp-create-dirs", "URL/cdir/c.txt",
                test_env=test_env, tmp_path=tmp_path).returncode == 0
    listing = curl(ftps_server, account, "URL/cdir/", test_env=test_env, tmp_path=tmp_path)
    assert listing.returncode == 0 and b"c.txt" in listing.stdout
    changed = curl(ftps_server, account, "-Q", "RNFR /cdir/c.txt", "-Q", "RNTO /cdir/d.txt", "URL/",
                   test_env=test_env, tmp_path=tmp_path)
    assert changed.returncode == 0, changed.stderr
    removed = curl(ftps_server, account, "-Q", "DELE /cdir/d.txt", "-Q", "RMD /cdir", "URL/",
                   test_env=test_env, tmp_path=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert b"cdir" not in curl(ftps_server, account, "-l", "URL/", test_env=test_env, tmp_path=tmp_path).stdout


def test_curl_over_implicit_ftps(ftps_server, account, test_env, tmp_path):
    (tmp_path / "i.txt").write_bytes(b"implicit")
    up = curl(ftps_server, account, "-T", "i.txt", "URL/i.txt", implicit=True, test_env=test_env, tmp_path=tmp_path)
    assert up.returncode == 0, up.stderr
    down = curl(ftps_server, account, "URL/i.txt", implicit=True, test_env=test_env, tmp_path=tmp_path)
    assert down.returncode == 0 and down.stdout == b"implicit", down.stderr


def test_lftp_round_trip_listing_and_changes(ftps_server, account, test_env, tmp_path):
    data = os.urandom(MIB + 1)
    (tmp_path / "l.bin").write_bytes(data)
    result = lftp(ftps_server, account,
                  "mkdir /ldir; put l.bin -o /ldir/l.bin; mv /ldir/l.bin /ldir/m.bin; "
                  "get /ldir/m.bin -o back.bin; cls -1 /ldir; rm /ldir/m.bin; rmdir /ldir; cls -1 /",
                  test_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    names = result.stdout.decode().split()
    assert "/ldir/m.bin" in names or "m.bin" in names
    assert "ldir/" not in names[-3:]


def rclone(server, account, *args, test_env, tmp_path):
    """rclone with its default settings on an on-the-fly explicit-FTPS remote."""
    config = tmp_path / "rclone.conf"
    config.touch()
    obscured = run_client([tool("rclone"), "--config", str(config), "obscure", account.password],
                          test_env, tmp_path).stdout.decode().strip()
    remote = (f":ftp,host={HOST},port={server.port},user={account.admin_username},pass={obscured},"
              f"explicit_tls=true,no_check_certificate=true:")
    argv = [tool("rclone"), "--config", str(config), "--retries", "1", "--low-level-retries", "2",
            "--contimeout", "20s", "--timeout", "60s"]
    return run_client(argv + [a.replace("REMOTE:", remote) for a in args], test_env, tmp_path, timeout=180)


def _rclone_copies_several_files_at_once(settings, tls_files, account, services, test_env, tmp_path, *,
                                          tls_max, upload):
    files = {f"f{n}.bin": os.urandom(random.randrange(200_000, 1_500_000)) for n in range(12)}
    workspace = admin_workspace(services, account)
    if not upload:
        workspace.make_dir("/rc")
    (tmp_path / "up").mkdir()
    for name, data in files.items():
        (tmp_path / "up" / name).write_bytes(data)
        if not upload:
            writer = workspace.open_write(f"/rc/{name}")
            writer.write(data)
            writer.commit()
    with running_ftps(settings, tls_files, tls_max_version=tls_max) as server:
        if upload:
            up = rclone(server, account, "copy", "up", "REMOTE:/rc", test_env=test_env, tmp_path=tmp_path)
            assert up.returncode == 0, up.stderr.decode()[-3000:]
        down = rclone(server, account, "copy", "REMOTE:/rc", "down", test_env=test_env, tmp_path=tmp_path)
        assert down.returncode == 0, down.stderr.decode()[-3000:]
    for name, data in files.items():
        assert workspace.fingerprint(f"/rc/{name}").sha256 == hashlib.sha256(data).digest()
        assert (tmp_path / "down" / name).read_bytes() == data
    refused = [r.detail for r in audit_rows(services, account.id, "denied") if r.detail.startswith("data connection")]
    assert refused == []


def test_rclone_with_its_defaults_copies_several_files_at_once_over_tls_12(
        settings, migrated, tls_files, account, services, test_env, tmp_path):
    """rclone shares one TLS session cache between its four parallel transfers: a data connection
    often resumes a session of a sibling control connection of the same login."""
    _rclone_copies_several_files_at_once(settings, tls_files, account, services, test_env, tmp_path,
                                         tls_max=SSL.TLS1_2_VERSION, upload=True)


def test_rclone_with_its_defaults_copies_several_files_at_once_over_tls_13(
        settings, migrated, tls_files, account, services, test_env, tmp_path):
    """The same over TLS 1.3 (each data connection resumes a ticket of a sibling)."""
    _rclone_copies_several_files_at_once(settings, tls_files, account, services, test_env, tmp_path,
                                         tls_max=SSL.TLS1_3_VERSION, upload=True)


# -- the process --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def test_python_m_transfer_ftps_starts_from_the_environment_and_stops_on_sigterm(test_env, tls_files, tmp_path):
    port = _free_port()
    env = {**client_env(test_env), "FTPS_PORT": str(port), "TLS_CERT_FILE": str(tls_files.cert),
           "TLS_KEY_FILE": str(tls_files.key), "FTPS_PASSIVE_PORTS": "41000-41019"}
    proc = subprocess.Popen([sys.executable, "-m", "transfer.ftps"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex((HOST, port)) == 0:
                    break
            time.sleep(0.2)
        ftp = ftplib.FTP(timeout=10)
        assert ftp.connect(HOST, port).startswith("220")
        ftp.close()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "ftps serving on" in output and "ftps stopped" in output


def test_an_empty_file_downloads_and_is_audited_as_complete(ftps_server, account, services):
    ftp = connect(ftps_server, account.admin_username, account.password)
    try:
        ftp.storbinary("STOR /empty.txt", io.BytesIO(b""))
        received = io.BytesIO()
        assert ftp.retrbinary("RETR /empty.txt", received.write).startswith("226")
        assert received.getvalue() == b""
    finally:
        quit_quietly(ftp)
    download = audit_rows(services, account.id, "download")[-1]
    assert (download.status, download.nbytes) == ("ok", 0)
