"""Integrity alerts: mail an account's admins that a file failed its integrity check."""
from __future__ import annotations

import logging

from rq import Retry

from common import mail
from common.jobs import notify
from common.jobs.registry import MAIL_QUEUE, enqueue_once, job, worker_services
from common.services import Services

log = logging.getLogger(__name__)


def enqueue_integrity_alert(services: Services, account_id: int) -> None:
    """Queue a mail to the account's admins about a failed integrity check (bursts coalesce)."""
    enqueue_once(services, integrity_alert, int(account_id), job_id=f"integrity-alert-{int(account_id)}")


@job(MAIL_QUEUE, timeout=120, retry=Retry(max=5, interval=[30, 120, 600]))
def integrity_alert(account_id: int) -> int:
    """RQ job: mail the account's admins about a failed integrity check; returns recipients."""
    return send_integrity_alert(worker_services(), int(account_id))


def send_integrity_alert(services: Services, account_id: int) -> int:
    """Mail every active admin of the account: what happened and what to do, no file names."""
    recipients = admin_emails(services, account_id)
    if not recipients:
        log.warning("integrity alert for account %s: no admin to tell", account_id)
        return 0
    mail.send(services.settings, mail.integrity_alert(services.settings, account_id, recipients))
    return len(recipients)


def admin_emails(services: Services, account_id: int) -> list[str]:
    """The unsealed email addresses of an account's active admins who want alerts."""
    with services.db.session() as session:
        return notify.recipients(session, services.keyring, account_id, "alerts")
