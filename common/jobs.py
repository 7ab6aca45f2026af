"""Background jobs (RQ). Jobs take only ids, open their own session, are idempotent, and
let exceptions reach RQ so its retries apply. Job arguments never carry names or keys.

Each job function has two faces: `ingest(version_id)` is what RQ runs in a worker (it builds
the worker's services from the environment once), `ingest_version(services, version_id)` is
the same work for callers that already hold services (INGEST_MODE=inline, tests).

Queues: `ingest.<spool id>` (ingest, purge and the spool sweeper: only that host's worker sees
its spool), `mail` (alerts), `default` (the clock's fan-out and fixity). Job ids are
deterministic, so a job is never queued twice and the sweeper can tell whether one is alive.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Callable

from rq import Queue, Retry, Worker
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from common import audit
from common.content import ContentReader, StoredContent
from common.errors import IntegrityFailure
from common.models import FileVersion, Node, PendingPurge, Spool, User
from common.services import Services
from common.storage import upload_verified

log = logging.getLogger(__name__)

INGEST_RETRY = Retry(max=12, interval=[5, 15, 30, 60, 120, 300])
FAILURE_TTL = 7 * 24 * 3600  # failed jobs hold only ids, but need not linger for a year
MAINTENANCE_QUEUE = "default"
MAIL_QUEUE = "mail"
SWEEP_TIMEOUT = 1800
PURGE_TIMEOUT = 900
MAIL_TIMEOUT = 120
FIXITY_TIMEOUT = 3600
STALE_TEMP_SECONDS = 24 * 3600  # an upload nobody wrote to for a day is abandoned
ORPHAN_READY_SECONDS = 3600  # longer than any commit between publish and row insert
FIXITY_MAX_FILES = 200
FIXITY_MAX_BYTES = 4 * 1024 ** 3
LOST_CIPHERTEXT_TRIES = 3  # ingests that find a spooled version's ciphertext missing before it is failed
# A job in one of these states will still run (or is running): do not queue it again.
WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED)


def ingest_queue_name(spool_id: str) -> str:
    """The queue served only by the workers of the host that holds this spool."""
    return f"ingest.{spool_id}"


@lru_cache(maxsize=1)
def worker_services() -> Services:
    """The services of a worker process, built from its environment on first use."""
    from common.config import settings_from_environment
    return Services(settings_from_environment())


def queue(services: Services, name: str) -> Queue:
    """An RQ queue on the service's Redis."""
    return Queue(name, connection=services.redis)


# -- enqueueing once ---------------------------------------------------------------------

def enqueue_once(services: Services, queue_name: str, func: Callable, *args, job_id: str, **options) -> bool:
    """Queue a job under a fixed id unless one with that id will still run; True if queued.

    A finished, failed or stopped job of that id, or one whose worker died, is replaced.
    """
    connection = services.redis
    try:
        existing = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        existing = None
    if existing is not None:
        if is_alive(services, existing):
            return False
        existing.delete()
    try:
        queue(services, queue_name).enqueue(func, *args, job_id=job_id, unique=True, **options)
    except DuplicateJobError:
        return False  # someone queued it between our check and our enqueue
    return True


def is_alive(services: Services, job: Job) -> bool:
    """Whether a job will still run: waiting in a queue, or started by a worker still alive."""
    status = job.get_status(refresh=True)
    if status in WAITING:
        return True
    if status != JobStatus.STARTED:
        return False
    return _worker_alive(services, job.worker_name)


def _worker_alive(services: Services, worker_name: str | None) -> bool:
    if not worker_name:
        return True  # being handed to a worker right now
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name,
                                connection=services.redis)
    if worker is None:
        return False  # its heartbeat lapsed: the worker is gone
    if worker.hostname != socket.gethostname() or not worker.pid:
        # Another host's worker: its own maintenance (StartedJobRegistry.cleanup) decides.
        return True
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False  # killed (SIGKILL, OOM) without a word: its job is abandoned
    except PermissionError:
        return True
    return True


# -- ingest ------------------------------------------------------------------------------

def enqueue_ingest(services: Services, version_id: uuid.UUID, size: int) -> bool:
    """Queue the upload of a committed version to the store, on its spool host's queue."""
    timeout = 600 + size // (5 * 1024 * 1024)  # scale with size: at least 5 MiB/s
    return enqueue_once(
        services, ingest_queue_name(services.settings.spool_id), ingest, str(version_id),
        job_id=ingest_job_id(version_id), job_timeout=timeout, retry=INGEST_RETRY,
        failure_ttl=FAILURE_TTL, result_ttl=0)


