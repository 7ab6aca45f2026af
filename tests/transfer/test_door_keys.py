"""Each transfer door publishes its keys' fingerprints at start-up, as real clients and the
OpenSSH and OpenSSL tools show them, for the portal to show without reading a private key."""
from __future__ import annotations

import subprocess

import pytest

from common import door_keys
from tests.fixtures import tool
from tests.transfer.ftps_door import connect as ftps_connect, make_tls_files, quit_quietly, running_ftps
from tests.transfer.sftp_door import open_transport, start_sftp_server, write_host_key


@pytest.fixture
def own_services(fresh_settings, open_services):
    # door_keys holds one row per door for the whole service: a database of its own keeps
    # the doors other tests start at the same time from publishing over this test's keys.
    return open_services(fresh_settings)


def published(services) -> dict[tuple[str, str], str]:
    return {(key.door, key.key_type): key.fingerprint for key in door_keys.published(services)}


def host_key_seen_by_a_client(services, key_file):
    """The host key a paramiko client receives from a door started on `key_file`."""
    server = start_sftp_server(services, key_file)
    try:
        transport = open_transport(server.port)
        try:
            return transport.get_remote_server_key()
        finally:
            transport.close()
    finally:
        server.stop()


def ssh_keygen_fingerprint(key, folder) -> str:
    public = folder / "seen.pub"
    public.write_text(f"{key.get_name()} {key.get_base64()}\n")
    listed = subprocess.run([tool("ssh-keygen"), "-l", "-E", "sha256", "-f", str(public)],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    return listed.split()[1]  # "256 SHA256:… no comment (ED25519)"


def test_sftp_publishes_the_host_key_a_client_receives(own_services, tmp_path):
    services = own_services
    seen = host_key_seen_by_a_client(services, write_host_key(tmp_path / "host_key"))
    fingerprint = published(services)[("sftp", seen.get_name())]
    assert seen.get_name() == "ssh-ed25519"
    assert fingerprint == ssh_keygen_fingerprint(seen, tmp_path) == seen.fingerprint


def test_a_restarted_sftp_door_replaces_the_key_it_published(own_services, tmp_path):
    services = own_services
    first = host_key_seen_by_a_client(services, write_host_key(tmp_path / "first"))
    second = host_key_seen_by_a_client(services, write_host_key(tmp_path / "second"))
    assert first.fingerprint != second.fingerprint
    rows = [key for key in door_keys.published(services) if key.door == "sftp"]
    assert [(key.key_type, key.fingerprint) for key in rows] == [("ssh-ed25519", second.fingerprint)]


def openssl_fingerprint(der: bytes) -> str:
    shown = subprocess.run([tool("openssl"), "x509", "-inform", "DER", "-noout", "-fingerprint", "-sha256"],
                           input=der, capture_output=True, check=True, timeout=30).stdout.decode()
    return shown.strip().split("=", 1)[1]  # "sha256 Fingerprint=AB:CD:…"


def test_ftps_publishes_the_certificate_a_client_receives(fresh_settings, own_services, tmp_path):
    services = own_services
    with running_ftps(fresh_settings, make_tls_files(tmp_path)) as server:
        ftp = ftps_connect(server)  # AUTH TLS: the handshake is done
        try:
            der = ftp.sock.getpeercert(binary_form=True)
        finally:
            quit_quietly(ftp)
    fingerprint = published(services)[("ftps", "tls-certificate")]
    assert fingerprint == openssl_fingerprint(der)
    assert len(fingerprint) == 32 * 3 - 1 and fingerprint == fingerprint.upper()
