"""Sharing folders with users of the same account or with contacts, and share links.

A share grants read or read/write on one folder of its owner's workspace; the grantee sees it at
`/Shared/<owner>/<folder>`. Sharing never crosses accounts. A contact (an email, no login)
receives a link bound to the share; only the SHA-256 of a link's token is stored.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import accounts, audit, paths
from common.auth.admin import audit_change
from common.crypto import Keyring
from common.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied
from common.models import PERMISSIONS, Account, Contact, Node, Share, ShareLink, User

LINK_LIFETIME = timedelta(days=30)
CONTACT_NAME_MAX = 200


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
    if permission not in PERMISSIONS:
        raise InvalidInput("Permission must be read or write.")
    if folder.owner_id != owner.id or folder.account_id != account.id:
        raise PermissionDenied("Only the folder's owner can share it.")
    grantee = accounts.find_user(session, keyring, to)
    if grantee is not None and grantee.account_id != account.id:
        # Sharing never crosses accounts, and says nothing of other accounts: their user
        # names are answered exactly as names that exist nowhere (an email-like one is an email).
        grantee = None
    if grantee is not None and grantee.id == owner.id:
        raise InvalidInput("A folder cannot be shared with its owner.")
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


def create_link(session: Session, share: Share, *, created_by_id: int | None = None,
                lifetime: timedelta = LINK_LIFETIME) -> str:
    """A new link token for a share; returned once, stored only as its SHA-256."""
    token = secrets.token_urlsafe(32)
    session.add(ShareLink(account_id=share.account_id, share_id=share.id, folder_id=share.folder_id,
                          token_hash=link_token_hash(token), permission=share.permission,
                          expires_at=datetime.now(timezone.utc) + lifetime, created_by_id=created_by_id))
    session.flush()
    return token


def link_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
