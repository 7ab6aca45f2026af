"""The purge: erase ciphertext whose rows and keys are already gone, on the host that holds it."""
from __future__ import annotations

from rq import Retry
from sqlalchemy import delete, select

from common.jobs.registry import SPOOL_QUEUE, enqueue_once, is_waiting, job, worker_services
from common.models import PendingPurge
from common.services import Services


def enqueue_purge(services: Services, spool_id: str | None = None) -> None:
    """Queue the erasure of ciphertext whose rows and keys are already gone (on a spool's host)."""
    spool_id = spool_id or services.settings.spool_id
    # Two slots: a purge already running may have read its rows before ours were committed,
    # so a second one waits behind it; more than that would find nothing new to do.
    for slot in ("", "-next"):
        job_id = f"purge-{spool_id}{slot}"
        if is_waiting(services, job_id):
            return
        if enqueue_once(services, purge, job_id=job_id, spool_id=spool_id):
            return


@job(SPOOL_QUEUE, timeout=900, retry=Retry(max=5, interval=30))
def purge() -> int:
    """RQ job: erase this host's pending ciphertext (see purge_pending)."""
    return purge_pending(worker_services())


def purge_pending(services: Services, limit: int = 1000) -> int:
    """Erase the spool files and objects this host is responsible for; returns how many.

    Rows spooled on another host wait for that host's worker, the only one that sees its spool.
    """
    own, total = services.settings.spool_id, 0
    while True:
        with services.db.session() as session:
            rows = session.scalars(
                select(PendingPurge)
                .where((PendingPurge.spool_id == own) | PendingPurge.spool_id.is_(None))
                .order_by(PendingPurge.id).limit(limit).with_for_update(skip_locked=True)).all()
            for row in rows:
                forget_ciphertext(services, row.storage_key)
                session.execute(delete(PendingPurge).where(PendingPurge.id == row.id))
        total += len(rows)
        if len(rows) < limit:
            return total


def forget_ciphertext(services: Services, key: str) -> None:
    """Erase one object and its spool file."""
    # The store first: if it is down, the spool file stays as the sign that work is left.
    services.store.remove(key)
    services.spool.remove(key)
