"""Fixity: re-read, decrypt and fingerprint stored files, least recently checked first."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update

from common import audit
from common.content import ContentReader, StoredContent
from common.errors import IntegrityFailure
from common.jobs.alerts import enqueue_integrity_alert
from common.jobs.registry import MAINTENANCE_QUEUE, job, worker_services
from common.models import FileVersion
from common.services import Services

log = logging.getLogger(__name__)

FIXITY_MAX_FILES = 200
FIXITY_MAX_BYTES = 4 * 1024 ** 3


@dataclass(frozen=True)
class FixityReport:
    checked: int
    failed: int
    bytes: int


@job(MAINTENANCE_QUEUE, timeout=3600)
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
