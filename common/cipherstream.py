"""Streaming content encryption (format version 1) and the fingerprints taken as content passes.

Every file's content is stored as one object in this layout (all integers big-endian)::

    header   magic  b"SDCF"                          4 bytes
             format version (1)                     1 byte
             key version                            4 bytes  version of the account's
                                                             file-wrapping key that wrapped
                                                             this file's key (for rotation)
             chunk size C (plaintext bytes)         4 bytes
             nonce prefix (random per file)         7 bytes
    chunk 0  AES-256-GCM ciphertext + 16-byte tag
    ...
    chunk n-1

The plaintext is cut into chunks of exactly C bytes, except the last, which holds 1..C bytes;
an empty file is one empty final chunk, so there are n = max(1, ceil(P / C)) chunks and the
object is 20 + P + 16 * n bytes long: the ciphertext size is a pure function of the plaintext
size (``ciphertext_size``) and chunk i starts at byte 20 + i * (C + 16) (``chunk_position``).

Chunk i is sealed with the STREAM construction (as minio DARE v2 and Tink's streaming AEAD):

    nonce = prefix (7) || i (4) || final (1)          final is 1 on the last chunk, else 0
    AAD   = header (20) || len(file_id) (2) || file_id || i (4) || final (1)

so a chunk cannot be moved to another position, dropped, duplicated or replayed in another
file (the file id, e.g. the version's UUID, is bound in), the header cannot be altered, and the
stream cannot be truncated: only the real last chunk carries the final flag, and a reader
treats a chunk as final exactly when the object ends after it.  Each file has its own random
256-bit key, so nonces never repeat under one key.  Limits: C <= 16 MiB (readers refuse larger
headers, as they buffer one chunk), at most 2**32 chunks, key version < 2**32, file id < 64 KiB.
The chunk size travels in the header, so it can change without a new format version.

Readers release no plaintext of a chunk before its tag verifies, and raise ``IntegrityError``
on any mismatch.  A whole read can also be checked against the recorded fingerprints: the
last chunk is then held back until they match.  A ranged read (``decrypt_range``) fetches and
decrypts only the chunks holding the range, plus one byte that tells whether the last of them
is the final chunk.

Fingerprints: MD5 and SHA-256 of the plaintext (the customer-facing ones) and SHA-256 of the
whole object (what ingest compares after uploading to the store) are computed as the content
passes.  MD5, the slowest, runs on a worker thread while the caller's thread encrypts and
computes both SHA-256 chunk by chunk (hashlib and AESGCM release the GIL on large buffers);
see docs/benchmarks.md.
"""
from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"SDCF"
FORMAT_VERSION = 1
CHUNK_SIZE = 256 * 1024  # chosen by bench/crypto.py, see docs/benchmarks.md
MAX_CHUNK_SIZE = 16 * 1024 * 1024  # a reader buffers one chunk, so a header may not ask for more
KEY_SIZE = 32
TAG_SIZE = 16
PREFIX_SIZE = 7
MAX_CHUNKS = 2**32  # the chunk index is 4 bytes of the nonce

_HEADER = struct.Struct(">4sBII7s")
HEADER_SIZE = _HEADER.size
_POSITION = struct.Struct(">IB")
_FILE_ID_LENGTH = struct.Struct(">H")

# Below this many bytes a hand-off to a worker thread costs more than the hashing it saves.
_THREADED_HASH_MIN = 64 * 1024
# A verifying reader hands plaintext to MD5 in batches of this size, to wake the worker less.
_VERIFY_BATCH = 1024 * 1024

Fetch = Callable[[int, int | None], Iterable[bytes]]


class IntegrityError(ValueError):
    """Content failed authentication: tampered, truncated, reordered, misplaced or wrong key."""


@dataclass(frozen=True)
class Header:
    """The parsed header of a content object."""

    version: int
    key_version: int
    chunk_size: int
    prefix: bytes
    length: int


