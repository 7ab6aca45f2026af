"""Sharing folders with users of the same account or with contacts, and share links.

A share grants read or read/write on one folder of its owner's workspace; the grantee sees it at
`/Shared/<owner>/<folder>`. Sharing never crosses accounts. A contact (an email, no login)
receives a link bound to the share; only the SHA-256 of a link's token is stored.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from dataclasses import dataclass

from redis import Redis
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from common import accounts, audit, doors, passwords, paths
from common.auth import address_group
from common.auth.admin import audit_change
from common.crypto import Keyring, token_hash
from common.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from common.models import PERMISSIONS, SHARE_PERMISSIONS, Account, Contact, Node, Share, ShareLink, User

LINK_LIFETIME = timedelta(days=30)  # the default expiry, shortened to the account's link policy
CONTACT_NAME_MAX = 200
# Wrong link passwords allowed per link and per client address (an IPv6 /64) in each window.
LINK_PASSWORD_TRIES_PER_LINK = 10
LINK_PASSWORD_TRIES_PER_ADDRESS = 30
LINK_PASSWORD_WINDOW_SECONDS = 900


def find_folder(session: Session, keyring: Keyring, owner: User, folder_path: str) -> Node:
    """A folder inside the owner's home, by path (`/reports` and `reports` are the same)."""
    names = paths.parts(paths.normalise("/" + folder_path.lstrip("/")))
    if not names:
        raise InvalidInput("Share a folder inside the workspace, not the whole workspace.")
    keys = keyring.account(session, owner.account_id)
    node = session.get(Node, owner.home_folder_id)
    for name in names:
        node = session.scalar(select(Node).where(
            Node.parent_id == node.id, Node.name_index == keys.index(f"node:{node.id}", name)))
        if node is None:
            raise NotFound("No such folder in the owner's workspace.")
    if node.kind != "folder":
        raise InvalidInput("Only folders can be shared.")
    return node


def share_folder(session: Session, keyring: Keyring, account: Account, owner: User, folder: Node, *,
                 to: str, permission: str, actor: accounts.Actor = accounts.SYSTEM) -> Share:
    """Share a folder with a user of the same account (by user name) or an email (a contact).

    A name that is no user of this account is taken as an email, wherever else it may exist.
    """
    if permission not in SHARE_PERMISSIONS:
        raise InvalidInput("Permission must be read, write or request.")
    if folder.owner_id != owner.id or folder.account_id != account.id:
        raise PermissionDenied("Only the folder's owner can share it.")
    grantee = accounts.find_user(session, keyring, to)
    if grantee is not None and grantee.account_id != account.id:
        # Sharing never crosses accounts, and says nothing of other accounts: their user
        # names are answered exactly as names that exist nowhere (an email-like one is an email).
        grantee = None
    if grantee is not None and grantee.id == owner.id:
        raise InvalidInput("A folder cannot be shared with its owner.")
    if grantee is not None and permission not in PERMISSIONS:
        raise InvalidInput("Request links are for contacts; give a user read or write.")
    contact = None if grantee is not None else contact_for_email(session, keyring, account, to)
    share = session.scalar(select(Share).where(
        Share.folder_id == folder.id,
        Share.grantee_user_id == grantee.id if grantee else Share.grantee_contact_id == contact.id))
    if share is None:
        share = Share(account_id=account.id, folder_id=folder.id, owner_id=owner.id,
                      grantee_user_id=grantee.id if grantee else None,
                      grantee_contact_id=contact.id if contact else None, permission=permission)
        session.add(share)
    share.permission = permission
    session.flush()
    audit.record(session, keyring, audit.Event(
        action="share", protocol=actor.protocol, account_id=account.id, user_id=actor.user_id,
        username=actor.username, ip=actor.ip,
        detail=f"folder {folder.id} shared with {'user ' + str(grantee.id) if grantee else 'contact ' + str(contact.id)}"
               f" ({permission})"))
    return share


