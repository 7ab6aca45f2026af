"""The key hierarchy, sealing and blind indexes.

Master keys (MASTER_KEYS, first active) wrap only keys stored in the database:
- the service key (purpose `service`): seals and blind-indexes user and account names;
- per account, a data key (`data`: that account's names, emails, secrets) and a versioned
  file-wrapping key (`file`: wraps each file's own random key).
Each stored key is 32 random bytes; its sealing and indexing sub-keys are derived with HKDF,
so one wrapped row serves both and rotation re-wraps it without touching what it sealed.
Streaming file content lives in common.cipherstream.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.config import MasterKey
from common.errors import ConfigError, IntegrityFailure
from common.models import WrappedKey

SEAL_VERSION = b"\x01"
CACHE_SECONDS = 300
NONCE_BYTES = 12


def token_hash(token: str) -> bytes:
    """What a table keeps of a bearer token (a session, a share link, a set-password link): its
    SHA-256; the token itself exists only with its holder."""
    return hashlib.sha256(token.encode()).digest()


def random_key() -> bytes:
    """A fresh 256-bit key."""
    return os.urandom(32)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: version byte, random nonce, ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    return SEAL_VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open what `seal` made, raising IntegrityFailure on any tampering or wrong key."""
    return _open(AESGCM(key), sealed, aad)