def ingest_job_id(version_id: uuid.UUID) -> str:
    return f"ingest-{version_id}"


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
    return _mark_stored(services, version_id, key)


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


def _mark_stored(services: Services, version_id: uuid.UUID, key: str) -> str:
    with services.db.session() as session:
        version = session.get(FileVersion, version_id, with_for_update=True)
        if version is None:
            # Deleted or replaced while we uploaded; its purge may have run before our object
            # existed, so erase what we just stored ourselves.
            _forget_ciphertext(services, key)
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


def _forget_ciphertext(services: Services, key: str) -> None:
    # The store first: if it is down, the spool file stays as the sign that work is left.
    services.store.remove(key)
    services.spool.remove(key)


# -- purge -------------------------------------------------------------------------------

def enqueue_purge(services: Services, spool_id: str | None = None) -> None:
    """Queue the erasure of ciphertext whose rows and keys are already gone (on a spool's host)."""
    spool_id = spool_id or services.settings.spool_id
    # Two slots: a purge already running may have read its rows before ours were committed,
    # so a second one waits behind it; more than that would find nothing new to do.
    for slot in ("", "-next"):
        job_id = f"purge-{spool_id}{slot}"
        if _is_waiting(services, job_id):
            return
        if enqueue_once(services, ingest_queue_name(spool_id), purge, job_id=job_id,
                        job_timeout=PURGE_TIMEOUT, failure_ttl=FAILURE_TTL, result_ttl=0,
                        retry=Retry(max=5, interval=30)):
            return


def _is_waiting(services: Services, job_id: str) -> bool:
    try:
        return Job.fetch(job_id, connection=services.redis).get_status() in WAITING
    except NoSuchJobError:
        return False


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
                _forget_ciphertext(services, row.storage_key)
                session.execute(delete(PendingPurge).where(PendingPurge.id == row.id))
        total += len(rows)
        if len(rows) < limit:
            return total


# -- the spool sweeper -------------------------------------------------------------------

@dataclass(frozen=True)
class SweepReport:
    requeued: int
    temps_removed: int
    orphans_removed: int
    purged: int


def register_spool(services: Services) -> None:
    """Record this process's spool, so the clock fans the sweeper out to its queue."""
    with services.db.session() as session:
        session.execute(insert(Spool).values(id=services.settings.spool_id)
                        .on_conflict_do_update(index_elements=[Spool.id],
                                               set_={"last_seen_at": func.now()}))


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
        queued += enqueue_once(services, ingest_queue_name(spool_id), sweep, spool_id,
                               job_id=f"sweep-{spool_id}", job_timeout=SWEEP_TIMEOUT,
                               failure_ttl=FAILURE_TTL, result_ttl=0)
    return queued


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
                _forget_ciphertext(services, key)
            removed += 1
    return removed


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


# -- integrity alerts --------------------------------------------------------------------

def enqueue_integrity_alert(services: Services, account_id: int) -> None:
    """Queue a mail to the account's admins about a failed integrity check (bursts coalesce)."""
    enqueue_once(services, MAIL_QUEUE, integrity_alert, int(account_id),
                 job_id=f"integrity-alert-{int(account_id)}", job_timeout=MAIL_TIMEOUT,
                 failure_ttl=FAILURE_TTL, result_ttl=0, retry=Retry(max=5, interval=[30, 120, 600]))


def integrity_alert(account_id: int) -> int:
    """RQ job: mail the account's admins about a failed integrity check; returns recipients."""
    return send_integrity_alert(worker_services(), int(account_id))


def send_integrity_alert(services: Services, account_id: int) -> int:
    """Mail every active admin of the account: what happened and what to do, no file names."""
    from common import mail
    recipients = admin_emails(services, account_id)
    if not recipients:
        log.warning("integrity alert for account %s: no admin to tell", account_id)
        return 0
    mail.send(services.settings, mail.integrity_alert(services.settings, account_id, recipients))
    return len(recipients)


def admin_emails(services: Services, account_id: int) -> list[str]:
    """The unsealed email addresses of an account's active admins."""
    with services.db.session() as session:
        sealed = session.scalars(select(User.email_sealed).where(
            User.account_id == account_id, User.role == "admin", User.status == "active")
            .order_by(User.id)).all()
        if not sealed:
            return []
        keys = services.keyring.account(session, account_id)
        return [keys.open_text(value, "email") for value in sealed]