def contact_for_email(session: Session, keyring: Keyring, account: Account, email: str,
                      name: str | None = None) -> Contact:
    """The account's contact with this email, created if needed."""
    keys = keyring.account(session, account.id)
    try:
        index = accounts.email_index(keys, email)
    except InvalidInput:
        raise InvalidInput("Share with a user name of this account or a valid email address.") from None
    contact = session.scalar(select(Contact).where(Contact.account_id == account.id, Contact.email_index == index))
    if contact is None:
        contact = Contact(account_id=account.id, email_sealed=keys.seal_text(email.strip(), "email"),
                          email_index=index, name_sealed=keys.seal_text(name, "contact-name") if name else None)
        session.add(contact)
        session.flush()
    return contact


@dataclass(frozen=True)
class ContactInfo:
    """A contact as the portal lists it, opened; `shares` counts the folders shared with them."""

    id: int
    email: str
    name: str | None
    shares: int
    created_at: datetime


def list_contacts(session: Session, keyring: Keyring, account: Account) -> list[ContactInfo]:
    """The account's contacts (former users among them), by name then email, opened."""
    keys = keyring.account(session, account.id)
    shares = dict(session.execute(select(Share.grantee_contact_id, func.count()).where(
        Share.account_id == account.id, Share.grantee_contact_id.is_not(None))
        .group_by(Share.grantee_contact_id)).all())
    found = [ContactInfo(row.id, keys.open_text(row.email_sealed, "email"),
                         keys.open_text(row.name_sealed, "contact-name") if row.name_sealed else None,
                         shares.get(row.id, 0), row.created_at)
             for row in session.scalars(select(Contact).where(Contact.account_id == account.id))]
    return sorted(found, key=lambda c: ((c.name or c.email).casefold(), c.email.casefold(), c.id))


def find_contact(session: Session, account: Account, contact_id: int) -> Contact:
    """The account's contact with this id; another account's is NotFound."""
    contact = session.get(Contact, contact_id)
    if contact is None or contact.account_id != account.id:
        raise NotFound("No such contact.")
    return contact


def add_contact(session: Session, keyring: Keyring, account: Account, *, email: str, name: str | None,
                actor: accounts.Actor = accounts.SYSTEM) -> Contact:
    """Add a contact (an email and an optional name); an email already listed is AlreadyExists. Audited."""
    keys = keyring.account(session, account.id)
    index = accounts.email_index(keys, email)
    if session.scalar(select(Contact.id).where(Contact.account_id == account.id,
                                               Contact.email_index == index)):
        raise AlreadyExists("A contact with this email already exists.")
    contact = Contact(account_id=account.id, email_sealed=keys.seal_text(email.strip(), "email"),
                      email_index=index, name_sealed=_sealed_name(keys, name))
    session.add(contact)
    session.flush()
    audit_change(session, keyring, actor, account.id, f"contact {contact.id} added")
    return contact


def update_contact(session: Session, keyring: Keyring, account: Account, contact: Contact, *, email: str,
                   name: str | None, actor: accounts.Actor = accounts.SYSTEM) -> None:
    """Change a contact's email and name; another contact's email is AlreadyExists. Audited."""
    if contact.account_id != account.id:
        raise NotFound("No such contact.")
    keys = keyring.account(session, account.id)
    index = accounts.email_index(keys, email)
    if session.scalar(select(Contact.id).where(Contact.account_id == account.id, Contact.email_index == index,
                                               Contact.id != contact.id)):
        raise AlreadyExists("Another contact has this email.")
    contact.email_sealed, contact.email_index = keys.seal_text(email.strip(), "email"), index
    contact.name_sealed = _sealed_name(keys, name)
    session.flush()
    audit_change(session, keyring, actor, account.id, f"contact {contact.id} changed")


def delete_contact(session: Session, keyring: Keyring, account: Account, contact: Contact, *,
                   actor: accounts.Actor = accounts.SYSTEM) -> None:
    """Delete a contact with the shares made with them and those shares' links. Audited."""
    if contact.account_id != account.id:
        raise NotFound("No such contact.")
    contact_id = contact.id
    session.delete(contact)  # cascades: the shares with them, and their links
    session.flush()
    audit_change(session, keyring, actor, account.id, f"contact {contact_id} deleted")


