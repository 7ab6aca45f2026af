"""The development stack: the test services are real and private, and `make run`'s helpers work."""
from __future__ import annotations

import io
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import paramiko
import psycopg
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from minio import Minio
from minio.error import S3Error

from common.config import read_env_file
from devstack import backing as embedded, keys, secretstore
from devstack.files import format_env, write_env_file
from devstack.run import DevPaths, dev_environment, procfile_commands, LONG_RUNNING
from devstack.backing import Layout, Ports
from tests import backing
from tests.fixtures import free_port_block

REPO_ROOT = Path(__file__).resolve().parent.parent
embedded_only = pytest.mark.skipif(backing.uses_external_services(),
                                   reason="the services are external (named by the environment)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the backing services are real ---------------------------------------------------------

def test_postgres_answers_sql_in_the_runs_own_database(backing_env):
    url = backing_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, connect_timeout=10) as conn:
        database, answer = conn.execute("SELECT current_database(), 6 * 7").fetchone()
    assert answer == 42
    if not backing.uses_external_services():
        assert database.startswith("sealdrop_t_")


def test_redis_needs_its_password(backing_env):
    client = redis.Redis.from_url(backing_env["REDIS_URL"], socket_timeout=10)
    key = f"devstack-test-{secrets.token_hex(6)}"
    try:
        client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
        client.close()
    where = client.connection_pool.connection_kwargs
    anonymous = redis.Redis(host=where["host"], port=where["port"], socket_timeout=10,
                            retry=None)  # redis-py retries a refused login for seconds otherwise
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get(key)
    anonymous.close()


def _minio(env: dict[str, str], *, secret_key: str | None = None) -> Minio:
    return Minio(env["S3_ENDPOINT"], access_key=env["S3_ACCESS_KEY"],
                 secret_key=secret_key or env["S3_SECRET_KEY"],
                 secure=env.get("S3_SECURE", "0") in ("1", "true", "yes"))


def test_s3_stores_and_returns_an_object(backing_env):
    client = _minio(backing_env)
    bucket = f"devstack-test-{secrets.token_hex(6)}"
    client.make_bucket(bucket)
    try:
        client.put_object(bucket, "greeting", io.BytesIO(b"hello, store"), 12)
        response = client.get_object(bucket, "greeting")
        try:
            assert response.read() == b"hello, store"
        finally:
            response.close()
            response.release_conn()
        client.remove_object(bucket, "greeting")
    finally:
        client.remove_bucket(bucket)
    assert not client.bucket_exists(bucket)


def test_s3_refuses_a_wrong_secret(backing_env):
    with pytest.raises(S3Error):
        _minio(backing_env, secret_key="not-the-secret-key").list_buckets()


def test_the_run_has_its_own_bucket_name(backing_env):
    assert backing_env["S3_BUCKET"]
    if not backing.uses_external_services():
        assert backing_env["S3_BUCKET"].startswith("sealdrop-t-")


@embedded_only
def test_embedded_services_listen_on_loopback_only(backing_env):
    pids = embedded.running_pids(backing.services_dir())
    assert set(pids) == {"postgres", "valkey", "seaweedfs"}, pids
    for name, pid in pids.items():
        addresses = _listening_addresses(pid)
        assert addresses, f"{name} listens on nothing?"
        assert addresses <= {"127.0.0.1"}, f"{name} listens on {addresses}"


@embedded_only
def test_the_store_has_a_private_encryption_key_of_its_data_folder(backing_env):
    layout = Layout(backing.services_dir().resolve())
    key_file = layout.seaweed_sse_key
    assert _mode(key_file) == 0o600
    key = key_file.read_text().strip()
    assert len(bytes.fromhex(key)) == 32
    pid = embedded.running_pids(layout.root)["seaweedfs"]
    assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # not shown by `ps`
    assert f"WEED_S3_SSE_KEY={key}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    tracked = subprocess.run(["git", "ls-files", "--", "var"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert tracked == ""  # never committed


