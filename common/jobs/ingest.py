"""Ingest: upload a committed version from its host's spool to the store, verified."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone

from rq import Retry

from common import audit
from common.errors import IntegrityFailure
from common.jobs.alerts import enqueue_integrity_alert
from common.jobs.purge import forget_ciphertext, purge_pending
from common.jobs.registry import SPOOL_QUEUE, enqueue_once, job, worker_services
from common.models import FileVersion, Node, PendingPurge
from common.services import Services
from common.storage import upload_verified

log = logging.getLogger(__name__)

LOST_CIPHERTEXT_TRIES = 3  # ingests that find a spooled version's ciphertext missing before it is failed
BYTES_PER_SECOND = 5 * 1024 * 1024  # the slowest upload to the store we wait for


def enqueue_ingest(services: Services, version_id: uuid.UUID, size: int) -> bool:
    """Queue the upload of a committed version to the store, on its spool host's queue."""
    timeout = ingest.job_spec.timeout + size // BYTES_PER_SECOND  # scale with size
    return enqueue_once(services, ingest, str(version_id), job_id=ingest_job_id(version_id), timeout=timeout)


def ingest_job_id(version_id: uuid.UUID) -> str:
    return f"ingest-{version_id}"


@job(SPOOL_QUEUE, timeout=600, retry=Retry(max=12, interval=[5, 15, 30, 60, 120, 300]))
def ingest(version_id: str) -> str:
    """RQ job: upload one spooled version to the store (see ingest_version)."""
    return ingest_version(worker_services(), uuid.UUID(version_id))


def ingest_version(services: Services, version_id: uuid.UUID) -> str:
    """Upload a spooled version, verify it, mark it stored, free the spool; purge if superseded."""
    with services.db.session() as session:
        version = session.get(FileVersion, version_id)
        if version is None:
            return "gone"  # deleted or replaced: its pending purge erases the ciphertext
        if version.state == "stored":
            services.spool.remove(version.storage_key)
            return "already stored"
        if version.state == "failed":
            return "failed: ciphertext lost"
        key, size, digest = version.storage_key, version.cipher_size, version.cipher_sha256
    stored = services.store.stat(key)
    if stored is None or stored.size != size or not services.store.meets_encryption_policy(stored):
        if not services.spool.has(key):
            return _count_lost_ciphertext(services, version_id)
        upload_verified(services.store, services.spool, key, cipher_size=size, cipher_sha256=digest)
    elif services.store.sha256(key) != digest:
        services.store.remove(key)
        raise IntegrityFailure("A stored object does not match its fingerprint; re-uploading")
    return mark_stored(services, version_id, key)


def _count_lost_ciphertext(services: Services, version_id: uuid.UUID) -> str:
    """One more ingest found no ciphertext; after LOST_CIPHERTEXT_TRIES the version is failed.

    Failing it stops the retries and the sweeper's re-queueing, answers downloads at once with
    an integrity error, and tells the account's admins.
    """
    with services.db.session() as session:
        version = session.get(FileVersion, version_id, with_for_update=True)
        if version is None:
            return "gone"  # removed (and purged) while we looked
        if version.state != "spooled":
            return f"already {version.state}"
        version.ingest_failures += 1
        account_id, failed = version.account_id, version.ingest_failures >= LOST_CIPHERTEXT_TRIES
        if failed:
            version.state = "failed"
            audit.record(session, services.keyring, audit.Event(
                action="integrity_failure", protocol="system", status="failed", account_id=account_id,
                detail=f"ciphertext of version {version_id} lost before ingest"))
    if not failed:
        raise IntegrityFailure("A spooled version lost its ciphertext before ingest")
    log.error("version %s lost its ciphertext before ingest; marked failed", version_id)
    enqueue_integrity_alert(services, account_id)
    return "failed: ciphertext lost"


def mark_stored(services: Services, version_id: uuid.UUID, key: str) -> str:
    """The end of an ingest, once the object is in the store: the version is stored, or, when it
    was deleted or replaced meanwhile, the object is erased ("gone", "purged: superseded")."""
    with services.db.session() as session:
        version = session.get(FileVersion, version_id, with_for_update=True)
        if version is None:
            # Deleted or replaced while we uploaded; its purge may have run before our object
            # existed, so erase what we just stored ourselves.
            forget_ciphertext(services, key)
            return "gone"
        version.state, version.stored_at = "stored", datetime.now(timezone.utc)
        node = session.get(Node, version.node_id)
        superseded = node is None or node.current_version_id != version.id
        if superseded:
            session.add(PendingPurge(storage_key=key, spool_id=services.settings.spool_id))
            session.delete(version)
    if superseded:
        purge_pending(services)
        return "purged: superseded"
    services.spool.remove(key)
    return "stored"
