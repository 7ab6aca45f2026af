"""The fingerprints of the transfer doors' keys, published by each door at start-up.

The portal's Connection details page reads them from here (`published`), so a web host never
reads a private key. A door publishes every key it serves (`publish`): the SFTP door each host
key as OpenSSH shows it (`SHA256:` and unpadded base64, `ssh_fingerprint`), the FTPS door its
TLS certificate as `openssl x509 -fingerprint -sha256` shows it (`certificate_fingerprint`).
A row is replaced when its door publishes again, so a rotated key shows once a door restarts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from common.auth.ssh_keys import fingerprint_of as ssh_fingerprint  # as `ssh-keygen -l` shows it
from common.models import DoorKey
from common.services import Services

__all__ = ["TLS_CERTIFICATE", "PublishedKey", "certificate_fingerprint", "publish", "published",
           "ssh_fingerprint"]

TLS_CERTIFICATE = "tls-certificate"  # the key_type of a door's TLS certificate


@dataclass(frozen=True)
class PublishedKey:
    door: str
    key_type: str
    fingerprint: str
    published_at: datetime


def certificate_fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM file's first certificate (the server's own; any chain
    follows it), over its DER bytes: colon-separated upper-case hex."""
    der = x509.load_pem_x509_certificates(pem)[0].public_bytes(Encoding.DER)
    return hashlib.sha256(der).digest().hex(":").upper()


def publish(services: Services, door: str, key_type: str, fingerprint: str) -> None:
    """Record the fingerprint of a key the door serves, replacing what it published before."""
    with services.db.session() as session:
        session.execute(insert(DoorKey).values(door=door, key_type=key_type, fingerprint=fingerprint)
                        .on_conflict_do_update(index_elements=[DoorKey.door, DoorKey.key_type],
                                               set_={"fingerprint": fingerprint,
                                                     "published_at": func.now()}))


def published(services: Services) -> list[PublishedKey]:
    """Every published key, by door then key type."""
    with services.db.session() as session:
        rows = session.scalars(select(DoorKey).order_by(DoorKey.door, DoorKey.key_type))
        return [PublishedKey(row.door, row.key_type, row.fingerprint, row.published_at) for row in rows]
