"""The Workspace through its public calls, against real Postgres, Redis and the S3 store."""
from __future__ import annotations

import hashlib
import os

import pytest

from common.errors import AlreadyExists, InvalidName, IsAFolder, NotFound, PermissionDenied
from common.jobs.ingest import ingest_version
from common.vfs import Workspace
from tests.factories import admin_workspace


@pytest.fixture
def workspace(services, account):
    services.store.ensure_bucket()
    return admin_workspace(services, account, door="sftp")


def upload(ws: Workspace, path: str, data: bytes):
    up = ws.open_write(path)
    for i in range(0, len(data), 65536):
        up.write(data[i:i + 65536])
    return up.commit()


def download(ws: Workspace, path: str, offset: int = 0, length=None) -> bytes:
    return b"".join(ws.open_read(path, offset, length))


def test_upload_list_download_round_trip(workspace, services):
    data = os.urandom(700_000)
    workspace.make_dir("/reports")
    entry = upload(workspace, "/reports/q1.csv", data)
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).digest()
    assert [e.name for e in workspace.list_dir("/")] == ["Audit Logs", "Shared", "reports"]
    assert [(e.name, e.size) for e in workspace.list_dir("/reports")] == [("q1.csv", len(data))]
    assert download(workspace, "/reports/q1.csv") == data  # served from the spool
    assert download(workspace, "/reports/q1.csv", 300_001, 1000) == data[300_001:301_001]
    ingest_version(services, _current_version(services, workspace, "/reports/q1.csv"))
    assert download(workspace, "/reports/q1.csv") == data  # now from the store


def test_abort_leaves_nothing(workspace, services):
    up = workspace.open_write("/half.bin")
    up.write(b"x" * 100_000)
    up.abort()
    with pytest.raises(NotFound):
        workspace.stat("/half.bin")
    assert list(services.spool.tmp.iterdir()) == [] or all(
        p.stat().st_size == 0 for p in services.spool.tmp.iterdir())


def test_rename_remove_and_errors(workspace):
    upload(workspace, "/a.txt", b"hello")
    workspace.rename("/a.txt", "/b.txt")
    assert download(workspace, "/b.txt") == b"hello"
    with pytest.raises(NotFound):
        workspace.stat("/a.txt")
    workspace.make_dir("/d")
    with pytest.raises(AlreadyExists):
        workspace.make_dir("/d")
    with pytest.raises(IsAFolder):
        workspace.open_write("/d")
    with pytest.raises(InvalidName):
        workspace.make_dir("/Shared")
    with pytest.raises(PermissionDenied):
        workspace.open_write("/Audit Logs/x.csv")
    workspace.remove("/b.txt")
    with pytest.raises(NotFound):
        workspace.stat("/b.txt")


def _current_version(services, ws, path):
    return ws.stat(path).version


def test_reading_at_the_very_end_gives_nothing(workspace, services):
    from common.cipherstream import CHUNK_SIZE
    data = os.urandom(CHUNK_SIZE * 2)
    upload(workspace, "/exact.bin", data)
    ingest_version(services, _current_version(services, workspace, "/exact.bin"))
    assert download(workspace, "/exact.bin", len(data)) == b""
    assert download(workspace, "/exact.bin", len(data) - 1) == data[-1:]


def test_a_bucket_with_versioning_is_refused(services, settings):
    import dataclasses
    from minio.versioningconfig import ENABLED, VersioningConfig
    from common.errors import ConfigError
    from common.storage import ObjectStore
    store = ObjectStore(dataclasses.replace(settings, s3_bucket=f"versioned-{os.urandom(4).hex()}"))
    store.client.make_bucket(store.bucket)
    try:
        store.client.set_bucket_versioning(store.bucket, VersioningConfig(ENABLED))
        with pytest.raises(ConfigError, match="versioning"):
            store.ensure_bucket()
    finally:
        store.client.remove_bucket(store.bucket)


def test_two_creates_of_one_name_at_once_give_one_folder_and_one_clear_error(workspace):
    import threading
    from common.errors import AlreadyExists
    outcomes, barrier = [], threading.Barrier(6)

    def make():
        barrier.wait()
        try:
            workspace.make_dir("/race")
            outcomes.append("ok")
        except AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=make) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exists"] * 5 + ["ok"]