def _sealed_name(keys, name: str | None) -> bytes | None:
    name = (name or "").strip()
    if len(name) > CONTACT_NAME_MAX:
        raise InvalidInput(f"A name has at most {CONTACT_NAME_MAX} characters.")
    return keys.seal_text(name, "contact-name") if name else None


def create_link(session: Session, keyring: Keyring, share: Share, *, actor: accounts.Actor,
                expires_in_days: int | None = None, password: str | None = None,
                max_downloads: int | None = None) -> ShareLink:
    """A new link for a share, within the account's link policy; it holds no usable token yet
    (see issue_link_token), and the password is kept only as its argon2id hash."""
    account = session.get(Account, share.account_id)
    _check_may_manage(session, account.id, share, actor)
    days = _link_days(account, expires_in_days)
    if account.link_password_required and not password:
        raise InvalidInput("This account's link policy requires a password on every link.")
    if share.permission == "request" and not account.request_links_allowed:
        raise PermissionDenied("This account's link policy does not allow request links.")
    if max_downloads is not None and max_downloads < 1:
        raise InvalidInput("A download limit must be at least 1.")
    link = ShareLink(account_id=share.account_id, share_id=share.id, folder_id=share.folder_id,
                     token_hash=secrets.token_bytes(32),  # no token hashes to random bytes: unusable
                     permission=share.permission, expires_at=datetime.now(timezone.utc) + timedelta(days=days),
                     max_uses=max_downloads, created_by_id=actor.user_id,
                     password_hash=passwords.hash_password(password) if password else None)
    session.add(link)
    session.flush()
    audit.record(session, keyring, _link_event(actor, account.id, f"link {link.id} made for share {share.id}"
                                               f" ({share.permission}, {days} days"
                                               f"{', password' if password else ''}"
                                               f"{f', {max_downloads} downloads' if max_downloads else ''})"))
    return link


def _link_days(account: Account, expires_in_days: int | None) -> int:
    if expires_in_days is None:
        return min(LINK_LIFETIME.days, account.link_max_days)
    if not 1 <= expires_in_days <= account.link_max_days:
        raise InvalidInput(f"A link may last from 1 to {account.link_max_days} days in this account.")
    return expires_in_days


def issue_link_token(session: Session, link: ShareLink) -> str:
    """A fresh token (256 random bits) for a link, stored only as its SHA-256; any earlier one dies."""
    token = secrets.token_urlsafe(32)
    link.token_hash = token_hash(token)
    session.flush()
    return token


def newest_live_link(session: Session, share: Share) -> ShareLink | None:
    """The share's most recent link that still works, if any."""
    candidates = session.scalars(select(ShareLink).where(ShareLink.share_id == share.id)
                                 .order_by(ShareLink.id.desc()))
    return next((link for link in candidates if is_live(session, link)), None)


def revoke_link(session: Session, keyring: Keyring, link_id: int, *, actor: accounts.Actor) -> None:
    """Revoke a link now (its next request is refused); by the share's owner or an admin."""
    link = session.get(ShareLink, int(link_id), with_for_update=True)
    if link is None:
        raise NotFound("No such link in this account.")
    share = session.get(Share, link.share_id) if link.share_id else None
    _check_may_manage(session, link.account_id, share, actor)
    if link.revoked_at is None:
        link.revoked_at = datetime.now(timezone.utc)
    audit.record(session, keyring, _link_event(actor, link.account_id, f"link {link.id} revoked"))


def live_link(session: Session, token: str, *, spent_ok: bool = False) -> ShareLink | None:
    """The link a token opens, or None when it does not work (every reason looks the same).

    `spent_ok` accepts a link whose download limit is used up (to resume a counted download).
    """
    if not token or len(token) > 200:
        return None
    link = session.scalar(select(ShareLink).where(ShareLink.token_hash == token_hash(token)))
    if link is None or not is_live(session, link, spent_ok=spent_ok):
        return None
    return link