def _listening_addresses(pid: int) -> set[str]:
    """The local addresses of the TCP sockets this process listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addresses.add(_decode_address(local.split(":")[0], width))
    return addresses


def _decode_address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    import ipaddress
    address = ipaddress.ip_address(words)
    if width == 32 and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def test_the_test_ports_differ_from_the_dev_ports():
    from devstack.backing import DEV_PORTS, TEST_PORTS

    def every_port(ports: Ports) -> set[int]:
        return {ports.postgres, ports.valkey, *ports.seaweed().values()}

    assert not every_port(DEV_PORTS) & every_port(TEST_PORTS)
    assert len(every_port(TEST_PORTS)) == 2 + len(TEST_PORTS.seaweed())


def test_the_services_start_from_a_folder_that_only_its_owner_can_enter(tmp_path):
    # As /root is, and as many containers' home folders are: as root, PostgreSQL (which refuses
    # to run as root) must still reach its programs and data there.
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    folder = home / "checkout" / "var"
    base = free_port_block(3 + len(Ports(0, 0, 0).seaweed()))
    ports = Ports(postgres=base, valkey=base + 1, s3=base + 2)
    try:
        env = embedded.start_services(folder, ports, embedded.ServiceSecrets.generate(),
                                      durable=False)
        url = env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, connect_timeout=10) as connection:
            assert connection.execute("select 1").fetchone() == (1,)
    finally:
        embedded.stop_services(folder)
    assert embedded.running_services(folder) == []
    assert _mode(home) == 0o700


# -- the users file of the shared services ------------------------------------------------

def test_a_user_is_alive_only_while_its_process_runs():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    key = backing.process_key(child.pid)
    assert backing.process_is_alive(key)
    assert backing.process_is_alive(backing.process_key(os.getpid()))
    child.communicate(b"")
    assert not backing.process_is_alive(key)
    # The same pid with another start time is another process.
    assert not backing.process_is_alive(f"{os.getpid()}:1")


def test_run_ids_become_safe_database_and_bucket_names():
    run_id = backing.clean_run_id("Gw0-ABC_def/1")
    assert run_id == "gw0abcdef1"
    assert backing.database_name(run_id) == "sealdrop_t_gw0abcdef1"
    assert backing.bucket_name(run_id) == "sealdrop-t-gw0abcdef1"


# -- make run's helpers ----------------------------------------------------------------------

def test_env_file_is_private_and_reads_the_same_in_a_shell(tmp_path):
    values = {"APP_ENV": "development", "SPOOL_DIR": str(tmp_path / "a folder" / "spool"),
              "FTPS_MASQUERADE_ADDRESS": "", "MASTER_KEYS": "k1:ab+c/d==",
              "REDIS_URL": "redis://:pw@127.0.0.1:63790/0", "NOTE": "$HOME `x` \\n"}
    env_file = tmp_path / "dev.env"
    write_env_file(env_file, values, header="a header\nof two lines")
    assert _mode(env_file) == 0o600
    script = ". \"$1\"; " + "; ".join(f"printf '%s\\0' \"${key}\"" for key in values)
    shell = subprocess.run(["/bin/sh", "-c", script, "sh", str(env_file)], capture_output=True,
                           check=True, env={"PATH": os.environ["PATH"]})
    assert shell.stdout.split(b"\0")[:-1] == [v.encode() for v in values.values()]
    assert read_env_file(env_file) == values  # what the processes' config loader sees


def test_env_file_refuses_what_it_cannot_quote():
    with pytest.raises(ValueError):
        format_env({"X": "it's"})
    with pytest.raises(ValueError):
        format_env({"not a name": "x"})


def test_host_key_is_private_and_loads_in_paramiko(tmp_path):
    key_file = tmp_path / "host_ed25519_key"
    assert keys.ensure_ssh_host_key(key_file)
    assert _mode(key_file) == 0o600
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    assert key.get_name() == "ssh-ed25519"
    before = key_file.read_bytes()
    assert not keys.ensure_ssh_host_key(key_file)
    assert key_file.read_bytes() == before


def test_certificate_matches_its_key_and_names_localhost(tmp_path):
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert keys.ensure_tls_certificate(cert_file, key_file)
    assert _mode(key_file) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert keys.certificate_matches_key(cert, key)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert not keys.ensure_tls_certificate(cert_file, key_file)  # kept on a second run


def test_a_certificate_without_its_key_is_replaced(tmp_path):
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    keys.ensure_tls_certificate(cert_file, key_file)
    other_key = tmp_path / "other.pem"
    keys.ensure_tls_certificate(tmp_path / "other-cert.pem", other_key)
    key_file.write_bytes(other_key.read_bytes())
    assert keys.ensure_tls_certificate(cert_file, key_file)
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert keys.certificate_matches_key(cert, key)


def test_secrets_are_made_once_and_reused(tmp_path):
    path = tmp_path / "secrets.json"
    first = secretstore.load_or_create(path)
    assert _mode(path) == 0o600
    second = secretstore.load_or_create(path)
    assert second == first
    assert first.master_keys.startswith("k1:")
    import base64
    assert len(base64.b64decode(first.master_keys[3:], validate=True)) == 32
    assert secretstore.load_or_create(tmp_path / "elsewhere.json") != first


def test_dev_environment_has_every_setting_and_the_real_environment_wins(tmp_path):
    dev_secrets = secretstore.DevSecrets.generate()
    paths = DevPaths(tmp_path)
    values = dev_environment(paths, dev_secrets, {"PORT": "6001", "DATABASE_URL": "elsewhere"})
    assert values["APP_ENV"] == "development"
    assert values["PORT"] == "6001" and values["PUBLIC_URL"] == "http://127.0.0.1:6001"
    # Settings bound to the data in var/ are not redirected by the environment.
    assert values["DATABASE_URL"].startswith("postgresql+psycopg://sealdrop:")
    assert values["DATABASE_URL"].endswith("@127.0.0.1:54320/sealdrop")
    valkey_password = dev_secrets.services.valkey_password
    assert values["REDIS_URL"] == f"redis://:{valkey_password}@127.0.0.1:63790/0"
    assert values["S3_ENDPOINT"] == "127.0.0.1:8333"
    expected = {"S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET", "S3_SECURE", "S3_SSE", "MASTER_KEYS",
                "SECRET_KEY", "SPOOL_DIR", "FTPS_PORT", "FTPS_PASSIVE_PORTS",
                "FTPS_MASQUERADE_ADDRESS", "TLS_CERT_FILE", "TLS_KEY_FILE", "SFTP_PORT",
                "SFTP_HOST_KEY_FILE", "INGEST_MODE", "SPOOL_ID", "SMTP_URL", "MAIL_FROM"}
    assert expected <= values.keys()
    assert values["SFTP_HOST_KEY_FILE"] == str(paths.ssh_host_key)


def test_procfile_names_every_process_and_keeps_paths_out_of_logs():
    commands = procfile_commands(REPO_ROOT / "Procfile")
    assert set(commands) == {"release", *LONG_RUNNING}
    assert commands["release"] == "flask --app portal db upgrade"
    assert "--access-logfile" not in commands["web"]  # gunicorn then writes no access log
    assert "127.0.0.1" in commands["web"]
    assert "--url" not in commands["worker"]  # the Redis password stays out of `ps`
