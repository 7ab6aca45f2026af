"""File content streams: encrypted into the spool as it arrives, decrypted as it leaves.

`ContentWriter` is the write half of an upload (the Workspace adds the database commit):
plaintext goes through the streaming cipher into an opaque spool temp file and is never held
whole or written in clear. `ContentReader` streams a stored version back from the spool (while
it waits for ingest) or the object store, checking every chunk's tag, and on a whole read also
the recorded MD5 and SHA-256.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

from common import cipherstream
from common.cipherstream import HEADER_SIZE
from common.errors import IntegrityFailure, TransientError
from common.storage import ObjectStore, Spool, new_storage_key

log = logging.getLogger(__name__)

LOST_CONTENT = "The file's content was lost before it was stored; your administrators have been told"


@dataclass(frozen=True)
class Fingerprints:
    size: int
    md5: bytes
    sha256: bytes
    cipher_size: int
    cipher_sha256: bytes


class ContentWriter:
    """Encrypts plaintext into a spool temp file; `finish` publishes it, `abort` discards it."""

    def __init__(self, spool: Spool, file_key: bytes, version_id: uuid.UUID, key_version: int):
        self.spool = spool
        self.version_id = version_id
        self.storage_key = new_storage_key()
        self._encryptor = cipherstream.ContentEncryptor(file_key, version_id.bytes, key_version)
        self._temp, self._handle = spool.create_temp()
        self._state = "open"

    def write(self, data: bytes) -> int:
        if self._state != "open":
            raise ValueError("write to a closed upload")
        if data:
            try:
                self._handle.write(self._encryptor.update(data))
            except OSError as exc:  # a full or failing spool volume
                raise TransientError("The spool cannot take more data now; try again later") from exc
        return len(data)

    @property
    def size(self) -> int:
        return self._encryptor.plain_size

    def finish(self) -> Fingerprints:
        """Seal the last chunk and make the ciphertext durable under its storage key."""
        if self._state != "open":
            raise ValueError("upload already finished")
        try:
            self._handle.write(self._encryptor.finalize())
        except OSError as exc:
            raise TransientError("The spool cannot take more data now; try again later") from exc
        self.spool.publish(self._temp, self._handle, self.storage_key, self._encryptor.cipher_size)
        self._state = "published"
        enc = self._encryptor
        return Fingerprints(enc.plain_size, enc.md5, enc.sha256, enc.cipher_size, enc.cipher_sha256)

    def abort(self) -> None:
        """Discard whatever was received; safe to call more than once."""
        if self._state == "open":
            self._handle.close()
            self._temp.unlink(missing_ok=True)
        elif self._state == "published":
            self.spool.remove(self.storage_key)
        self._state = "aborted"


@dataclass(frozen=True)
class StoredContent:
    """What a reader needs to know about one version (from its database row)."""

    version_id: uuid.UUID
    storage_key: str
    size: int
    md5: bytes
    sha256: bytes
    state: str
    spool_id: str


class ContentReader:
    """Streams one version's plaintext, from the local spool or the object store."""

    def __init__(self, content: StoredContent, file_key: bytes, spool: Spool, store: ObjectStore,
                 *, refresh_state: Callable[[], str | None] | None = None, wait_seconds: float = 30.0):
        self.content = content
        self._key = file_key
        self._fetch = self._choose_source(spool, store, refresh_state, wait_seconds)

    def read(self, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Plaintext [offset, offset+length); a whole read also proves the fingerprints."""
        if offset < 0 or offset > self.content.size:
            raise ValueError("offset is outside the file")
        if offset == self.content.size and offset > 0:
            return iter(())  # nothing to send; the store would answer a range past the end with 416
        return self._guard(self._read(offset, length))

    def _read(self, offset: int, length: int | None) -> Iterator[bytes]:
        file_id = self.content.version_id.bytes
        if offset == 0 and (length is None or length >= self.content.size):
            return cipherstream.decrypt(self._fetch(0, None), self._key, file_id,
                                        expected_md5=self.content.md5,
                                        expected_sha256=self.content.sha256)
        header = b"".join(self._fetch(0, HEADER_SIZE))
        return cipherstream.decrypt_range(self._key, file_id, header, self._fetch,
                                          offset=offset, length=length)

    @staticmethod
    def _guard(blocks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from blocks
        except cipherstream.IntegrityError as exc:
            raise IntegrityFailure("The file failed its integrity check; the transfer was stopped") from exc

    def _choose_source(self, spool: Spool, store: ObjectStore, refresh_state, wait_seconds):
        key, state = self.content.storage_key, self.content.state
        own = self.content.spool_id == spool.spool_id
        if own and state == "spooled" and spool.has(key):
            return lambda start, end: _spool_or_store(spool, store, key, start, end)
        # Spooled on another host: wait (bounded) for its ingest to reach the store. Missing
        # from our own spool, it was either stored a moment ago or lost: one look tells.
        deadline, looked = time.monotonic() + (0 if own else wait_seconds), False
        while True:
            if state == "stored":
                return lambda start, end: store.read(key, start, end)
            if state == "failed":
                raise IntegrityFailure(LOST_CONTENT)
            if refresh_state is None or (looked and time.monotonic() >= deadline):
                raise TransientError("The file is still being stored; try again in a moment")
            if looked:
                time.sleep(0.5)
            state, looked = refresh_state(), True


def _spool_or_store(spool: Spool, store: ObjectStore, key: str, start: int, end: int | None):
    # Ingest may remove the spool file between our check and the read: fall back to the store.
    try:
        yield from spool.read(key, start, end)
    except FileNotFoundError:
        yield from store.read(key, start, end)