def is_live(session: Session, link: ShareLink, *, spent_ok: bool = False) -> bool:
    """Whether a link works: not revoked, expired or spent, and its share, owner and folder exist."""
    if link.revoked_at is not None or link.expires_at <= datetime.now(timezone.utc):
        return False
    if not spent_ok and link.max_uses is not None and link.use_count >= link.max_uses:
        return False
    share = session.get(Share, link.share_id) if link.share_id else None
    if share is None or share.account_id != link.account_id or share.folder_id != link.folder_id:
        return False
    owner = session.get(User, share.owner_id)
    # A permission changed since the link was made ends it: the contact gets a new link.
    return owner is not None and owner.status == "active" and share.permission == link.permission


def count_download(session: Session, link_id: int) -> bool:
    """Count one whole-file download against the link's limit; False (nothing counted) when spent."""
    counted = session.execute(
        update(ShareLink).where(ShareLink.id == link_id,
                                or_(ShareLink.max_uses.is_(None), ShareLink.use_count < ShareLink.max_uses))
        .values(use_count=ShareLink.use_count + 1).returning(ShareLink.id)).first()
    return counted is not None


def check_link_password(redis: Redis, link: ShareLink, password: str, ip: str | None) -> bool:
    """Whether the password opens the link, within the limits of wrong tries per link and per
    address (each a window of LINK_PASSWORD_WINDOW); over a limit nothing is tried."""
    keys = (f"link-pw:link:{link.id}", f"link-pw:addr:{address_group(ip) or 'unknown'}")
    # Count the try before checking it, so parallel guesses cannot all pass the limit; a right
    # password within the limit takes its try back.
    pipe = redis.pipeline()
    for key in keys:
        pipe.incr(key)
        pipe.expire(key, LINK_PASSWORD_WINDOW_SECONDS, nx=True)
    per_link, _, per_address, _ = pipe.execute()
    if per_link > LINK_PASSWORD_TRIES_PER_LINK or per_address > LINK_PASSWORD_TRIES_PER_ADDRESS:
        passwords.burn_password_work(password)  # the same time as a real check
        return False
    if passwords.verify_password(link.password_hash, password):
        redis.decr(keys[0])
        redis.decr(keys[1])
        return True
    return False


def record_link_visit(session: Session, keyring: Keyring, link: ShareLink, ip: str | None, *,
                      status: str = "ok", detail: str | None = None) -> None:
    """Audit a visit through a link (`link_access`, door `link`), or a refused password (`denied`)."""
    audit.record(session, keyring, audit.Event(
        action="link_access" if status == "ok" else "denied", protocol=doors.LINK.audit_protocol,
        status=status, account_id=link.account_id, ip=ip,
        detail="; ".join(filter(None, (f"link {link.id}", detail)))))


def record_arrival(session: Session, share_id: int) -> None:
    """Count a file that arrived through one of the share's links, for the owner's digest mail."""
    session.execute(update(Share).where(Share.id == share_id).values(
        arrivals_pending=Share.arrivals_pending + 1,
        arrivals_since=func.coalesce(Share.arrivals_since, func.now())))


def _check_may_manage(session: Session, account_id: int, share: Share | None, actor: accounts.Actor) -> None:
    """The share's owner, an admin of its account, or the service itself (no user) may."""
    if actor.user_id is None:
        return
    user = session.get(User, actor.user_id)
    if user is None or user.account_id != account_id:
        raise NotFound("No such link in this account.")
    if not user.is_admin and (share is None or share.owner_id != user.id):
        raise PermissionDenied("Only the share's owner or an admin can change its links.")


def _link_event(actor: accounts.Actor, account_id: int, detail: str) -> audit.Event:
    return audit.Event(action="share", protocol=actor.protocol, account_id=account_id, user_id=actor.user_id,
                       username=actor.username, ip=actor.ip, detail=detail)