# -- fixity ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixityReport:
    checked: int
    failed: int
    bytes: int


def fixity() -> str:
    """RQ job (clock): re-verify the least recently verified stored files."""
    report = verify_stored(worker_services())
    return f"checked {report.checked}, failed {report.failed}, bytes {report.bytes}"


def verify_stored(services: Services, *, max_files: int = FIXITY_MAX_FILES,
                  max_bytes: int = FIXITY_MAX_BYTES) -> FixityReport:
    """Read, decrypt and fingerprint stored versions, oldest check first, within the bounds."""
    with services.db.session() as session:
        candidates = session.execute(
            select(FileVersion.id, FileVersion.cipher_size).where(FileVersion.state == "stored")
            .order_by(FileVersion.verified_at.asc().nulls_first(), FileVersion.id)
            .limit(max_files)).all()
    checked = failed = spent = 0
    for version_id, size in candidates:
        if checked and spent + size > max_bytes:
            break
        outcome = verify_version(services, version_id)
        if outcome is None:
            continue
        checked, spent = checked + 1, spent + size
        failed += outcome is False
    return FixityReport(checked, failed, spent)


def verify_version(services: Services, version_id: uuid.UUID) -> bool | None:
    """Check one stored version against its fingerprints; None if it is gone meanwhile."""
    with services.db.session() as session:
        version = session.get(FileVersion, version_id)
        if version is None or version.state != "stored":
            return None
        account_id = version.account_id
        file_key = services.keyring.unwrap_file_key(
            session, account_id, version.wrapped_key, version.key_version, version.id.bytes)
        content = StoredContent(version.id, version.storage_key, version.size, version.md5,
                                version.sha256, version.state, version.spool_id)
    ok = _content_intact(services, content, file_key)
    with services.db.session() as session:
        # Set even on failure, so one bad file does not starve the others of checks;
        # it comes round again (and alerts again) on the next cycle.
        session.execute(update(FileVersion).where(FileVersion.id == version_id)
                        .values(verified_at=datetime.now(timezone.utc)))
        if not ok and session.get(FileVersion, version_id) is not None:
            audit.record(session, services.keyring, audit.Event(
                action="integrity_failure", protocol="system", status="failed",
                account_id=account_id, detail=f"fixity check failed for version {version_id}"))
    if not ok:
        log.error("fixity: version %s failed its integrity check", version_id)
        enqueue_integrity_alert(services, account_id)
    return ok


def _content_intact(services: Services, content: StoredContent, file_key: bytes) -> bool:
    if services.store.stat(content.storage_key) is None:
        return False  # the store lost the object
    reader = ContentReader(content, file_key, services.spool, services.store)
    try:
        for _ in reader.read():
            pass
    except IntegrityFailure:
        return False
    return True


def prune_login_state() -> int:
    """Drop lockout, defender and ban rows that can no longer matter (a periodic job)."""
    from common import auth
    services = worker_services()
    with services.db.session() as session:
        return auth.prune_login_state(session, services.settings)


# -- share invitations -------------------------------------------------------------------

def enqueue_share_invitation(services: Services, share_id: int) -> None:
    """Queue the mail that gives a contact the link to a folder shared with them."""
    enqueue_once(services, MAIL_QUEUE, share_invitation, int(share_id), job_id=f"share-invite-{int(share_id)}",
                 job_timeout=MAIL_TIMEOUT, failure_ttl=FAILURE_TTL, result_ttl=0,
                 retry=Retry(max=5, interval=[30, 120, 600]))


def share_invitation(share_id: int) -> bool:
    return send_share_invitation(worker_services(), int(share_id))


def send_share_invitation(services: Services, share_id: int) -> bool:
    """Create a fresh link for a contact's share and mail it; the token exists only in the mail.

    The link is made here, not when the share is, so no token ever waits in Redis or a table.
    """
    from common import mail, sharing
    from common.models import Contact, Share
    with services.db.session() as session:
        share = session.get(Share, share_id)
        if share is None or share.grantee_contact_id is None:
            return False
        contact = session.get(Contact, share.grantee_contact_id)
        email = services.keyring.account(session, share.account_id).open_text(contact.email_sealed, "email")
        token = sharing.create_link(session, share)
        expires = datetime.now(timezone.utc) + sharing.LINK_LIFETIME
        message = mail.share_invitation(services.settings, email, token, share.permission, expires)
    mail.send(services.settings, message)
    return True
