"""The SFTP door for tests: an in-process server fixture, client helpers and the parity door.

Load it as a plugin (`-p tests.transfer.sftp_door`) or through the parity matrix, which calls
`sftp_door(request, services, account)` and gets the server with `getfixturevalue`.
"""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from paramiko.sftp import (
    CMD_CLOSE, SFTP_EOF, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED,
)

from common.errors import AlreadyExists
from common.jobs.sweep import prepare_spool_host
from tests.doors import DoorError
from transfer.sftp import Limits, SftpServer, load_host_key

TIMEOUT = 20


def write_host_key(path: Path) -> Path:
    """A fresh Ed25519 host key in OpenSSH format, created owner-only."""
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


@pytest.fixture(scope="session")
def sftp_host_key_file(tmp_path_factory) -> Path:
    return write_host_key(tmp_path_factory.mktemp("sftp-host-key") / "ssh_host_ed25519_key")


def start_sftp_server(services, host_key_file: Path, limits: Limits | None = None) -> SftpServer:
    prepare_spool_host(services)
    limits = limits or Limits.from_settings(services.settings)
    return SftpServer(services, load_host_key(host_key_file), host="127.0.0.1", port=0, limits=limits).start()


@pytest.fixture(scope="session")
def sftp_server(services, sftp_host_key_file):
    """One SFTP server on 127.0.0.1 for the test session, stopped at its end."""
    server = start_sftp_server(services, sftp_host_key_file)
    yield server
    server.stop()


def fresh_source() -> str:
    """A loopback address of its own, so deliberate failures never meet another test's."""
    return f"127.{random.randint(16, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"


class SftpStatus(IOError):
    """An SFTP status reply, keeping the code paramiko's client would otherwise drop."""

    def __init__(self, code: int, text: str):
        errno_ = {SFTP_NO_SUCH_FILE: 2, SFTP_PERMISSION_DENIED: 13}.get(code)
        super().__init__(*((errno_, text) if errno_ else (text,)))
        self.code, self.text = code, text


class StatusSFTPClient(paramiko.SFTPClient):
    def _convert_status(self, msg):
        code, text = msg.get_int(), msg.get_text()
        if code == SFTP_OK:
            return
        if code == SFTP_EOF:
            raise EOFError(text)
        raise SftpStatus(code, text)


def open_transport(port: int, *, source: str = "127.0.0.1", disabled_algorithms=None) -> paramiko.Transport:
    """A client transport with TCP_NODELAY (else each login waits on a delayed ACK)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
    transport.start_client(timeout=TIMEOUT)
    return transport


def connect(port: int, username: str, *, password: str | None = None, pkey=None,
            source: str = "127.0.0.1") -> tuple[paramiko.Transport, StatusSFTPClient]:
    """Log in with a password or a key and open the sftp subsystem."""
    transport = open_transport(port, source=source)
    try:
        if pkey is not None:
            transport.auth_publickey(username, pkey)
        else:
            transport.auth_password(username, password)
        return transport, StatusSFTPClient.from_transport(transport)
    except BaseException:
        transport.close()
        raise


def close_checked(client: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """CLOSE a file and raise if the server refused it (paramiko's close() ignores the reply)."""
    handle.flush()
    client._request(CMD_CLOSE, handle.handle)
    paramiko.file.BufferedFile.close(handle)  # marks it closed without a second CLOSE


def status_kind(code: int, text: str) -> str:
    """The parity matrix's outcome word for an SFTP status (FAILURE is told apart by its text)."""
    if code == SFTP_NO_SUCH_FILE:
        return "not_found"
    if code == SFTP_PERMISSION_DENIED:
        return "denied"
    if code == SFTP_OP_UNSUPPORTED:
        return "unsupported"
    if text == AlreadyExists.default_message:
        return "exists"
    if text.startswith(("A name", "That name")):
        return "invalid"
    return "failed"


class SftpDoor:
    """The parity matrix's operations over a real SFTP session (paramiko's client)."""

    def __init__(self, client: StatusSFTPClient):
        self.client = client

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except SftpStatus as exc:
            raise DoorError(status_kind(exc.code, exc.text), exc.text) from exc

    def upload(self, path: str, data: bytes) -> None:
        def run():
            handle = self.client.open(path, "wb")
            handle.write(data)  # not pipelined: paramiko drops the replies of pipelined writes
            close_checked(self.client, handle)
        self._call(run)

    def download(self, path: str) -> bytes:
        def run():
            with self.client.open(path, "rb") as handle:
                handle.prefetch()
                return handle.read()
        return self._call(run)

    def size(self, path: str) -> int:
        return self._call(lambda: self.client.stat(path).st_size)

    def list(self, path: str) -> list[str]:
        return self._call(lambda: sorted(self.client.listdir(path)))

    def mkdir(self, path: str) -> None:
        self._call(self.client.mkdir, path)

    def rename(self, source: str, target: str) -> None:
        self._call(self.client.posix_rename, source, target)

    def remove(self, path: str) -> None:
        self._call(self.client.remove, path)

    def rmdir_tree(self, path: str) -> None:
        self._call(self._rmtree, path)

    def _rmtree(self, path: str) -> None:
        for attr in self.client.listdir_attr(path):
            child = f"{path.rstrip('/')}/{attr.filename}"
            if attr.st_mode & 0o040000:
                self._rmtree(child)
            else:
                self.client.remove(child)
        self.client.rmdir(path)


def sftp_door(request, services, account) -> SftpDoor:
    """A door logged in over SFTP as the account's admin, closed when the test ends."""
    server = request.getfixturevalue("sftp_server")
    transport, client = connect(server.port, account.admin_username, password=account.password)
    request.addfinalizer(transport.close)
    return SftpDoor(client)
