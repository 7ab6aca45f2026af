"""Invitation mails: a contact's link to a folder shared with them, and a user's set-password
link (an invitation to a new account, or a password reset).

Each job makes its token when it runs, so no token ever waits in Redis or in clear in a table.
"""
from __future__ import annotations

import logging

from rq import Retry
from sqlalchemy import select

from common import accounts, mail, sharing
from common.auth import address_group, password_links
from common.errors import InvalidInput
from common.jobs.registry import MAIL_QUEUE, enqueue_once, job, worker_services
from common.models import Contact, Share, User
from common.services import Services

log = logging.getLogger(__name__)

# "Forgot password" requests per user name and per client address (an IPv6 /64), each an hour.
FORGOT_PER_NAME = 5
FORGOT_PER_ADDRESS = 20
FORGOT_WINDOW_SECONDS = 3600
NOBODY = 0  # the user id of a reset request that must send nothing (no such user, over a limit)


def enqueue_share_invitation(services: Services, share_id: int) -> None:
    """Queue the mail that gives a contact the link to a folder shared with them."""
    enqueue_once(services, share_invitation, int(share_id), job_id=f"share-invite-{int(share_id)}")


@job(MAIL_QUEUE, timeout=120, retry=Retry(max=5, interval=[30, 120, 600]))
def share_invitation(share_id: int) -> bool:
    return send_share_invitation(worker_services(), int(share_id))


def send_share_invitation(services: Services, share_id: int) -> bool:
    """Mail a contact a fresh token for the share's newest live link (made with the policy's
    defaults when the share has none); the token exists only in the mail.

    The token is made here, not when the link is, so no token ever waits in Redis or a table.
    """
    with services.db.session() as session:
        share = session.get(Share, share_id)
        if share is None or share.grantee_contact_id is None:
            return False
        contact = session.get(Contact, share.grantee_contact_id)
        email = services.keyring.account(session, share.account_id).open_text(contact.email_sealed, "email")
        link = sharing.newest_live_link(session, share)
        if link is None:
            try:
                link = sharing.create_link(session, services.keyring, share, actor=accounts.SYSTEM)
            except InvalidInput:  # the policy wants a password: only a link made with one can go out
                log.warning("share %s has no live link and its account requires link passwords", share_id)
                return False
        token = sharing.issue_link_token(session, link)
        message = mail.share_invitation(services.settings, email, token, link.permission, link.expires_at,
                                        password=link.password_hash is not None)
    mail.send(services.settings, message)
    return True


# -- set-password links ------------------------------------------------------------------------

def enqueue_password_link(services: Services, user_id: int, purpose: str) -> None:
    """Queue the mail with a user's set-password link: 'invite' (a new user) or 'reset' (an
    admin's reset: before the mail goes out, the old password stops working on every door and
    every web session ends; SSH keys and app passwords are separate credentials and stay)."""
    if purpose not in password_links.PURPOSES:
        raise ValueError(f"unknown password link purpose {purpose!r}")
    if purpose == "reset":
        with services.db.session() as session:
            user = session.get(User, int(user_id), with_for_update=True)
            if user is not None:
                user.password_hash = None  # a leaked password must not outlive the reset
                user.session_version += 1
    _enqueue_link_mail(services, int(user_id), purpose)


def request_password_reset(services: Services, username: str, ip: str | None) -> None:
    """"Forgot password": queue a reset link for the user of this name, within the limits per
    name and per address. The same work whether or not the name exists or a limit is passed
    (one indexed lookup, two counters, one enqueue), and no session ends: only setting the
    new password does that, so a stranger asking cannot sign anyone out."""
    with services.db.session() as session:
        index = accounts.username_index(services.keyring.service(session), username)
        user_id = session.scalar(select(User.id).where(User.username_index == index))
    within = _count_reset_request(services, index.hex(), address_group(ip) or "unknown")
    _enqueue_link_mail(services, user_id if user_id is not None and within else NOBODY, "reset")


def _count_reset_request(services: Services, name_key: str, address: str) -> bool:
    """Count a request against its name's and its address's hourly limits; True if within both."""
    # The name's key is its blind index (keyed), so Redis holds no user name.
    keys = (f"forgot:name:{name_key}", f"forgot:addr:{address}")
    pipe = services.redis.pipeline()
    for key in keys:
        pipe.incr(key)
        pipe.expire(key, FORGOT_WINDOW_SECONDS, nx=True)
    name_count, _, address_count, _ = pipe.execute()
    return name_count <= FORGOT_PER_NAME and address_count <= FORGOT_PER_ADDRESS


def _enqueue_link_mail(services: Services, user_id: int, purpose: str) -> None:
    # One waiting mail per user and purpose: a second request while it waits changes nothing,
    # since the job makes its token (the newest, the only live one) when it runs.
    enqueue_once(services, password_link, user_id, purpose, job_id=f"password-{purpose}-{user_id}")


@job(MAIL_QUEUE, timeout=120, retry=Retry(max=5, interval=[30, 120, 600]))
def password_link(user_id: int, purpose: str) -> bool:
    return send_password_link(worker_services(), int(user_id), purpose)


def send_password_link(services: Services, user_id: int, purpose: str) -> bool:
    """Make a fresh set-password link for an active user and mail it to their address; the
    token exists only in the mail. False (and no mail) for an unknown or disabled user."""
    with services.db.session() as session:
        user = session.get(User, user_id)
        if user is None or user.status != "active":
            return False
        email = services.keyring.account(session, user.account_id).open_text(user.email_sealed, "email")
        token = password_links.issue(session, services.keyring, user, purpose)
    hours = int(password_links.LINK_LIFETIME.total_seconds() // 3600)
    mail.send(services.settings, mail.password_link(services.settings, email, token, purpose, hours))
    log.info("%s link mailed to user %s", purpose, user_id)
    return True
