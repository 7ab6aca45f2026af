"""Where ciphertext lives: the spool on this host's volume, and the S3 object store.

Only ciphertext ever reaches either. Spool files and objects are named by random storage keys,
never by file names. An upload is written to `tmp/` under an opaque name, fsynced, then renamed
into `ready/` (atomic on one volume), so a crash never leaves a half file looking complete.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import threading
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
MULTIPART_RULE_ID = "abort-incomplete-uploads"
# Probe objects are named outside the storage-key alphabet, so they never meet a real key.
PROBE_PREFIX = "sse-probe-"


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
    encrypted: bool = False  # the store reports its own server-side encryption of the object


class ObjectStore:
    """The S3-compatible bucket, through the minio client.

    The bucket is checked (`ensure_bucket`) before the first write or removal of the process,
    and again after any outage: the store that comes back may not be the one that left.
    """

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
        self._checked = False
        self._check_lock = threading.Lock()

    def ensure_bucket(self) -> None:
        """Create the bucket if missing and check it suits us: versioning off (deletion must be
        real), the multipart clean-up rule in place, server-side encryption working if asked."""
        with self._errors():
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            status = self.client.get_bucket_versioning(self.bucket).status
        if status == "Enabled":
            raise ConfigError("the bucket has versioning enabled: permanent deletion would not be real")
        self._merge_multipart_rule()
        if self.sse is not None:
            self._check_encryption()
        self._checked = True

    def _ensure_checked(self) -> None:
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                self.ensure_bucket()

    def _errors(self) -> _store_errors:
        return _store_errors(on_outage=self._forget_check)

    def _forget_check(self) -> None:
        self._checked = False

    def _merge_multipart_rule(self) -> None:
        # Parts of a killed multipart upload hold ciphertext and cost storage: let the store
        # drop them after a day. The operator's own rules stay; ours is added or updated by its
        # id. Stores without lifecycle support only get a warning.
        rule = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=MULTIPART_RULE_ID,
                    abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1))
        with self._errors():
            try:
                current = self.client.get_bucket_lifecycle(self.bucket)
                rules = current.rules if current is not None else []
                if any(_same_multipart_rule(existing, rule) for existing in rules):
                    return
                others = [existing for existing in rules if existing.rule_id != MULTIPART_RULE_ID]
                self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig(others + [rule]))
            except S3Error as exc:
                log.warning("object store refused the multipart clean-up rule: %s", exc.code)

    def _check_encryption(self) -> None:
        """Write, stat and remove a small probe object with server-side encryption, so a store
        that cannot encrypt stops start-up instead of failing every ingest afterwards."""
        name = PROBE_PREFIX + secrets.token_hex(8)
        try:
            accepted = self._encrypted_write_accepted(name)
        finally:
            self._remove_probe(name)
        if not accepted:
            raise ConfigError("the object store does not apply server-side encryption (S3_SSE=s3): "
                              "give the store its key (SeaweedFS: s3.sse.key) or set S3_SSE=none")

    def _encrypted_write_accepted(self, name: str) -> bool:
        try:
            self._put_probe(name, self.sse)
        except (S3Error, urllib3.exceptions.HTTPError, OSError):
            # An outage, or a store that answers only encrypted writes with errors: a plain
            # write tells which (it raises TransientError in an outage).
            with self._errors():
                self._put_probe(name, None)
            return False
        stored = self.stat(name)
        return stored is not None and stored.encrypted

    def _put_probe(self, name: str, sse) -> None:
        self.client.put_object(self.bucket, name, io.BytesIO(b"probe"), 5, sse=sse,
                               content_type="application/octet-stream")

    def _remove_probe(self, name: str) -> None:
        try:
            self.client.remove_object(self.bucket, name)
        except (S3Error, urllib3.exceptions.HTTPError, OSError):
            pass  # left behind in an outage: a few bytes under a name no storage key can take

    def put(self, storage_key: str, source: BinaryIO, size: int) -> None:
        """Upload ciphertext (multipart for large objects); failed multiparts are aborted."""
        self._ensure_checked()
        with self._errors():
            self.client.put_object(self.bucket, storage_key, source, size, part_size=PART_SIZE,
                                   sse=self.sse, content_type="application/octet-stream")

    def meets_encryption_policy(self, stored: StoredObject) -> bool:
        """Whether an object is encrypted by the store as S3_SSE asks (always, when it asks none)."""
        return self.sse is None or stored.encrypted

    def stat(self, storage_key: str) -> StoredObject | None:
        try:
            with self._errors():
                info = self.client.stat_object(self.bucket, storage_key)
        except _Missing:
            return None
        encryption = (info.metadata or {}).get("x-amz-server-side-encryption")
        return StoredObject(size=info.size, encrypted=encryption in ("AES256", "aws:kms"))

    def read(self, storage_key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Ciphertext bytes [start, end) of an object, in blocks, by HTTP Range."""
        length = 0 if end is None else max(0, end - start)
        if end is not None and length == 0:
            return
        with self._errors():
            response = self.client.get_object(self.bucket, storage_key, offset=start, length=length)
        try:
            yield from response.stream(READ_BLOCK)
        except urllib3.exceptions.HTTPError as exc:
            self._forget_check()
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
        self._ensure_checked()
        with self._errors():
            self.client.remove_object(self.bucket, storage_key)


def _same_multipart_rule(existing: Rule, wanted: Rule) -> bool:
    """Whether a rule already in the bucket is ours, unchanged (then nothing needs writing)."""
    found, abort = existing.rule_filter, existing.abort_incomplete_multipart_upload
    whole_bucket = found is None or (found.prefix in ("", None) and found.and_operator is None
                                     and found.tag is None)
    days = wanted.abort_incomplete_multipart_upload.days_after_initiation
    return (existing.rule_id == wanted.rule_id and existing.status == wanted.status
            and whole_bucket and abort is not None and abort.days_after_initiation == days)


class _Missing(Exception):
    pass


class _store_errors:
    """Map store failures onto our vocabulary: outages are transient, 404 is `_Missing`."""

    def __init__(self, on_outage=None):
        self.on_outage = on_outage

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            raise _Missing() from None
        if isinstance(exc, (S3Error, urllib3.exceptions.HTTPError, OSError)):
            log.warning("object store error: %s", type(exc).__name__)
            if self.on_outage is not None:
                self.on_outage()
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
    if not store.meets_encryption_policy(stored):
        store.remove(storage_key)
        raise ConfigError("the object store did not encrypt an object although S3_SSE=s3")
