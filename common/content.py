"""File content streams: encrypted into the spool as it arrives, decrypted as it leaves.

`ContentWriter` is the write half of an upload (the Workspace adds the database commit):
plaintext goes through the streaming cipher into an opaque spool temp file and is never held
whole or written in clear. `ContentReader` streams a stored version back from the spool (while
it waits for ingest) or the object store, checking every chunk's tag, and on a whole read also
the recorded MD5 and SHA-256.
"""
from __future__ import annotations

import logging
import queue
import threading
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
# Plaintext chunks (256 KiB each) a reader's thread may have ready before the sender takes
# them: enough to keep fetching, decrypting and checking busy while a block is sent.
READ_AHEAD_CHUNKS = 4
# Read-ahead threads a process runs at once; a download beyond them reads on its own thread.
READ_AHEAD_THREADS = 64
_read_ahead_slots = threading.BoundedSemaphore(READ_AHEAD_THREADS)


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
        return self._guard(ReadAhead(self._read(offset, length)))

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


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class ReadAhead:
    """Runs a block iterator on a thread of its own, a few blocks ahead of its reader.

    Fetching from the store, decrypting and checking the fingerprints of the next blocks then
    overlap with the protocol sending this one (the socket, AES-GCM and hashlib release the
    GIL). Memory stays bounded by `depth` blocks. The thread starts at the first `next()`,
    ends with the stream, and stops within a moment once the reader closes or drops it,
    closing the source (which releases its store connection).
    """

    def __init__(self, blocks: Iterator[bytes], depth: int = READ_AHEAD_CHUNKS):
        self._source = blocks
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inline = False
        self._done = False

    def __iter__(self) -> "ReadAhead":
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        if self._thread is None:
            if self._inline or not _read_ahead_slots.acquire(blocking=False):
                self._inline = True  # every slot taken: this download reads as it sends
                return next(self._source)
            # The thread holds only the queue and the event, never self: dropping the reader
            # lets __del__ stop it.
            thread = threading.Thread(target=_produce, args=(self._source, self._queue, self._stop),
                                      name="read-ahead", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                _read_ahead_slots.release()
                self.close()
                raise
            self._thread, self._source = thread, None
        item = self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self._done = True
            if item is _END:
                raise StopIteration
            raise item.exc
        return item

    def close(self) -> None:
        self._done = True
        self._stop.set()
        if self._source is not None:  # never started
            source, self._source = self._source, None
            getattr(source, "close", lambda: None)()

    def __del__(self):
        self.close()


def _produce(blocks: Iterator[bytes], ready: queue.Queue, stop: threading.Event) -> None:
    try:
        for block in blocks:
            if not _offer(ready, block, stop):
                return
        _offer(ready, _END, stop)
    except BaseException as exc:  # noqa: BLE001 (handed to the reader, raised there)
        _offer(ready, _Failure(exc), stop)
    finally:
        getattr(blocks, "close", lambda: None)()
        _read_ahead_slots.release()


def _offer(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put item for the reader; False once the reader has gone."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.25)
            return True
        except queue.Full:
            continue
    return False
