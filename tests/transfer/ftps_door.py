"""The FTPS door for tests: an in-process server fixture, a session-reusing ftplib client, the parity door.

Load it as a plugin (`-p tests.transfer.ftps_door`) or import its fixtures; the parity matrix
reaches the server through `request.getfixturevalue("ftps_server")`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ftplib
import io
import ipaddress
import random
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.errors import AlreadyExists, NotFound, PermissionDenied
from common.services import Services
from tests.doors import DoorError
from transfer import ftps

HOST = "127.0.0.1"
TIMEOUT = 20


@dataclasses.dataclass
class TLSFiles:
    cert: Path
    key: Path


@dataclasses.dataclass
class FTPSServerInfo:
    """A running server: where it listens and the settings it runs with."""

    host: str
    port: int
    implicit_port: int | None
    services: Services
    cert: Path


def make_tls_files(folder: Path) -> TLSFiles:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost, its key readable by us alone."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealdrop-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(HOST))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    files = TLSFiles(folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def free_passive_range(size: int = 40) -> range:
    """A random unprivileged range, so parallel test runs rarely share passive ports."""
    start = random.randrange(40000, 60000 - size)
    return range(start, start + size)


@contextlib.contextmanager
def running_ftps(settings, tls_files: TLSFiles, *, tls_max_version: int | None = None, **overrides):
    """Serve FTPS on 127.0.0.1 (ports 0) in a thread until the block ends, then stop every session.

    `tls_max_version` (an `OpenSSL.SSL` constant) caps the server's TLS version, so a client
    that would choose TLS 1.3 can be tried over TLS 1.2."""
    settings = dataclasses.replace(
        settings, ftps_port=0, ftps_implicit_port=0, ftps_passive_ports=free_passive_range(),
        tls_cert_file=tls_files.cert, tls_key_file=tls_files.key, **overrides)
    services = Services(settings)
    servers = ftps.build_servers(services, HOST)
    if tls_max_version is not None:
        for server in servers:
            server.handler.tls_sessions.context.set_max_proto_version(tls_max_version)
    stop = threading.Event()
    thread = threading.Thread(target=ftps.serve, args=(servers, stop), name="ftps-test-server", daemon=True)
    thread.start()
    implicit = servers[1].address[1] if len(servers) > 1 else None
    try:
        yield FTPSServerInfo(HOST, servers[0].address[1], implicit, services, tls_files.cert)
    finally:
        stop.set()
        thread.join(30)
        services.close()
        assert not thread.is_alive(), "the FTPS server did not stop"


@pytest.fixture(scope="session")
def ftps_server(settings, migrated, tls_files) -> FTPSServerInfo:
    """The shared FTPS server (explicit and implicit), with session reuse required."""
    with running_ftps(settings, tls_files) as server:
        server.services.store.ensure_bucket()
        yield server


# -- clients ------------------------------------------------------------------------------------------

def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS, resuming the control connection's TLS session on data connections
    (as FileZilla, curl and lftp do)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size

    def fetch(self, cmd: str, rest: int | None = None) -> bytes:
        """RETR/LIST-style transfer, trusting the final reply rather than data-socket errors."""
        self.voidcmd("TYPE I")
        chunks = []
        with self.transfercmd(cmd, rest) as conn:
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    chunks.append(data)
                if isinstance(conn, ssl.SSLSocket):
                    conn.unwrap()
        self.voidresp()
        return b"".join(chunks)


def connect(server: FTPSServerInfo, username: str | None = None, password: str | None = None, *,
            source: str = HOST, cls=SessionReusingFTP_TLS, port: int | None = None) -> ftplib.FTP_TLS:
    """A logged-in (when credentials are given) FTPS client with PROT P, coming from `source`."""
    ftp = cls(context=client_context(server.cert), timeout=TIMEOUT)
    ftp.connect(server.host, port or server.port, source_address=(source, 0))
    ftp.auth()
    if username is not None:
        ftp.login(username, password)
        ftp.prot_p()
    return ftp


def quit_quietly(ftp: ftplib.FTP) -> None:
    with contextlib.suppress(Exception):
        ftp.quit()
    ftp.close()


# -- the parity door ----------------------------------------------------------------------------------

def door_kind(reply: str) -> str:
    """The parity outcome word for an FTP error reply."""
    code, _, text = reply.partition(" ")
    for cls, kind in ((NotFound, "not_found"), (PermissionDenied, "denied"), (AlreadyExists, "exists")):
        if text.startswith(cls.default_message):
            return kind
    if code in ("501", "553"):
        return "invalid"
    if code in ("502", "504"):
        return "unsupported"
    return "failed"


class FTPSDoor:
    """The parity door over real FTPS: one logged-in ftplib session."""

    def __init__(self, ftp: SessionReusingFTP_TLS):
        self.ftp = ftp

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply) as exc:
            raise DoorError(door_kind(str(exc)), str(exc)) from exc

    def upload(self, path: str, data: bytes) -> None:
        self._call(self.ftp.storbinary, f"STOR {path}", io.BytesIO(data))

    def download(self, path: str) -> bytes:
        return self._call(self.ftp.fetch, f"RETR {path}")

    def size(self, path: str) -> int:
        self.ftp.voidcmd("TYPE I")
        return self._call(self.ftp.size, path)

    def list(self, path: str) -> list[str]:
        return self._call(lambda: [name for name, _ in self.ftp.mlsd(path)])

    def mkdir(self, path: str) -> None:
        self._call(self.ftp.mkd, path)

    def rename(self, source: str, target: str) -> None:
        self._call(self.ftp.rename, source, target)

    def remove(self, path: str) -> None:
        self._call(self.ftp.delete, path)

    def rmdir_tree(self, path: str) -> None:
        # FTP has no recursive delete: like every FTP client, walk the tree.
        for name, facts in self._call(lambda: list(self.ftp.mlsd(path))):
            child = f"{path.rstrip('/')}/{name}"
            self.rmdir_tree(child) if facts["type"] == "dir" else self.remove(child)
        self._call(self.ftp.rmd, path)


def ftps_door(request, services, account) -> FTPSDoor:
    """The parity door for `account`'s admin over the shared FTPS server."""
    server = request.getfixturevalue("ftps_server")
    ftp = connect(server, account.admin_username, account.password)
    request.addfinalizer(lambda: quit_quietly(ftp))
    return FTPSDoor(ftp)
