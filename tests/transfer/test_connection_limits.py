"""Connection slots of the doors: the login deadline, the cap on connections not yet logged in,
and the per-address defender counting an IPv6 client by its /64 over a real door."""
from __future__ import annotations

import contextlib
import dataclasses
import ftplib
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete

from common import auth, passwords
from common.config import load_settings
from common.errors import AuthFailed
from common.models import IpBan
from common.services import Services
from tests.fixtures import STRONG_PASSWORD
from tests.transfer.ftps_door import (
    HOST, FTPSServerInfo, SessionReusingFTP_TLS, client_context, connect as ftps_connect,
    free_passive_range, quit_quietly, running_ftps,
)
from tests.transfer.sftp_door import connect as sftp_connect, fresh_source, start_sftp_server
from transfer import ftps
from transfer.sftp import Limits

DEADLINE = 10.0  # how long a test waits for something that must happen


def raw_connection(port: int, source: str, host: str = HOST) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=DEADLINE,
                                    source_address=(source, 0) if source else None)
    sock.settimeout(DEADLINE)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or DEADLINE passes)."""
    received, ends = b"", time.monotonic() + DEADLINE
    while time.monotonic() < ends:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            return received + b"<closed>"
        received += chunk
    return received


def limits_settings(settings, **overrides):
    return dataclasses.replace(settings, max_sessions_per_ip=50, max_unauthenticated_per_ip=10, **overrides)


# -- the login deadline ------------------------------------------------------------------------

def test_ftps_closes_a_connection_that_does_not_log_in_in_time(settings, migrated, tls_files, account):
    with running_ftps(limits_settings(settings), tls_files, login_timeout_seconds=1) as server:
        idle = raw_connection(server.port, fresh_source())
        assert idle.recv(4096).startswith(b"220")
        started = time.monotonic()
        assert read_until_closed(idle) == b"421 Login timed out.\r\n<closed>"
        assert time.monotonic() - started < DEADLINE
        idle.close()
        # A session that logged in in time is not touched by the deadline.
        ftp = ftps_connect(server, account.admin_username, account.password, source=fresh_source())
        time.sleep(2)  # twice the deadline
        assert ftp.voidcmd("NOOP").startswith("200")
        quit_quietly(ftp)


def test_sftp_closes_a_connection_that_does_not_log_in_in_time(settings, services, sftp_host_key_file, account):
    limits = Limits.from_settings(limits_settings(settings, login_timeout_seconds=1))
    assert limits.auth_timeout == 1.0
    server = start_sftp_server(services, sftp_host_key_file, limits)
    try:
        idle = raw_connection(server.port, fresh_source())
        assert idle.recv(4).startswith(b"SSH-")
        assert read_until_closed(idle).endswith(b"<closed>")
        idle.close()
    finally:
        server.stop()


# -- connections not yet logged in, per client -------------------------------------------------

def test_ftps_caps_connections_not_logged_in_per_client(settings, migrated, tls_files, account):
    with running_ftps(limits_settings(settings), tls_files) as server:
        source = fresh_source()
        logged_in = [ftps_connect(server, account.admin_username, account.password, source=source)
                     for _ in range(3)]
        waiting = [raw_connection(server.port, source) for _ in range(10)]
        try:
            assert all(sock.recv(4096).startswith(b"220") for sock in waiting)
            with raw_connection(server.port, source) as eleventh:
                assert read_until_closed(eleventh).startswith(b"421")
            with raw_connection(server.port, fresh_source()) as other:
                assert other.recv(4096).startswith(b"220")
            for ftp in logged_in:  # the logged-in sessions work on
                assert ftp.voidcmd("NOOP").startswith("200")
        finally:
            for sock in waiting:
                sock.close()
            for ftp in logged_in:
                quit_quietly(ftp)


def test_sftp_caps_connections_not_logged_in_per_client(settings, services, sftp_host_key_file, account):
    server = start_sftp_server(services, sftp_host_key_file, Limits.from_settings(limits_settings(settings)))
    source, waiting, logged_in = fresh_source(), [], []
    try:
        logged_in = [sftp_connect(server.port, account.admin_username, password=account.password,
                                  source=source)[0] for _ in range(3)]
        wait_for(lambda: server.admission.counts(source) == (3, 0))
        waiting = [raw_connection(server.port, source) for _ in range(10)]
        assert all(sock.recv(4).startswith(b"SSH-") for sock in waiting)
        with raw_connection(server.port, source) as eleventh:
            assert read_until_closed(eleventh) == b"<closed>"  # disconnected before any banner
        with raw_connection(server.port, fresh_source()) as other:
            assert other.recv(4).startswith(b"SSH-")
        assert all(transport.is_active() for transport in logged_in)
    finally:
        for sock in waiting:
            sock.close()
        for transport in logged_in:
            transport.close()
        server.stop()


def wait_for(predicate) -> None:
    ends = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < ends, "condition not reached in time"
        time.sleep(0.05)


# -- the defender over IPv6 ----------------------------------------------------------------------

@contextlib.contextmanager
def ftps_on_ipv6_loopback(settings, tls_files):
    settings = dataclasses.replace(settings, ftps_port=0, ftps_implicit_port=None,
                                   ftps_passive_ports=free_passive_range(),
                                   tls_cert_file=tls_files.cert, tls_key_file=tls_files.key)
    services = Services(settings)
    servers = ftps.build_servers(services, "::1")
    stop = threading.Event()
    thread = threading.Thread(target=ftps.serve, args=(servers, stop), daemon=True)
    thread.start()
    try:
        yield FTPSServerInfo("::1", servers[0].address[1], None, services, tls_files.cert)
    finally:
        stop.set()
        thread.join(30)
        services.close()


def test_a_ban_earned_from_one_address_holds_for_its_whole_64_over_ftps(settings, migrated, tls_files, services):
    strict = Services(dataclasses.replace(settings, defender_max_failures=3, defender_min_users=3))
    try:
        for n in range(3):  # failures from ::2, ::3, ::4: all of ::/64, as ::1 is
            with pytest.raises(AuthFailed):
                auth.authenticate(strict, f"ghost-{n}-{time.time_ns()}", "wrong", method="password",
                                  protocol="ftps", ip=f"::{n + 2}")
        with ftps_on_ipv6_loopback(settings, tls_files) as server:
            context = client_context(server.cert)
            context.check_hostname = False  # the test certificate names 127.0.0.1, not ::1
            ftp = SessionReusingFTP_TLS(context=context, timeout=DEADLINE)
            ftp.connect("::1", server.port)
            with pytest.raises(ftplib.error_temp, match="^421"):
                ftp.auth()
            ftp.close()
    finally:
        with services.db.session() as session:
            session.execute(delete(IpBan).where(IpBan.ip == auth.address_group("::1")))
        strict.close()


# -- the defaults let a crowd of legitimate clients in -------------------------------------------

def test_two_hundred_ftps_sessions_log_in_at_once_with_the_default_limits(settings, migrated, tls_files, account,
                                                                         make_user):
    defaults = load_settings({"APP_ENV": "test"})  # every limit at its default
    sized = dataclasses.replace(
        settings, max_sessions_per_ip=defaults.max_sessions_per_ip,
        max_unauthenticated_per_ip=defaults.max_unauthenticated_per_ip,
        login_timeout_seconds=defaults.login_timeout_seconds,
        max_concurrent_hashes=defaults.max_concurrent_hashes)
    sessions, per_client = 200, defaults.max_unauthenticated_per_ip
    sources = [fresh_source() for _ in range(sessions // per_client)]
    # Two hundred people (one user each: the lockout holds back parallel guesses at one name).
    users = [make_user(account)[1] for _ in range(sessions)]
    start, logged_in, errors = threading.Barrier(sessions), [], []

    def log_in(n):
        start.wait()
        try:
            logged_in.append(ftps_connect(server, users[n], STRONG_PASSWORD, source=sources[n % len(sources)]))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    with running_ftps(sized, tls_files) as server:
        threads = [threading.Thread(target=log_in, args=(n,)) for n in range(sessions)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert errors == [] and len(logged_in) == sessions
            assert all(ftp.voidcmd("NOOP").startswith("200") for ftp in logged_in)
        finally:
            for ftp in logged_in:
                quit_quietly(ftp)
    passwords.limit_concurrent_hashes(settings.max_concurrent_hashes)
