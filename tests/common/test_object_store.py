"""The bucket checks and the store's own encryption layer (`S3_SSE=s3`), against real SeaweedFS.

The bucket checks run before a process's first write to the store and again after any outage;
outages go through the TCP proxy of test_ingest. SeaweedFS stores and returns lifecycle rules
(the clean-up itself, a day after a multipart upload began, is the store's to do and is not
waited for here). Server-side encryption is proved where it matters: the object reports it,
and the ciphertext we sent is nowhere in the store's volume files.
"""
from __future__ import annotations

import dataclasses
import io
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule
from minio.versioningconfig import VersioningConfig

from common.errors import ConfigError, TransientError
from common.jobs.ingest import ingest_version
from common.jobs.sweep import prepare_spool_host
from common.services import Services
from common.storage import MULTIPART_RULE_ID, ObjectStore
from common.vfs import Principal, Workspace
from devstack import keys
from devstack.backing import Ports, ServiceSecrets, start_object_store, stop_services
from tests import backing
from tests.fixtures import REPO_ROOT, free_port_block
from tests.factories import MiB, assert_stored_once, current_version, download, upload, wait_for
from tests.netfaults import TcpProxy

WEED_PORTS = 8  # weed binds the S3 port and seven companions above it


@pytest.fixture
def proxy(settings):
    relay = TcpProxy(settings.s3_endpoint)
    yield relay
    relay.close()


def _own(settings, tmp_path, **changes):
    """Settings with a bucket, spool and ingest queue of the test's own."""
    return dataclasses.replace(settings, s3_bucket="st-" + secrets.token_hex(6),
                               spool_id="st" + secrets.token_hex(5), spool_dir=tmp_path / "spool",
                               **changes)


@pytest.fixture
def open_services():
    made = []

    def make(settings) -> Services:
        svc = Services(settings)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


def _workspace(svc: Services, account) -> Workspace:
    return Workspace(svc, Principal(account.admin_id, account.id, account.admin_username, "admin",
                                    "sftp", "127.0.0.1"))


def _rules(store: ObjectStore) -> dict[str, Rule]:
    config = store.client.get_bucket_lifecycle(store.bucket)
    return {rule.rule_id: rule for rule in (config.rules if config else [])}


def _operator_rule() -> Rule:
    return Rule(ENABLED, rule_filter=Filter(prefix="exports/"), rule_id="operator-expiry",
                expiration=Expiration(days=30))


# -- item 19: the bucket checks ---------------------------------------------------------------

def test_the_multipart_rule_joins_the_operators_lifecycle_rules(settings, tmp_path):
    store = ObjectStore(_own(settings, tmp_path))
    store.client.make_bucket(store.bucket)
    outdated = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=MULTIPART_RULE_ID,
                    abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=9))
    store.client.set_bucket_lifecycle(store.bucket, LifecycleConfig([_operator_rule(), outdated]))

    for _ in range(2):  # a second start-up finds everything in place and changes nothing
        store.ensure_bucket()
        rules = _rules(store)
        assert set(rules) == {"operator-expiry", MULTIPART_RULE_ID}
        theirs, ours = rules["operator-expiry"], rules[MULTIPART_RULE_ID]
        assert (theirs.status, theirs.rule_filter.prefix, theirs.expiration.days) == (ENABLED, "exports/", 30)
        assert theirs.abort_incomplete_multipart_upload is None
        assert ours.status == ENABLED and ours.abort_incomplete_multipart_upload.days_after_initiation == 1
        assert ours.rule_filter.prefix in ("", None)


def test_the_bucket_is_checked_once_the_store_is_back_after_a_start_up_outage(
        settings, migrated, tmp_path, proxy, account, open_services):
    own = _own(settings, tmp_path, s3_endpoint=proxy.endpoint)
    direct = ObjectStore(own)  # the operator's view, around the proxy
    direct.client.make_bucket(direct.bucket)
    direct.client.set_bucket_lifecycle(direct.bucket, LifecycleConfig([_operator_rule()]))
    svc = open_services(own)
    proxy.cut_all()
    prepare_spool_host(svc)  # only a warning: uploads wait in the spool
    ws = _workspace(svc, account)
    data = os.urandom(300_000)
    upload(ws, "/early.bin", data)

    proxy.restore()
    version = current_version(svc, ws, "/early.bin")
    assert ingest_version(svc, version.id) == "stored"
    assert set(_rules(direct)) == {"operator-expiry", MULTIPART_RULE_ID}  # checked, and merged
    assert_stored_once(svc, version, data)


