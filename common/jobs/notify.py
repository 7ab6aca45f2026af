"""Notification mails on the `mail` queue: upload digests for followed folders, lockout alerts
and "your daily audit export is ready", each to the users whose choice (or, without one, the
account's default) says so.

Mails name no file, folder, path or user name: they say how many, which account and which
user id, and link to the portal page that shows the names after sign-in.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

from rq import Retry
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from common import mail
from common.crypto import Keyring
from common.jobs.registry import MAIL_QUEUE, enqueue_once, job, worker_services
from common.models import Account, Follow, Share, User
from common.services import Services

log = logging.getLogger(__name__)

# kind -> (the user's own choice, the account's default)
PREFERENCES = {
    "uploads": (User.notify_uploads, Account.notify_uploads_default),
    "alerts": (User.notify_alerts, Account.notify_alerts_default),
    "exports": (User.notify_exports, Account.notify_exports_default),
}
# A digest waits this long after the first upload it counts, so a burst makes one mail.
DIGEST_DELAY = timedelta(minutes=3)
MAX_DEPTH = 10_000
RETRY = Retry(max=5, interval=[30, 120, 600])


def wants(kind: str):
    """The SQL condition of a user (joined with their account) who wants mails of this kind."""
    own, default = PREFERENCES[kind]
    return func.coalesce(own, default).is_(True)


def recipients(session: Session, keyring: Keyring, account_id: int, kind: str, *,
               admins_only: bool = True) -> list[str]:
    """The unsealed addresses of the account's active users (admins by default) who want this kind."""
    query = (select(User.email_sealed).join(Account, Account.id == User.account_id)
             .where(User.account_id == account_id, User.status == "active", wants(kind)).order_by(User.id))
    if admins_only:
        query = query.where(User.role == "admin")
    sealed = session.scalars(query).all()
    if not sealed:
        return []
    keys = keyring.account(session, account_id)
    return [keys.open_text(value, "email") for value in sealed]


def _send_to(services: Services, account_id: int, kind: str, build) -> int:
    with services.db.session() as session:
        to = recipients(session, services.keyring, account_id, kind)
    if not to:
        return 0
    mail.send(services.settings, build(to))
    return len(to)


# -- lockout alerts ---------------------------------------------------------------------------

def enqueue_lockout_alert(services: Services, account_id: int, user_id: int) -> None:
    """Queue the admins' alert that a user name of the account froze (one waiting mail per user)."""
    enqueue_once(services, lockout_alert, int(account_id), int(user_id),
                 job_id=f"lockout-alert-{int(account_id)}-{int(user_id)}")


@job(MAIL_QUEUE, timeout=120, retry=RETRY)
def lockout_alert(account_id: int, user_id: int) -> int:
    return send_lockout_alert(worker_services(), int(account_id), int(user_id))