def test_a_database_outage_is_a_transient_error(services, account):
    import dataclasses
    from common.errors import TransientError
    from common.services import Services
    from sqlalchemy.engine import make_url
    url = make_url(services.settings.database_url).set(port=1)  # nothing listens there
    broken = Services(dataclasses.replace(services.settings, database_url=url.render_as_string(False)))
    ws = admin_workspace(broken, account, door="sftp")
    with pytest.raises(TransientError):
        ws.list_dir("/")
    broken.close()


def test_a_full_spool_fails_the_upload_and_publishes_nothing(workspace, services):
    """A write cut short (here by RLIMIT_FSIZE, as ENOSPC would) never becomes a durable file."""
    import resource
    import signal
    from common.errors import TransientError
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    ready_before = set(services.spool.ready_keys())
    up = workspace.open_write("/too-big.bin")
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, old_limit[1]))
    try:
        with pytest.raises(TransientError):
            up.write(os.urandom(500_000))
            up.commit()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    up.abort()
    with pytest.raises(NotFound):
        workspace.stat("/too-big.bin")
    assert set(services.spool.ready_keys()) == ready_before


def _concurrently(*calls):
    import threading
    results, barrier = {}, threading.Barrier(len(calls))

    def run(i, call):
        barrier.wait()
        try:
            results[i] = ("ok", call())
        except Exception as exc:  # noqa: BLE001 (the outcome is what the test compares)
            results[i] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(calls))]


def test_crossing_moves_never_make_a_cycle(workspace, services):
    from sqlalchemy import text
    for round_no in range(8):
        a, b = f"/a{round_no}", f"/b{round_no}"
        workspace.make_dir(a)
        workspace.make_dir(b)
        _concurrently(lambda: workspace.rename(a, f"{b}/x"), lambda: workspace.rename(b, f"{a}/y"))
        names = {e.name for e in workspace.list_dir("/")}
        assert len({a[1:], b[1:]} & names) == 1  # exactly one moved into the other
    with services.db.session() as session:
        cyclic = session.execute(text("""
            WITH RECURSIVE up(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM nodes WHERE account_id = :a
                UNION ALL SELECT u.id, n.parent_id, u.depth + 1 FROM up u JOIN nodes n ON n.id = u.parent_id
                WHERE u.depth < 100)
            SELECT count(*) FROM up WHERE depth >= 100"""), {"a": workspace.me.account_id}).scalar()
    assert cyclic == 0


def test_removing_an_empty_folder_never_takes_an_acknowledged_upload(workspace):
    from common.errors import NotEmpty
    for round_no in range(10):
        folder = f"/r{round_no}"
        workspace.make_dir(folder)
        up = workspace.open_write(f"{folder}/f.bin")
        up.write(b"acknowledged")
        (commit, _), (removal, removal_error) = _concurrently(up.commit, lambda: workspace.remove(folder, recursive=False))
        if commit == "ok":
            assert removal == "error" and isinstance(removal_error, NotEmpty)
            assert download(workspace, f"{folder}/f.bin") == b"acknowledged"
        else:
            assert removal == "ok"


def test_a_pinned_read_refuses_a_replaced_file_and_an_upload_keeps_its_time(workspace):
    from datetime import datetime, timezone
    from common.errors import FileReplaced
    first = upload(workspace, "/pinned.txt", b"first content")
    assert download(workspace, "/pinned.txt") == b"first content"
    assert b"".join(workspace.open_read("/pinned.txt", 6, version=first.version)) == b"content"
    up = workspace.open_write("/pinned.txt")
    up.write(b"second")
    stamp = datetime(2020, 5, 17, 8, 30, tzinfo=timezone.utc)
    up.set_mtime(stamp)
    second = up.commit()
    assert second.version != first.version and second.mtime == stamp
    assert workspace.stat("/pinned.txt").mtime == stamp
    with pytest.raises(FileReplaced):
        workspace.open_read("/pinned.txt", 6, version=first.version)