def test_a_bucket_that_gained_versioning_during_an_outage_gets_no_more_objects(
        settings, migrated, tmp_path, proxy, account, open_services):
    own = _own(settings, tmp_path, s3_endpoint=proxy.endpoint)
    svc = open_services(own)
    prepare_spool_host(svc)
    ws = _workspace(svc, account)
    upload(ws, "/before.bin", os.urandom(100_000))
    assert ingest_version(svc, current_version(svc, ws, "/before.bin").id) == "stored"

    proxy.cut_all()
    upload(ws, "/during.bin", os.urandom(100_000))
    during = current_version(svc, ws, "/during.bin")
    with pytest.raises(TransientError):
        ingest_version(svc, during.id)
    direct = ObjectStore(dataclasses.replace(own, s3_endpoint=settings.s3_endpoint))
    direct.client.set_bucket_versioning(direct.bucket, VersioningConfig(ENABLED))
    proxy.restore()

    with pytest.raises(ConfigError, match="versioning"):
        ingest_version(svc, during.id)
    assert direct.stat(during.storage_key) is None
    assert svc.spool.has(during.storage_key) and current_version(svc, ws, "/during.bin").state == "spooled"


# -- item 21: server-side encryption ------------------------------------------------------------

def _volume_files(bucket: str) -> list[Path]:
    """The embedded store's volume files of one bucket (SeaweedFS names them `<bucket>_<id>.dat`)."""
    return sorted((backing.services_dir() / "seaweedfs" / "data").glob(f"{bucket}_*.dat"))


def _in_volumes(bucket: str, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in _volume_files(bucket))


