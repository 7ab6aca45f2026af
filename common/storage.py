"""Where ciphertext lives: the spool on this host's volume, and the S3 object store.

Only ciphertext ever reaches either. Spool files and objects are named by random storage keys,
never by file names. An upload is written to `tmp/` under an opaque name, fsynced, then renamed
into `ready/` (atomic on one volume), so a crash never leaves a half file looking complete.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule
from minio.sse import SseS3

from common.config import Settings
from common.errors import ConfigError, IntegrityFailure, TransientError

log = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024
PART_SIZE = 16 * 1024 * 1024


def new_storage_key() -> str:
    """A random name for a spool file and its object: it says nothing about the file."""
    return secrets.token_hex(16)


class Spool:
    """This host's durable spool of committed and in-progress ciphertext."""

    def __init__(self, root: Path, spool_id: str):
        self.root = Path(root)
        self.spool_id = spool_id
        self.tmp = self.root / "tmp"
        self.ready = self.root / "ready"

    def ensure(self) -> None:
        for folder in (self.root, self.tmp, self.ready):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def create_temp(self) -> tuple[Path, BinaryIO]:
        """A new, exclusive, owner-only temp file for ciphertext being received."""
        self.ensure()
        path = self.tmp / secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return path, os.fdopen(fd, "wb")  # buffered: a write either completes or raises

    def publish(self, temp: Path, handle: BinaryIO, storage_key: str, expected_size: int) -> None:
        """Make a finished temp file durable under its storage key (fsync, rename, fsync dir).

        The size is checked after the fsync, so a full volume can never publish a short file.
        """
        handle.flush()
        os.fsync(handle.fileno())
        written = os.fstat(handle.fileno()).st_size
        handle.close()
        if written != expected_size:
            raise TransientError("The spool could not hold the whole file; try again later")
        os.replace(temp, self.path(storage_key))
        _fsync_dir(self.ready)

    def path(self, storage_key: str) -> Path:
        if not storage_key.isalnum():
            raise ValueError("storage keys are alphanumeric")
        return self.ready / storage_key

    def has(self, storage_key: str) -> bool:
        return self.path(storage_key).exists()

    def remove(self, storage_key: str) -> None:
        self.path(storage_key).unlink(missing_ok=True)

    def read(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Ciphertext bytes [start, end) of a spooled file, in blocks."""
        with open(self.path(storage_key), "rb") as handle:
            handle.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                block = handle.read(READ_BLOCK if remaining is None else min(READ_BLOCK, remaining))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def stale_temps(self, older_than_seconds: float) -> list[Path]:
        """Temp files nobody has written for a while: abandoned uploads."""
        if not self.tmp.exists():
            return []
        cutoff = time.time() - older_than_seconds
        return [p for p in self.tmp.iterdir() if p.stat().st_mtime < cutoff]

    def ready_keys(self) -> list[str]:
        return [p.name for p in self.ready.iterdir()] if self.ready.exists() else []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoredObject:
    size: int


class ObjectStore:
    """The S3-compatible bucket, through the minio client."""

    def __init__(self, settings: Settings):
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        self.client = Minio(settings.s3_endpoint, access_key=settings.s3_access_key,
                            secret_key=settings.s3_secret_key, secure=settings.s3_secure,
                            http_client=http)
        self.bucket = settings.s3_bucket
        self.sse = SseS3() if settings.s3_sse == "s3" else None

    def ensure_bucket(self) -> None:
        """Create the bucket if missing; refuse one with versioning (deletion must be real)."""
        with _store_errors():
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            status = self.client.get_bucket_versioning(self.bucket).status
        if status == "Enabled":
            raise ConfigError("the bucket has versioning enabled: permanent deletion would not be real")
        self._abort_stale_multiparts()

    def _abort_stale_multiparts(self) -> None:
        # Parts of a killed multipart upload hold ciphertext and cost storage: let the store
        # drop them after a day. Stores without lifecycle support only get a warning.
        rule = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1))
        try:
            self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig([rule]))
        except S3Error as exc:
            log.warning("object store refused the multipart clean-up rule: %s", exc.code)

    def put(self, storage_key: str, source: BinaryIO, size: int) -> None:
        """Upload ciphertext (multipart for large objects); failed multiparts are aborted."""
        with _store_errors():
            self.client.put_object(self.bucket, storage_key, source, size, part_size=PART_SIZE,
                                   sse=self.sse, content_type="application/octet-stream")

    def stat(self, storage_key: str) -> StoredObject | None:
        try:
            with _store_errors():
                info = self.client.stat_object(self.bucket, storage_key)
        except _Missing:
            return None
        return StoredObject(size=info.size)

    def read(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Ciphertext bytes [start, end) of an object, in blocks, by HTTP Range."""
        length = 0 if end is None else max(0, end - start)
        if end is not None and length == 0:
            return
        with _store_errors():
            response = self.client.get_object(self.bucket, storage_key, offset=start, length=length)
        try:
            yield from response.stream(READ_BLOCK)
        except urllib3.exceptions.HTTPError as exc:
            raise TransientError("The object store is not reachable; try again later") from exc
        finally:
            response.close()
            response.release_conn()

    def sha256(self, storage_key: str) -> bytes:
        """SHA-256 of an object as stored (fixity and post-upload checks)."""
        digest = hashlib.sha256()
        for block in self.read(storage_key):
            digest.update(block)
        return digest.digest()

    def remove(self, storage_key: str) -> None:
        with _store_errors():
            self.client.remove_object(self.bucket, storage_key)


class _Missing(Exception):
    pass


class _store_errors:
    """Map store failures onto our vocabulary: outages are transient, 404 is `_Missing`."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            raise _Missing() from None
        if isinstance(exc, (S3Error, urllib3.exceptions.HTTPError, OSError)):
            log.warning("object store error: %s", type(exc).__name__)
            raise TransientError("The object store is not reachable; try again later") from exc
        return False


class HashingReader:
    """Reads a file while hashing what passes, so an upload proves what it sent."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def upload_verified(store: ObjectStore, spool: Spool, storage_key: str, *, cipher_size: int,
                    cipher_sha256: bytes) -> None:
    """Send a spooled file to the store and prove the store holds exactly those bytes."""
    with open(spool.path(storage_key), "rb") as handle:
        reader = HashingReader(handle)
        store.put(storage_key, reader, cipher_size)
    if reader.size != cipher_size or reader.digest.digest() != cipher_sha256:
        raise IntegrityFailure("Spooled ciphertext does not match its recorded fingerprint")
    stored = store.stat(storage_key)
    if stored is None or stored.size != cipher_size:
        raise TransientError("The object store did not keep the whole object; will retry")