@dataclass(frozen=True)
class ChunkPosition:
    """Where the chunk holding a plaintext offset lives in the ciphertext."""

    index: int  # the chunk holding the offset
    cipher_start: int  # the first ciphertext byte of that chunk
    skip: int  # plaintext bytes of that chunk that come before the offset


def read_header(data: bytes) -> Header:
    """Parse the header at the start of ``data`` without decrypting anything."""
    if len(data) < HEADER_SIZE:
        raise IntegrityError("content header truncated")
    magic, version, key_version, chunk_size, prefix = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise IntegrityError("not a Sealdrop content object")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"unsupported content format version {version}")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError("content header has an invalid chunk size")
    return Header(version, key_version, chunk_size, prefix, HEADER_SIZE)


def ciphertext_size(plain_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Return the size of the object that ``plain_size`` bytes of content encrypt to."""
    if plain_size < 0:
        raise ValueError("plain_size must not be negative")
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_SIZE + plain_size + TAG_SIZE * chunks


def chunk_offset(index: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Return the ciphertext offset at which chunk ``index`` starts."""
    return HEADER_SIZE + index * (chunk_size + TAG_SIZE)


def chunk_position(plain_offset: int, chunk_size: int = CHUNK_SIZE) -> ChunkPosition:
    """Return the chunk holding ``plain_offset`` and where a ranged read must start fetching."""
    if plain_offset < 0:
        raise ValueError("offset must not be negative")
    index = plain_offset // chunk_size
    return ChunkPosition(index, chunk_offset(index, chunk_size), plain_offset - index * chunk_size)


class _ChunkSealer:
    """AES-256-GCM over one file's chunks: builds each chunk's nonce and AAD."""

    def __init__(self, key: bytes, file_id: bytes, header: bytes, prefix: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("content keys are 256-bit")
        if len(file_id) > 0xFFFF:
            raise ValueError("file_id is too long")
        self._aead = AESGCM(key)
        self._prefix = bytes(prefix)
        self._aad_prefix = bytes(header) + _FILE_ID_LENGTH.pack(len(file_id)) + bytes(file_id)

    def _nonce_and_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        position = _POSITION.pack(index, final)
        return self._prefix + position, self._aad_prefix + position

    def seal_into(self, index: int, final: bool, plain: memoryview, out: memoryview) -> None:
        if index >= MAX_CHUNKS:
            raise ValueError("content too large for the chunk size")
        nonce, aad = self._nonce_and_aad(index, final)
        self._aead.encrypt_into(nonce, plain, aad, out)

    def open(self, index: int, final: bool, sealed: bytes | memoryview) -> bytes:
        if len(sealed) < TAG_SIZE:
            raise IntegrityError(f"content chunk {index} truncated")
        if index >= MAX_CHUNKS:
            raise IntegrityError("content has more chunks than the format allows")
        nonce, aad = self._nonce_and_aad(index, final)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise IntegrityError(f"content chunk {index} failed authentication") from None


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _hash_pool() -> ThreadPoolExecutor:
    # Created on first use, and again in a forked child, whose copy has no live threads.
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            workers = max(2, os.cpu_count() or 2)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="cipherstream-hash")
            _pool_pid = os.getpid()
        return _pool


class HashLane:
    """One running hash, updated in order, on a worker thread when the data is large."""

    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)
        self._pending: Future | None = None

    def feed(self, views: list) -> None:
        """Add views to the hash, which may still be reading them after feed returns."""
        self.wait()  # updates must reach the hash in stream order
        if sum(len(view) for view in views) < _THREADED_HASH_MIN:
            self.update(views)
        else:
            self._pending = _hash_pool().submit(self.update, views)

    def update(self, views: list) -> None:
        """Add views to the hash now, on the calling thread (`feed` keeps stream order: use it)."""
        for view in views:
            self._hash.update(view)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def digest(self) -> bytes:
        self.wait()
        return self._hash.digest()