def test_uploads_are_encrypted_by_the_store_end_to_end_with_the_procfile_worker(
        settings, migrated, tmp_path, account, test_env, open_services):
    own = _own(settings, tmp_path, s3_sse="s3")
    svc = open_services(own)
    prepare_spool_host(svc)  # the start-up probe: the test store has its key
    ws = _workspace(svc, account)
    files = {"/large.bin": os.urandom(17 * MiB + 3), "/small.bin": os.urandom(5_000)}  # multipart, single
    for path, data in files.items():
        upload(ws, path, data)
    env = {**os.environ, **test_env, "S3_SSE": "s3", "S3_BUCKET": own.s3_bucket,
           "SPOOL_ID": own.spool_id, "SPOOL_DIR": str(own.spool_dir), "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "common.jobs.worker"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: all(current_version(svc, ws, p).state == "stored" for p in files), timeout=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output.decode(errors="replace")[-2000:]

    for path, data in files.items():
        version = current_version(svc, ws, path)
        assert_stored_once(svc, version, data)
        assert svc.store.stat(version.storage_key).encrypted
        assert download(ws, path) == data
        middle = len(data) // 3
        assert b"".join(ws.open_read(path, middle, 100_000)) == data[middle:middle + 100_000]
    if not backing.uses_external_services():
        # At rest the store holds its own encryption of our ciphertext, never our bytes.
        plain_key = "control" + secrets.token_hex(8)
        marker = os.urandom(4096)
        svc.store.client.put_object(own.s3_bucket, plain_key, io.BytesIO(marker), len(marker))
        wait_for(lambda: _in_volumes(own.s3_bucket, marker[1000:1064]), timeout=30)  # the scan sees
        for path in files:
            key = current_version(svc, ws, path).storage_key
            ciphertext = b"".join(svc.store.read(key))
            for at in (0, len(ciphertext) // 2, len(ciphertext) - 64):
                assert not _in_volumes(own.s3_bucket, ciphertext[at:at + 64])


def test_an_object_the_store_left_unencrypted_is_not_kept(settings, migrated, tmp_path, account,
                                                          open_services, monkeypatch):
    own = _own(settings, tmp_path, s3_sse="s3")
    svc = open_services(own)
    prepare_spool_host(svc)
    ws = _workspace(svc, account)
    upload(ws, "/quiet.bin", os.urandom(200_000))
    version = current_version(svc, ws, "/quiet.bin")
    # A store (or a proxy before it) that ignores the encryption header cannot be had from
    # SeaweedFS; simulate it by dropping the header from minio's write.
    real_put = type(svc.store.client).put_object
    monkeypatch.setattr(type(svc.store.client), "put_object",
                        lambda client, *args, **kwargs: real_put(client, *args, **{**kwargs, "sse": None}))
    with pytest.raises(ConfigError, match="did not encrypt"):
        ingest_version(svc, version.id)
    assert svc.store.stat(version.storage_key) is None
    assert current_version(svc, ws, "/quiet.bin").state == "spooled" and svc.spool.has(version.storage_key)

    monkeypatch.undo()
    # An unencrypted object already there (written before S3_SSE=s3) is replaced, not accepted.
    with open(svc.spool.path(version.storage_key), "rb") as handle:
        svc.store.client.put_object(own.s3_bucket, version.storage_key, handle, version.cipher_size)
    assert not svc.store.stat(version.storage_key).encrypted
    assert ingest_version(svc, version.id) == "stored"
    assert svc.store.stat(version.storage_key).encrypted


# -- a store without a key for server-side encryption ------------------------------------------

@pytest.fixture(scope="module")
def keyless_store(tmp_path_factory):
    """A second embedded SeaweedFS, started without its encryption key: S3_SSE=s3 cannot work."""
    folder = tmp_path_factory.mktemp("keyless")
    credentials = ServiceSecrets.generate()
    ports = Ports(postgres=0, valkey=0, s3=free_port_block(WEED_PORTS))
    start_object_store(folder, ports, credentials, encryption=False)
    yield {"S3_ENDPOINT": f"127.0.0.1:{ports.s3}", "S3_ACCESS_KEY": credentials.s3_access_key,
           "S3_SECRET_KEY": credentials.s3_secret_key, "S3_BUCKET": "keyless", "S3_SECURE": "0"}
    stop_services(folder)


def test_a_store_that_cannot_encrypt_is_refused_by_the_bucket_check(settings, keyless_store):
    reach = dict(s3_endpoint=keyless_store["S3_ENDPOINT"], s3_access_key=keyless_store["S3_ACCESS_KEY"],
                 s3_secret_key=keyless_store["S3_SECRET_KEY"], s3_bucket="keyless")
    ObjectStore(dataclasses.replace(settings, **reach, s3_sse="none")).ensure_bucket()
    with pytest.raises(ConfigError, match="server-side encryption"):
        ObjectStore(dataclasses.replace(settings, **reach, s3_sse="s3")).ensure_bucket()


@pytest.mark.parametrize("process", ["common.jobs.worker", "transfer.sftp", "transfer.ftps"])
def test_start_up_stops_with_one_line_when_the_store_cannot_encrypt(process, test_env, migrated,
                                                                    keyless_store, tmp_path):
    keys.ensure_ssh_host_key(tmp_path / "host_key")
    keys.ensure_tls_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    env = {**os.environ, **test_env, **keyless_store, "S3_SSE": "s3", "PYTHONPATH": str(REPO_ROOT),
           "SPOOL_ID": "kl" + secrets.token_hex(5), "SPOOL_DIR": str(tmp_path / "spool"),
           "SFTP_HOST_KEY_FILE": str(tmp_path / "host_key"), "SFTP_PORT": "0",
           "TLS_CERT_FILE": str(tmp_path / "cert.pem"), "TLS_KEY_FILE": str(tmp_path / "key.pem"),
           "FTPS_PORT": "0", "FTPS_PASSIVE_PORTS": "40000-40009"}
    started = subprocess.Popen([sys.executable, "-m", process], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = started.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        started.kill()
        output, _ = started.communicate()
        raise AssertionError(f"{process} kept running: {output.decode(errors='replace')[-1000:]}")
    lines = output.decode(errors="replace").strip().splitlines()
    assert started.returncode == ConfigError.exit_code, lines
    assert len(lines) == 1 and "server-side encryption (S3_SSE=s3)" in lines[0], lines
