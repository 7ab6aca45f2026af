"""The owner's digest of files that arrived through their share links.

Each upload through a request or read/write link counts on its share (shares.arrivals_pending,
with arrivals_since set by the first); every minute this job mails the owner of each share whose
first uncounted arrival is older than ARRIVALS_BATCH, so many files arriving together make one
mail. The mail says how many files and links to the folder; it names no file.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, update

from common import mail, refs
from common.jobs.registry import MAIL_QUEUE, job, worker_services
from common.models import Account, Share, User
from common.services import Services

log = logging.getLogger(__name__)

ARRIVALS_BATCH = timedelta(minutes=3)  # files arriving within this of the first share one mail


@job(MAIL_QUEUE, timeout=300)
def arrivals_digest() -> int:
    return send_arrival_digests(worker_services())


def send_arrival_digests(services: Services, *, now: datetime | None = None) -> int:
    """Mail the owner of every share with arrivals older than ARRIVALS_BATCH; how many were sent."""
    due = (now or datetime.now(timezone.utc)) - ARRIVALS_BATCH
    with services.db.session() as session:
        share_ids = session.scalars(select(Share.id).where(Share.arrivals_pending > 0,
                                                           Share.arrivals_since <= due)).all()
    return sum(_send_digest(services, share_id) for share_id in share_ids)


def _send_digest(services: Services, share_id: int) -> bool:
    # The count is taken (set to zero) before the mail goes and given back if it fails, so no
    # lock is held while the mail server answers, and a concurrent run sends nothing twice.
    with services.db.session() as session:
        share = session.get(Share, share_id, with_for_update=True)
        if share is None or share.arrivals_pending == 0:
            return False
        count, since = share.arrivals_pending, share.arrivals_since
        share.arrivals_pending, share.arrivals_since = 0, None
        owner = session.get(User, share.owner_id)
        if not _wants_upload_mail(session, owner):
            return False
        email = services.keyring.account(session, share.account_id).open_text(owner.email_sealed, "email")
        folder_url = f"{services.settings.public_url}/files/folder/{refs.node_ref(share.folder_id)}"
    try:
        mail.send(services.settings, mail.arrivals(services.settings, email, count, folder_url))
    except mail.MailNotSent:
        _give_back(services, share_id, count, since)
        log.warning("arrivals digest for share %s not sent; kept for the next run", share_id)
        return False
    log.info("arrivals digest (%s files) mailed for share %s", count, share_id)
    return True


def _wants_upload_mail(session, owner: User) -> bool:
    if owner.notify_uploads is not None:
        return owner.notify_uploads
    return session.get(Account, owner.account_id).notify_uploads_default


def _give_back(services: Services, share_id: int, count: int, since: datetime) -> None:
    with services.db.session() as session:
        session.execute(update(Share).where(Share.id == share_id).values(
            arrivals_pending=Share.arrivals_pending + count,
            arrivals_since=func.least(func.coalesce(Share.arrivals_since, since), since)))
