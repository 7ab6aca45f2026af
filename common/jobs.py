"""Background jobs (RQ). Jobs take only ids, open their own session, are idempotent, and
let exceptions reach RQ so its retries apply. Job arguments never carry names or keys.

Each job function has two faces: `ingest(version_id)` is what RQ runs in a worker (it builds
the worker's services from the environment once), `ingest_version(services, version_id)` is
the same work for callers that already hold services (INGEST_MODE=inline, tests).
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from functools import lru_cache

from rq import Queue, Retry
from sqlalchemy import delete, select

from common.errors import IntegrityFailure
from common.models import FileVersion, Node, PendingPurge
from common.services import Services
from common.storage import upload_verified

log = logging.getLogger(__name__)

INGEST_RETRY = Retry(max=12, interval=[5, 15, 30, 60, 120, 300])
FAILURE_TTL = 7 * 24 * 3600  # failed jobs hold only ids, but need not linger for a year
MAINTENANCE_QUEUE = "default"


def ingest_queue_name(spool_id: str) -> str:
    return f"ingest.{spool_id}"


@lru_cache(maxsize=1)
def worker_services() -> Services:
    """The services of a worker process, built from its environment on first use."""
    from common.config import settings_from_environment
    return Services(settings_from_environment())


def queue(services: Services, name: str) -> Queue:
    return Queue(name, connection=services.redis)


# -- ingest ------------------------------------------------------------------------------

def enqueue_ingest(services: Services, version_id: uuid.UUID, size: int) -> None:
    """Queue the upload of a committed version to the store, on its spool host's queue."""
    timeout = 600 + size // (5 * 1024 * 1024)  # scale with size: at least 5 MiB/s
    queue(services, ingest_queue_name(services.settings.spool_id)).enqueue(
        ingest, str(version_id), job_id=f"ingest-{version_id}", job_timeout=timeout,
        retry=INGEST_RETRY, failure_ttl=FAILURE_TTL, result_ttl=0)


def ingest(version_id: str) -> str:
    return ingest_version(worker_services(), uuid.UUID(version_id))


def ingest_version(services: Services, version_id: uuid.UUID) -> str:
    """Upload a spooled version, verify it, mark it stored, free the spool; purge if superseded."""
    with services.db.session() as session:
        version = session.get(FileVersion, version_id)
        if version is None:
            return _drop_leftovers(services, None)
        if version.state == "stored":
            services.spool.remove(version.storage_key)
            return "already stored"
        key, size, digest = version.storage_key, version.cipher_size, version.cipher_sha256
    stored = services.store.stat(key)
    if stored is None or stored.size != size:
        if not services.spool.has(key):
            raise IntegrityFailure("A spooled version lost its ciphertext before ingest")
        upload_verified(services.store, services.spool, key, cipher_size=size, cipher_sha256=digest)
    elif services.store.sha256(key) != digest:
        services.store.remove(key)
        raise IntegrityFailure("A stored object does not match its fingerprint; re-uploading")
    return _mark_stored(services, version_id, key)


def _mark_stored(services: Services, version_id: uuid.UUID, key: str) -> str:
    with services.db.session() as session:
        version = session.get(FileVersion, version_id, with_for_update=True)
        if version is None:
            return _drop_leftovers(services, key)
        version.state, version.stored_at = "stored", datetime.now(timezone.utc)
        node = session.get(Node, version.node_id)
        superseded = node is None or node.current_version_id != version.id
        if superseded:
            session.delete(version)
    services.spool.remove(key)
    if superseded:
        services.store.remove(key)
        return "purged: superseded"
    return "stored"


def _drop_leftovers(services: Services, key: str | None) -> str:
    # The version was deleted (or replaced and purged) while we worked: leave nothing behind.
    if key:
        services.spool.remove(key)
        services.store.remove(key)
    return "gone"


# -- purge -------------------------------------------------------------------------------

def enqueue_purge(services: Services) -> None:
    """Queue the erasure of ciphertext whose rows and keys are already gone (on this spool's host)."""
    queue(services, ingest_queue_name(services.settings.spool_id)).enqueue(
        purge, job_id=f"purge-{services.settings.spool_id}", failure_ttl=FAILURE_TTL, result_ttl=0,
        retry=Retry(max=5, interval=30))


def purge() -> int:
    return purge_pending(worker_services())


def purge_pending(services: Services, limit: int = 1000) -> int:
    """Erase the spool files and objects this host is responsible for; returns how many.

    Rows spooled on another host wait for that host's worker, the only one that sees its spool.
    """
    own = services.settings.spool_id
    with services.db.session() as session:
        rows = session.scalars(
            select(PendingPurge)
            .where((PendingPurge.spool_id == own) | PendingPurge.spool_id.is_(None))
            .order_by(PendingPurge.id).limit(limit).with_for_update(skip_locked=True)).all()
        for row in rows:
            services.spool.remove(row.storage_key)
            services.store.remove(row.storage_key)
            session.execute(delete(PendingPurge).where(PendingPurge.id == row.id))
    return len(rows)