class ContentEncryptor:
    """Encrypts one file's content as it streams in and fingerprints it on the way.

    The outputs of ``update`` and ``finalize``, concatenated, are the whole object (the first
    output starts with the header).  At most one chunk of plaintext is buffered.
    """

    def __init__(
        self,
        key: bytes,
        file_id: bytes,
        key_version: int,
        *,
        chunk_size: int = CHUNK_SIZE,
        fingerprints: bool = True,
        nonce_prefix: bytes | None = None,
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk_size out of range")
        if not 0 <= key_version <= 0xFFFFFFFF:
            raise ValueError("key_version must fit in 32 bits")
        prefix = os.urandom(PREFIX_SIZE) if nonce_prefix is None else bytes(nonce_prefix)
        if len(prefix) != PREFIX_SIZE:
            raise ValueError(f"nonce_prefix must be {PREFIX_SIZE} bytes")
        self._header = _HEADER.pack(MAGIC, FORMAT_VERSION, key_version, chunk_size, prefix)
        self._sealer = _ChunkSealer(key, file_id, self._header, prefix)
        self._chunk_size = chunk_size
        self._pending = bytearray(chunk_size)
        self._spare: bytearray | None = None
        self._filled = 0
        self._index = 0
        self._header_sent = False
        self._finished = False
        self._digests: tuple[bytes, ...] | None = None
        # MD5, the slowest of the three hashes, trails behind on a worker thread; the two
        # SHA-256 run here chunk by chunk, while the chunk is still in the CPU cache.
        self._fingerprints = fingerprints
        self._md5 = HashLane("md5")
        self._sha256 = hashlib.sha256()
        self._cipher_sha256 = hashlib.sha256()
        self.plain_size = 0
        self.cipher_size = 0

    @property
    def header(self) -> bytes:
        """The header bytes, as they start the first output."""
        return self._header

    def update(self, data: bytes) -> bytearray:
        """Take more plaintext; return the ciphertext of every chunk it completes."""
        self._ensure_open()
        view = memoryview(data).cast("B")
        self.plain_size += len(view)
        chunks, rest = self._full_chunks(view)
        out = self._seal(chunks)
        self._pending[self._filled : self._filled + len(rest)] = rest
        self._filled += len(rest)
        if not isinstance(view.obj, bytes):
            # The caller may overwrite a mutable buffer once we return (readinto loops do):
            # MD5 must be done with it.  It usually is, being faster than the other three.
            self._md5.wait()
        return out

    def _full_chunks(self, view: memoryview) -> tuple[list[memoryview], memoryview]:
        # A full chunk is sealed only once a byte after it is seen, since the last chunk is
        # sealed with the final flag: that is why one chunk stays buffered.
        size, pos, chunks = self._chunk_size, 0, []
        if self._filled and len(view):
            pos = min(size - self._filled, len(view))
            self._pending[self._filled : self._filled + pos] = view[:pos]
            self._filled += pos
            if self._filled == size and pos < len(view):
                chunks.append(self._retire_pending())
        while len(view) - pos > size:
            chunks.append(view[pos : pos + size])
            pos += size
        return chunks, view[pos:]

    def _retire_pending(self) -> memoryview:
        # Two buffers take turns, as MD5 may still be reading the one just sealed.  It is done
        # with it before the other is retired in turn: feeding the MD5 lane waits for its
        # previous job, and the pending buffer is only written after _seal has fed the lane.
        full = memoryview(self._pending)[: self._filled]
        spare = self._spare if self._spare is not None else bytearray(self._chunk_size)
        self._pending, self._spare, self._filled = spare, self._pending, 0
        return full

    def finalize(self) -> bytearray:
        """Seal the last chunk, return its ciphertext and make the fingerprints available."""
        self._ensure_open()
        out = self._seal([self._retire_pending()], final=True)
        self._finished = True
        self._pending = self._spare = None
        if self._fingerprints:
            digests = self._md5.digest(), self._sha256.digest(), self._cipher_sha256.digest()
            self._digests = digests
        return out

    def _seal(self, chunks: list[memoryview], final: bool = False) -> bytearray:
        lead = b"" if self._header_sent else self._header
        out = bytearray(len(lead) + sum(len(chunk) + TAG_SIZE for chunk in chunks))
        target = memoryview(out)
        target[: len(lead)] = lead
        hashing = self._fingerprints
        if hashing:
            self._md5.feed(chunks)
            self._cipher_sha256.update(lead)
        pos = len(lead)
        for number, chunk in enumerate(chunks):
            end = pos + len(chunk) + TAG_SIZE
            is_final = final and number == len(chunks) - 1
            self._sealer.seal_into(self._index, is_final, chunk, target[pos:end])
            if hashing:
                self._sha256.update(chunk)
                self._cipher_sha256.update(target[pos:end])
            self._index += 1
            pos = end
        self._header_sent = True
        self.cipher_size += len(out)
        return out

    def _ensure_open(self) -> None:
        if self._finished:
            raise RuntimeError("encryptor already finalized")

    def _digest(self, which: int) -> bytes:
        if self._digests is None:
            raise RuntimeError("fingerprints are available after finalize() when enabled")
        return self._digests[which]

    @property
    def md5(self) -> bytes:
        """MD5 of the plaintext, after finalize()."""
        return self._digest(0)

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the plaintext, after finalize()."""
        return self._digest(1)

    @property
    def cipher_sha256(self) -> bytes:
        """SHA-256 of the whole object, header included, after finalize()."""
        return self._digest(2)


def _frames(blocks: Iterable[bytes], frame_size: int) -> Iterator[tuple[bytes | memoryview, bool]]:
    """Cut blocks of any size into sealed chunks, flagged final when the stream ends there."""
    held = None  # a complete frame: final or not depends on whether any byte follows
    partial = bytearray()
    for block in blocks:
        view = memoryview(block).cast("B")
        pos = 0
        while pos < len(view):
            if held is not None:
                yield held, False
                held = None
            if partial or len(view) - pos < frame_size:
                take = min(frame_size - len(partial), len(view) - pos)
                partial += view[pos : pos + take]
                pos += take
                if len(partial) == frame_size:
                    held, partial = partial, bytearray()
            else:
                held = view[pos : pos + frame_size]
                pos += frame_size
    if held is not None:
        yield held, True
    elif partial:
        yield partial, True


def _open_chunks(
    frames: Iterable[tuple[bytes | memoryview, bool]], sealer: _ChunkSealer, first_index: int
) -> Iterator[tuple[int, bool, bytes]]:
    index = first_index
    for frame, final in frames:
        yield index, final, sealer.open(index, final, frame)
        index += 1


def _verify_fingerprints(
    chunks: Iterator[tuple[int, bool, bytes]], md5: bytes, sha256: bytes
) -> Iterator[tuple[int, bool, bytes]]:
    md5_lane, sha256_hash = HashLane("md5"), hashlib.sha256()
    batch: list[bytes] = []
    batched = 0
    for index, final, plain in chunks:
        sha256_hash.update(plain)
        batch.append(plain)  # plain is immutable: MD5 may trail behind the reader
        batched += len(plain)
        if final or batched >= _VERIFY_BATCH:
            md5_lane.feed(batch)
            batch, batched = [], 0
        if final and (md5_lane.digest() != md5 or sha256_hash.digest() != sha256):
            raise IntegrityError("content fingerprints do not match the recorded ones")
        yield index, final, plain


def _split_header(blocks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    blocks = iter(blocks)
    head = bytearray()
    for block in blocks:
        head += block
        if len(head) >= HEADER_SIZE:
            break
    return bytes(head[:HEADER_SIZE]), chain([bytes(head[HEADER_SIZE:])], blocks)


def decrypt(
    blocks: Iterable[bytes],
    key: bytes,
    file_id: bytes,
    *,
    header: bytes | None = None,
    first_chunk: int = 0,
    expected_md5: bytes | None = None,
    expected_sha256: bytes | None = None,
) -> Iterator[bytes]:
    """Yield the plaintext chunk by chunk, each only after its tag verifies.

    ``blocks`` is the whole object, or, when ``header`` is given, the ciphertext from chunk
    ``first_chunk`` to the end.  With expected digests (whole reads only) the last chunk is
    held back until MD5 and SHA-256 of the plaintext match them.  Raises IntegrityError.
    """
    expecting = expected_md5 is not None or expected_sha256 is not None
    if (expected_md5 is None) != (expected_sha256 is None):
        raise ValueError("pass both expected digests or neither")
    if first_chunk and (header is None or expecting):
        raise ValueError("a read from a later chunk needs the header and cannot verify digests")
    if header is not None:
        read_header(header)  # fail early on a wrong header
    return _decrypt(blocks, key, file_id, header, first_chunk, (expected_md5, expected_sha256))


def _decrypt(
    blocks: Iterable[bytes],
    key: bytes,
    file_id: bytes,
    header: bytes | None,
    first_chunk: int,
    expected: tuple[bytes | None, bytes | None],
) -> Iterator[bytes]:
    if header is None:
        header, blocks = _split_header(blocks)
    info = read_header(header)
    sealer = _ChunkSealer(key, file_id, header[: info.length], info.prefix)
    chunks = _open_chunks(_frames(blocks, info.chunk_size + TAG_SIZE), sealer, first_chunk)
    if expected[0] is not None:
        chunks = _verify_fingerprints(chunks, *expected)
    released = False
    for _, _, plain in chunks:
        released = True
        yield plain
    if not released:
        raise IntegrityError("content has no final chunk")


def decrypt_range(
    key: bytes,
    file_id: bytes,
    header: bytes,
    fetch: Fetch,
    *,
    offset: int = 0,
    length: int | None = None,
) -> Iterator[bytes]:
    """Yield exactly the plaintext bytes [offset, offset + length), or to the end.

    ``fetch(start, end)`` returns the ciphertext bytes [start, end) of the object (to its end
    when ``end`` is None; nothing when ``start`` is at or past the end) as blocks of any size,
    so a store reader can do an HTTP Range request and a spool reader a seek.  Only the chunks
    holding the range are fetched and decrypted.  ``offset`` must not exceed the plaintext
    size, which the caller knows.  Raises IntegrityError.
    """
    if length is not None and length < 0:
        raise ValueError("length must not be negative")
    info = read_header(header)
    start = chunk_position(offset, info.chunk_size)
    if length == 0:
        return iter(())
    sealer = _ChunkSealer(key, file_id, header[: info.length], info.prefix)
    end = None
    if length is not None:
        last = (offset + length - 1) // info.chunk_size
        end = chunk_offset(last + 1, info.chunk_size) + 1  # one byte more: is chunk `last` final?
    return _plaintext_range(sealer, fetch, info.chunk_size, start, end, length)


def _plaintext_range(
    sealer: _ChunkSealer,
    fetch: Fetch,
    chunk_size: int,
    start: ChunkPosition,
    end: int | None,
    length: int | None,
) -> Iterator[bytes]:
    frames = _frames(fetch(start.cipher_start, end), chunk_size + TAG_SIZE)
    skip, wanted, released = start.skip, length, False
    for _, _, plain in _open_chunks(frames, sealer, start.index):
        released = True
        piece = plain[skip:] if wanted is None else plain[skip : skip + wanted]
        skip = 0  # only the first chunk starts before the offset
        if piece:
            yield piece
        if wanted is not None:
            wanted -= len(piece)
            if wanted == 0:
                return
    if not released:
        _check_ends_before(sealer, fetch, start.index, chunk_size)


def _check_ends_before(sealer: _ChunkSealer, fetch: Fetch, index: int, chunk_size: int) -> None:
    # Nothing at chunk `index`: legitimate only when chunk `index - 1` is the final one (an
    # offset at the very end of a file of whole chunks); otherwise the object was truncated.
    if index == 0:
        raise IntegrityError("content has no final chunk")
    previous = fetch(chunk_offset(index - 1, chunk_size), chunk_offset(index, chunk_size))
    frames = list(_frames(previous, chunk_size + TAG_SIZE))
    if len(frames) != 1:
        raise IntegrityError("content truncated before the requested offset")
    sealer.open(index - 1, True, frames[0][0])
