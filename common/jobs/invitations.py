"""Share invitations: the mail that gives a contact the link to a folder shared with them."""
from __future__ import annotations

from datetime import datetime, timezone

from rq import Retry

from common import mail, sharing
from common.jobs.registry import MAIL_QUEUE, enqueue_once, job, worker_services
from common.models import Contact, Share
from common.services import Services


def enqueue_share_invitation(services: Services, share_id: int) -> None:
    """Queue the mail that gives a contact the link to a folder shared with them."""
    enqueue_once(services, share_invitation, int(share_id), job_id=f"share-invite-{int(share_id)}")


@job(MAIL_QUEUE, timeout=120, retry=Retry(max=5, interval=[30, 120, 600]))
def share_invitation(share_id: int) -> bool:
    return send_share_invitation(worker_services(), int(share_id))


def send_share_invitation(services: Services, share_id: int) -> bool:
    """Create a fresh link for a contact's share and mail it; the token exists only in the mail.

    The link is made here, not when the share is, so no token ever waits in Redis or a table.
    """
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
