"""SSH public keys a user authorises for SFTP: parsing, the key-strength rule, and the lookup.

Keys are stored as their wire-format blob with a SHA256 fingerprint; the comment is sealed
with the account's data key. DSA keys and RSA keys under 2048 bits are refused.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common import accounts
from common.accounts import SYSTEM, Actor
from common.auth.admin import audit_change
from common.crypto import Keyring
from common.errors import AlreadyExists, InvalidInput, NotFound
from common.models import SshKey, User
from common.services import Services

MIN_RSA_BITS = 2048
MAX_KEY_LINE = 16 * 1024


@dataclass(frozen=True)
class PublicKey:
    """A parsed OpenSSH public key: type, wire-format blob, comment and SHA256 fingerprint."""

    key_type: str
    blob: bytes
    comment: str | None
    fingerprint: str


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line (`type base64 [comment]`), refusing weak or malformed keys."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise InvalidInput("Give exactly one OpenSSH public key line (type, key, optional comment).")
    fields = lines[0].split(None, 2)
    if len(fields) < 2:
        raise InvalidInput("That is not an OpenSSH public key line (type, key, optional comment).")
    key_type, encoded = fields[0], fields[1]
    blob = _decode_key_blob(key_type, encoded)
    return PublicKey(key_type, blob, fields[2].strip() if len(fields) > 2 else None, fingerprint_of(blob))


def fingerprint_of(blob: bytes) -> str:
    """A key's fingerprint as OpenSSH shows it: `SHA256:` and the unpadded base64 of its blob's digest."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def add_ssh_key(session: Session, keyring: Keyring, user: User, line: str, *,
                actor: Actor = SYSTEM) -> SshKey:
    """Authorise an OpenSSH public key for the user's SFTP logins, audited."""
    key = parse_public_key(line)
    if session.scalar(select(SshKey.id).where(SshKey.user_id == user.id,
                                             SshKey.fingerprint == key.fingerprint)) is not None:
        raise AlreadyExists("This key is already authorised for this user.")
    keys = keyring.account(session, user.account_id)
    row = SshKey(user_id=user.id, key_type=key.key_type, key_blob=key.blob, fingerprint=key.fingerprint,
                 comment_sealed=keys.seal_text(key.comment, "ssh-key-comment") if key.comment else None)
    session.add(row)
    session.flush()
    audit_change(session, keyring, actor, user.account_id,
                 f"ssh key {key.fingerprint} added for user {user.id}")
    return row


@dataclass(frozen=True)
class SshKeyInfo:
    """One authorised key as the portal lists it."""

    id: int
    key_type: str
    fingerprint: str
    comment: str | None
    created_at: datetime
    last_used_at: datetime | None


def list_ssh_keys(session: Session, keyring: Keyring, user: User) -> list[SshKeyInfo]:
    """The user's authorised keys, newest first, with their comments opened."""
    keys = keyring.account(session, user.account_id)
    rows = session.scalars(select(SshKey).where(SshKey.user_id == user.id).order_by(SshKey.id.desc()))
    return [SshKeyInfo(row.id, row.key_type, row.fingerprint,
                       keys.open_text(row.comment_sealed, "ssh-key-comment") if row.comment_sealed else None,
                       row.created_at, row.last_used_at) for row in rows]


def remove_ssh_key(session: Session, keyring: Keyring, user: User, key_id: int, *, actor: Actor = SYSTEM) -> None:
    """Remove one of the user's keys (another user's id is NotFound), audited."""
    row = session.scalar(select(SshKey).where(SshKey.id == key_id, SshKey.user_id == user.id))
    if row is None:
        raise NotFound("No such key.")
    session.delete(row)
    audit_change(session, keyring, actor, user.account_id, f"ssh key {row.fingerprint} removed from user {user.id}")


def authorized_key_id(session: Session, user_id: int, key_type: str | None, blob: bytes) -> int | None:
    """The id of the user's key with this blob (and type, when given), or None."""
    query = select(SshKey.id).where(SshKey.user_id == user_id, SshKey.key_blob == blob)
    if key_type is not None:
        query = query.where(SshKey.key_type == key_type)
    return session.scalar(query)


def is_authorized_key(services: Services, username: str, key_type: str, key_blob: bytes) -> bool:
    """Whether this public key belongs to an active user of this name; records nothing (SSH probes)."""
    with services.db.session() as session:
        user = accounts.find_user(session, services.keyring, username)
        if user is None or user.status != "active":
            return False
        return authorized_key_id(session, user.id, key_type, bytes(key_blob)) is not None


def mark_used(session: Session, key_id: int) -> None:
    """Stamp the key's last use (in the login's transaction)."""
    session.execute(update(SshKey).where(SshKey.id == key_id).values(last_used_at=func.now()))


def _decode_key_blob(key_type: str, encoded: str) -> bytes:
    try:
        blob = base64.b64decode(encoded, validate=True)
        key = load_ssh_public_key(f"{key_type} {encoded}".encode("ascii"))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        raise InvalidInput("That public key could not be read; "
                           "paste the whole line of the .pub file.") from None
    embedded_type = blob[4:4 + int.from_bytes(blob[:4], "big")].decode("ascii", "replace")
    if embedded_type != key_type:
        raise InvalidInput("The key type does not match the key.")
    if isinstance(key, dsa.DSAPublicKey):
        raise InvalidInput("DSA keys are not accepted; use an Ed25519, ECDSA or RSA (2048+) key.")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidInput(f"RSA keys need at least {MIN_RSA_BITS} bits.")
    return blob