def send_lockout_alert(services: Services, account_id: int, user_id: int) -> int:
    """Mail the admins who want alerts that a user was locked out; returns the recipients."""
    settings = services.settings
    return _send_to(services, account_id, "alerts", lambda to: mail.render(
        tuple(to), "Sealdrop: a user was locked out", "lockout_alert", public_url=settings.public_url,
        account_id=int(account_id), user_id=int(user_id), minutes=max(settings.lockout_seconds // 60, 1),
        audit_link=f"{settings.public_url}/audit?user={int(user_id)}&action=lockout"))


# -- "your daily audit export is ready" ------------------------------------------------------

def enqueue_export_ready(services: Services, account_id: int, day: date) -> None:
    """Queue the mail that a day's audit export is in /Audit Logs (one per account and day)."""
    enqueue_once(services, export_ready, int(account_id), day.isoformat(),
                 job_id=f"export-ready-{int(account_id)}-{day.isoformat()}")


@job(MAIL_QUEUE, timeout=120, retry=RETRY)
def export_ready(account_id: int, day: str) -> int:
    return send_export_ready(worker_services(), int(account_id), date.fromisoformat(day))


def send_export_ready(services: Services, account_id: int, day: date) -> int:
    """Mail the admins who opted in that the day's export is ready; returns the recipients."""
    settings = services.settings
    return _send_to(services, account_id, "exports", lambda to: mail.render(
        tuple(to), f"Sealdrop: the audit export of {day.isoformat()} is ready", "export_ready",
        public_url=settings.public_url, account_id=int(account_id), day=day.isoformat(),
        audit_link=f"{settings.public_url}/audit"))


# -- upload digests --------------------------------------------------------------------------

@job(MAIL_QUEUE, timeout=600)
def send_digests() -> int:
    """RQ job (every minute, from the clock): mail the followers whose digests are due."""
    return send_due_digests(worker_services())


def send_due_digests(services: Services, *, delay: timedelta = DIGEST_DELAY) -> int:
    """One mail per follower whose oldest uncounted upload is older than `delay`; returns mails sent."""
    cutoff = datetime.now(timezone.utc) - delay
    with services.db.session() as session:
        due = session.scalars(select(Follow.user_id).where(Follow.pending_since <= cutoff)
                              .group_by(Follow.user_id).order_by(Follow.user_id)).all()
    sent = 0
    for user_id in due:
        sent += _send_digest(services, user_id, cutoff)
    return sent


def _send_digest(services: Services, user_id: int, cutoff: datetime) -> int:
    claimed = _claim(services, user_id, cutoff)
    try:
        with services.db.session() as session:
            user = session.get(User, user_id)
            message = _digest_message(session, services, user, claimed)
        if message is None:
            return 0
        mail.send(services.settings, message)
    except BaseException:
        _restore(services, user_id, claimed)  # the next run tries again
        raise
    log.info("upload digest mailed to user %s (%d folder(s))", user_id, len(claimed))
    return 1


def _claim(services: Services, user_id: int, cutoff: datetime) -> dict[int, tuple[int, datetime]]:
    """Take (and zero) the due counts of a user's follows; the row locks make uploads wait, not vanish."""
    with services.db.session() as session:
        rows = session.execute(select(Follow.folder_id, Follow.pending, Follow.pending_since).where(
            Follow.user_id == user_id, Follow.pending_since <= cutoff).with_for_update()).all()
        session.execute(update(Follow).where(Follow.user_id == user_id, Follow.folder_id.in_([r[0] for r in rows]))
                        .values(pending=0, pending_since=None))
    return {folder_id: (pending, since) for folder_id, pending, since in rows}


def _restore(services: Services, user_id: int, claimed: dict[int, tuple[int, datetime]]) -> None:
    with services.db.session() as session:
        for folder_id, (pending, since) in claimed.items():
            session.execute(update(Follow).where(Follow.user_id == user_id, Follow.folder_id == folder_id).values(
                pending=Follow.pending + pending,
                pending_since=func.least(func.coalesce(Follow.pending_since, since), since)))


def _digest_message(session: Session, services: Services, user: User | None, claimed) -> mail.Message | None:
    """The digest for the folders this user may still open, or None (no reach, or opted out)."""
    if user is None or user.status != "active" or not _wants_uploads(session, user):
        return None
    folders = [(folder_id, pending) for folder_id, (pending, _) in sorted(claimed.items())
               if pending and can_reach(session, user, folder_id)]
    if not folders:
        return None
    email = services.keyring.account(session, user.account_id).open_text(user.email_sealed, "email")
    url = services.settings.public_url
    return mail.render((email,), "Sealdrop: new files in folders you follow", "upload_digest",
                       public_url=url, total=sum(count for _, count in folders),
                       folders=[(count, f"{url}/files/folder/n{folder_id}") for folder_id, count in folders])


def _wants_uploads(session: Session, user: User) -> bool:
    return bool(session.scalar(select(wants("uploads")).select_from(User).join(Account, Account.id == User.account_id)
                               .where(User.id == user.id)))


def can_reach(session: Session, user: User, folder_id: int) -> bool:
    """Whether the folder is still the user's: in their home, in a folder shared with them, or
    (admins) in the account's /Audit Logs."""
    ancestors = [row.id for row in session.execute(text("""
        WITH RECURSIVE up(id, parent_id, depth) AS (
            SELECT id, parent_id, 0 FROM nodes WHERE id = :id AND account_id = :account
            UNION ALL SELECT n.id, n.parent_id, up.depth + 1 FROM nodes n JOIN up ON n.id = up.parent_id
            WHERE up.depth < :limit)
        SELECT id FROM up"""), {"id": folder_id, "account": user.account_id, "limit": MAX_DEPTH})]
    if not ancestors:
        return False
    account = session.get(Account, user.account_id)
    if user.home_folder_id in ancestors or (user.role == "admin" and account.audit_folder_id in ancestors):
        return True
    return session.scalar(select(func.count()).select_from(Share).where(
        Share.grantee_user_id == user.id, Share.folder_id.in_(ancestors))) > 0
