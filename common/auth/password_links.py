"""Set-password links: an invitation for a new user, a reset for a forgotten or reset password.

A link carries a random token of 256 bits; only its SHA-256 is stored. It works once, for
72 hours, while the user is active; issuing a new link of a purpose kills the user's earlier
unused ones of that purpose, and setting a password kills every link the user still has.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from common import accounts, passwords
from common.accounts import Actor
from common.auth.admin import audit_change
from common.crypto import Keyring, token_hash
from common.errors import InvalidInput, NotFound
from common.models import Account, PasswordLink, User

LINK_LIFETIME = timedelta(hours=72)
PURPOSES = ("invite", "reset")
TOKEN_BYTES = 32
# token_urlsafe(32) gives 43 characters; anything far longer is not one of ours.
MAX_TOKEN_LENGTH = 64


class DeadLink(NotFound):
    """A set-password link that is unknown, used, expired, superseded or whose user is disabled."""

    code = "dead_link"
    default_message = ("This link no longer works: it was used already, it expired, or a newer one "
                       "replaced it. Ask your administrator for a new one, or use \"Forgot your password?\" "
                       "on the sign-in page.")
    http_status = 410


def issue(session: Session, keyring: Keyring, user: User, purpose: str) -> str:
    """A new link token for the user (returned once, stored only as its hash); earlier unused
    links of the same purpose die."""
    if purpose not in PURPOSES:
        raise InvalidInput(f"A link's purpose is one of {', '.join(PURPOSES)}.")
    # Two issues at once for the same user must not both leave a live link.
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    session.execute(delete(PasswordLink).where(
        PasswordLink.user_id == user.id, PasswordLink.purpose == purpose, PasswordLink.used_at.is_(None)))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(PasswordLink(user_id=user.id, purpose=purpose, token_hash=token_hash(token),
                             expires_at=datetime.now(timezone.utc) + LINK_LIFETIME))
    session.flush()
    return token


def user_for(session: Session, token: str) -> User | None:
    """The user of a live link (unused, not expired, user active), or None."""
    link = live_link(session, token)
    return session.get(User, link.user_id) if link is not None else None


def redeem(session: Session, keyring: Keyring, token: str, new_password: str, *, ip: str | None = None,
           protocol: str = "web") -> User:
    """Set the user's password through a live link, once: the account's policy applies, every
    session of theirs ends and their other links die. A dead link raises DeadLink."""
    link = live_link(session, token, lock=True)
    if link is None:
        raise DeadLink()
    user = session.get(User, link.user_id)
    account = session.get(Account, user.account_id)
    username = accounts.user_name(session, keyring, user)
    email = keyring.account(session, user.account_id).open_text(user.email_sealed, "email")
    accounts.check_new_password(session, account, new_password, user_inputs=(username, email))
    now = datetime.now(timezone.utc)
    user.password_hash = passwords.hash_password(new_password)
    user.password_changed_at = now
    user.session_version += 1
    user.must_change_password = False
    session.execute(update(PasswordLink).where(
        PasswordLink.user_id == user.id, PasswordLink.used_at.is_(None)).values(used_at=now))
    audit_change(session, keyring, Actor(protocol, ip, user.id, username), user.account_id,
                 f"user {user.id} set their password by {link.purpose} link {link.id}")
    return user


def live_link(session: Session, token: str, *, lock: bool = False) -> PasswordLink | None:
    """The link of this token if it still works (unused, not expired, its user active)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    query = (select(PasswordLink).join(User, User.id == PasswordLink.user_id).where(
        PasswordLink.token_hash == token_hash(token), PasswordLink.used_at.is_(None),
        PasswordLink.expires_at > datetime.now(timezone.utc), User.status == "active"))
    if lock:
        # Two submissions of one link: the second waits, then finds it used.
        query = query.with_for_update(of=PasswordLink)
    return session.scalar(query)
