"""The nightly audit export: a fan-out after midnight UTC, then one job per account and day.

The fan-out queues, for every account, each day from the catch-up window that has no export
yet (from the audit_exports rows): yesterday, and any day a missed run skipped, never before
the account's creation day. Jobs carry ids and an ISO date only; a re-run replaces the day's files.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from sqlalchemy import select

from common.audit_export import export_day
from common.jobs.registry import MAINTENANCE_QUEUE, enqueue_once, job, worker_services
from common.models import Account, AuditExport
from common.services import Services

CATCH_UP_DAYS = 31  # a clock down longer than a month needs `audit export` by hand for older days
EXPORT_TIMEOUT = 2 * 3600  # a million events take minutes; leave room on a busy host


@job(MAINTENANCE_QUEUE, timeout=300)
def export_fan_out() -> int:
    """RQ job (clock, shortly after 00:00 UTC): queue every account's missing daily exports."""
    return enqueue_due_exports(worker_services(), datetime.now(timezone.utc).date())


@job(MAINTENANCE_QUEUE, timeout=EXPORT_TIMEOUT)
def export_audit_day(account_id: int, day: str) -> int:
    """RQ job: write one account's files for one UTC day (ISO date)."""
    return export_day(worker_services(), account_id, date.fromisoformat(day)).events


def export_job_id(account_id: int, day: date) -> str:
    return f"audit-export-{account_id}-{day.isoformat()}"


def enqueue_due_exports(services: Services, today: date) -> int:
    """Queue each account's days without an export, up to yesterday; returns how many were queued."""
    queued = 0
    with services.db.session() as session:
        due = {account_id: due_days(session, account_id, created_at.date(), today)
               for account_id, created_at in session.execute(select(Account.id, Account.created_at))}
    for account_id, days in due.items():
        for day in days:
            queued += enqueue_once(services, export_audit_day, account_id, day.isoformat(),
                                   job_id=export_job_id(account_id, day))
    return queued


def due_days(session, account_id: int, created: date, today: date) -> list[date]:
    """The days from the catch-up window (and not before `created`) up to yesterday with no export."""
    last = today - timedelta(days=1)
    first = max(created, today - timedelta(days=CATCH_UP_DAYS))
    if first > last:
        return []
    done = set(session.scalars(select(AuditExport.day).where(
        AuditExport.account_id == account_id, AuditExport.day >= first, AuditExport.day <= last)))
    return [first + timedelta(days=n) for n in range((last - first).days + 1) if first + timedelta(days=n) not in done]