def _open(cipher: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    if sealed[:1] != SEAL_VERSION or len(sealed) < 1 + NONCE_BYTES + 16:
        raise IntegrityFailure("Sealed value is malformed")
    nonce, body = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
    try:
        return cipher.decrypt(nonce, body, aad)
    except InvalidTag:
        raise IntegrityFailure("Sealed value failed authentication") from None


def derive(root: bytes, label: str) -> bytes:
    """A 256-bit sub-key of `root` for one use, so no key serves two purposes."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"sealdrop/" + label.encode()).derive(root)


@dataclass(frozen=True)
class DataKeys:
    """Seals text and computes blind indexes within one scope (the service or one account)."""

    scope: str
    seal_key: bytes = field(repr=False)
    index_key: bytes = field(repr=False)

    @classmethod
    def from_root(cls, scope: str, root: bytes) -> "DataKeys":
        return cls(scope, derive(root, "seal"), derive(root, "index"))

    def seal_text(self, text: str, context: str) -> bytes:
        return seal(self.seal_key, text.encode("utf-8"), self._aad(context))

    def open_text(self, sealed: bytes, context: str) -> str:
        return unseal(self.seal_key, sealed, self._aad(context)).decode("utf-8")

    def text_opener(self, context: str):
        """`open_text` for many values of one context (an export): the cipher and AAD made once."""
        cipher, aad = AESGCM(self.seal_key), self._aad(context)
        return lambda sealed: _open(cipher, sealed, aad).decode("utf-8")

    def seal_bytes(self, data: bytes, context: str) -> bytes:
        return seal(self.seal_key, data, self._aad(context))

    def open_bytes(self, sealed: bytes, context: str) -> bytes:
        return unseal(self.seal_key, sealed, self._aad(context))

    def index(self, context: str, value: str) -> bytes:
        """HMAC-SHA256 blind index of an already-normalised value within a context."""
        message = context.encode() + b"\x00" + value.encode("utf-8")
        return hmac.new(self.index_key, message, hashlib.sha256).digest()

    def _aad(self, context: str) -> bytes:
        return f"sealdrop/{self.scope}/{context}".encode()


class MasterKeyRing:
    """The master keys from the environment; the first one wraps, any listed one unwraps."""

    def __init__(self, keys: tuple[MasterKey, ...]):
        if not keys:
            raise ConfigError("MASTER_KEYS holds no key")
        self.keys = {k.kid: k.key for k in keys}
        self.active = keys[0]

    def wrap(self, key: bytes, aad: bytes) -> tuple[str, bytes]:
        return self.active.kid, seal(self.active.key, key, aad)

    def unwrap(self, kid: str, wrapped: bytes, aad: bytes) -> bytes:
        if kid not in self.keys:
            raise ConfigError(f"master key {kid!r} is not in MASTER_KEYS")
        return unseal(self.keys[kid], wrapped, aad)


def wrapped_key_aad(account_id: int | None, purpose: str, version: int) -> bytes:
    """Binds a wrapped key to its slot, so a row copied elsewhere does not unwrap."""
    return f"sealdrop/wrapped-key/{account_id or 'service'}/{purpose}/{version}".encode()


def file_key_aad(file_id: bytes) -> bytes:
    """Binds a file's wrapped key to that file version, so keys cannot be swapped."""
    return b"sealdrop/file-key/" + file_id


class Keyring:
    """Unwraps and caches the service and account keys of one process."""

    def __init__(self, master: MasterKeyRing):
        self.master = master
        self._cache: dict[tuple[int | None, str, int], tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    # -- the service key -------------------------------------------------------------------
    def service(self, session: Session) -> DataKeys:
        """The service-wide keys, created on first use."""
        row = self._row(session, None, "service")
        if row is None:
            self._insert(session, None, "service", 1, random_key(), on_conflict_ignore=True)
            row = self._row(session, None, "service")
        return DataKeys.from_root("service", self._unwrap(row))

    # -- account keys ----------------------------------------------------------------------
    def create_account_keys(self, session: Session, account_id: int) -> None:
        """Give a new account its data key and first file-wrapping key."""
        self._insert(session, account_id, "data", 1, random_key())
        self._insert(session, account_id, "file", 1, random_key())

    def account(self, session: Session, account_id: int) -> DataKeys:
        """The keys that seal and index one account's names, emails and secrets."""
        row = self._row(session, account_id, "data")
        if row is None:
            raise IntegrityFailure("Account keys are missing")
        return DataKeys.from_root(f"account/{account_id}", self._unwrap(row))

    def active_file_key_version(self, session: Session, account_id: int) -> int:
        row = self._row(session, account_id, "file")
        if row is None:
            raise IntegrityFailure("Account keys are missing")
        return row.version

    def wrap_file_key(self, session: Session, account_id: int, file_key: bytes,
                      file_id: bytes) -> tuple[bytes, int]:
        """Wrap a file's key under the account's active file-wrapping key."""
        # FOR SHARE: a rotation must not retire this key version until our commit is done.
        row = self._row(session, account_id, "file", lock=True)
        if row is None:
            raise IntegrityFailure("Account keys are missing")
        wrapping = self._unwrap(row)
        return seal(wrapping, file_key, file_key_aad(file_id)), row.version

    def unwrap_file_key(self, session: Session, account_id: int, wrapped: bytes,
                        version: int, file_id: bytes) -> bytes:
        """Recover a file's key, raising IntegrityFailure if it was swapped or altered."""
        row = self._row(session, account_id, "file", version)
        if row is None:
            raise IntegrityFailure("The key of this file is gone")
        return unseal(self._unwrap(row), wrapped, file_key_aad(file_id))

    def add_file_key_version(self, session: Session, account_id: int) -> int:
        """Create a new file-wrapping key version (rotation); it becomes the active one."""
        current = self.active_file_key_version(session, account_id)
        self._insert(session, account_id, "file", current + 1, random_key())
        return current + 1

    def rewrap(self, row: WrappedKey) -> bool:
        """Re-wrap one stored key under the active master key; False when already there."""
        if row.master_kid == self.master.active.kid:
            return False
        key = self._unwrap(row)
        row.master_kid, row.wrapped = self.master.wrap(key, wrapped_key_aad(row.account_id, row.purpose, row.version))
        return True

    def forget(self, account_id: int) -> None:
        """Drop an account's cached keys (after crypto-shredding them)."""
        with self._lock:
            for slot in [s for s in self._cache if s[0] == account_id]:
                del self._cache[slot]

    # -- internals -------------------------------------------------------------------------
    def _row(self, session: Session, account_id: int | None, purpose: str,
             version: int | None = None, lock: bool = False) -> WrappedKey | None:
        query = select(WrappedKey).where(WrappedKey.purpose == purpose)
        query = query.where(WrappedKey.account_id.is_(None) if account_id is None
                            else WrappedKey.account_id == account_id)
        if version is not None:
            query = query.where(WrappedKey.version == version)
        query = query.order_by(WrappedKey.version.desc()).limit(1)
        if lock:
            query = query.with_for_update(read=True)
        return session.scalars(query).first()

    def _insert(self, session: Session, account_id: int | None, purpose: str, version: int,
                key: bytes, *, on_conflict_ignore: bool = False) -> None:
        kid, wrapped = self.master.wrap(key, wrapped_key_aad(account_id, purpose, version))
        statement = insert(WrappedKey).values(account_id=account_id, purpose=purpose,
                                              version=version, wrapped=wrapped, master_kid=kid)
        if on_conflict_ignore:
            statement = statement.on_conflict_do_nothing()
        session.execute(statement)

    def _unwrap(self, row: WrappedKey) -> bytes:
        # Callers always read the row first, so a destroyed key is never served from here;
        # entries also expire, so a deleted account's keys do not linger in a long-lived process.
        slot, now = (row.account_id, row.purpose, row.version), time.monotonic()
        with self._lock:
            cached = self._cache.get(slot)
        if cached is None or cached[1] < now:
            key = self.master.unwrap(row.master_kid, row.wrapped,
                                     wrapped_key_aad(row.account_id, row.purpose, row.version))
            with self._lock:
                self._cache = {s: c for s, c in self._cache.items() if c[1] >= now}
                self._cache[slot] = cached = (key, now + CACHE_SECONDS)
        return cached[0]
