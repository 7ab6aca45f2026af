"""The spool sweeper: re-queue lost ingests, drop abandoned temp and orphan spool files, run the
purge; and the clock's fan-out that sends one sweep to every known spool's queue."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from common.errors import TransientError
from common.jobs.ingest import enqueue_ingest
from common.jobs.purge import forget_ciphertext, purge_pending
from common.jobs.registry import MAINTENANCE_QUEUE, SPOOL_QUEUE, enqueue_once, job, worker_services
from common.models import FileVersion, PendingPurge, Spool
from common.services import Services

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 24 * 3600  # an upload nobody wrote to for a day is abandoned
ORPHAN_READY_SECONDS = 3600  # longer than any commit between publish and row insert


@dataclass(frozen=True)
class SweepReport:
    requeued: int
    temps_removed: int
    orphans_removed: int
    purged: int


def prepare_spool_host(services: Services) -> None:
    """Start-up of a process that receives uploads: register its spool, check the bucket.

    A store outage is only a warning here: uploads are accepted into the spool meanwhile,
    and the store checks the bucket before its first write once it is back. A bucket or
    store that does not suit us (versioning, no server-side encryption when asked) raises
    ConfigError: the process stops with its one-line message.
    """
    services.spool.ensure()
    register_spool(services)
    try:
        services.store.ensure_bucket()
    except TransientError:
        log.warning("object store unreachable at start-up; uploads will wait in the spool")


def register_spool(services: Services) -> None:
    """Record this process's spool, so the clock fans the sweeper out to its queue."""
    with services.db.session() as session:
        session.execute(insert(Spool).values(id=services.settings.spool_id)
                        .on_conflict_do_update(index_elements=[Spool.id],
                                               set_={"last_seen_at": func.now()}))


@job(MAINTENANCE_QUEUE, timeout=120)
def sweep_all() -> int:
    """RQ job (clock): queue the sweeper on every known spool's queue; returns how many."""
    return fan_out_sweeps(worker_services())


def fan_out_sweeps(services: Services) -> int:
    """Queue one sweep per known spool (at most one waiting per spool)."""
    with services.db.session() as session:
        spool_ids = session.scalars(select(Spool.id).order_by(Spool.id)).all()
    queued = 0
    for spool_id in spool_ids:
        # A spool host that is gone collects at most this one job in its queue.
        queued += enqueue_once(services, sweep, spool_id, job_id=f"sweep-{spool_id}", spool_id=spool_id)
    return queued


@job(SPOOL_QUEUE, timeout=1800)
def sweep(spool_id: str) -> str:
    """RQ job: sweep this host's spool (the id names the queue it came from, and must match)."""
    services = worker_services()
    if spool_id != services.settings.spool_id:
        raise ValueError("a sweep reached a worker of another spool")
    report = sweep_spool(services)
    return (f"requeued {report.requeued}, temps {report.temps_removed}, "
            f"orphans {report.orphans_removed}, purged {report.purged}")


def sweep_spool(services: Services) -> SweepReport:
    """Re-queue lost ingests, drop abandoned temp files and orphan spool files, run the purge."""
    services.spool.ensure()
    register_spool(services)
    report = SweepReport(
        requeued=requeue_lost_ingests(services),
        temps_removed=_remove_stale_temps(services),
        orphans_removed=_remove_orphans(services),
        purged=purge_pending(services),
    )
    log.info("spool %s swept: %s", services.settings.spool_id, report)
    return report


def requeue_lost_ingests(services: Services, batch: int = 1000) -> int:
    """Queue the ingest of every spooled version of this spool that has no live job."""
    own, requeued, after = services.settings.spool_id, 0, None
    while True:
        with services.db.session() as session:
            query = (select(FileVersion.id, FileVersion.cipher_size)
                     .where(FileVersion.state == "spooled", FileVersion.spool_id == own)
                     .order_by(FileVersion.id).limit(batch))
            if after is not None:
                query = query.where(FileVersion.id > after)
            rows = session.execute(query).all()
        for version_id, size in rows:
            if enqueue_ingest(services, version_id, size):
                log.warning("re-queued the ingest of version %s", version_id)
                requeued += 1
        if len(rows) < batch:
            return requeued
        after = rows[-1][0]


def _remove_stale_temps(services: Services) -> int:
    removed = 0
    for path in services.spool.stale_temps(STALE_TEMP_SECONDS):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _remove_orphans(services: Services) -> int:
    """Spool files with no version waiting for them and no purge pending (or already stored).

    A key no version names at all is left by an upload whose commit failed (or was never
    confirmed): in inline mode its object may be in the store too, so both go.
    """
    cutoff = time.time() - ORPHAN_READY_SECONDS
    old = [k for k in services.spool.ready_keys() if _mtime(services.spool.path(k)) < cutoff]
    removed = 0
    for start in range(0, len(old), 1000):
        keys = old[start:start + 1000]
        with services.db.session() as session:
            states = dict(session.execute(select(FileVersion.storage_key, FileVersion.state).where(
                FileVersion.storage_key.in_(keys))).all())
            pending = set(session.scalars(select(PendingPurge.storage_key).where(
                PendingPurge.storage_key.in_(keys))))
        for key in keys:
            if key in pending or states.get(key) == "spooled":
                continue
            if key in states:
                services.spool.remove(key)  # stored already: only the spool copy is left over
            else:
                forget_ciphertext(services, key)
            removed += 1
    return removed


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
