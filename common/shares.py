"""Sharing as an owner and an admin see it: share a folder (the share, its link and the
invitation in one call, the same for the portal and the CLI), the owner's shares and links with
their state, every link of an account for its admins, unsharing, revoking and sending a new link.

The rules of shares and links themselves (who may share, the account's link policy, what makes a
link live) stay in common.sharing; names are unsealed here, for pages that escape them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import accounts, audit, doors, paths, refs, sharing
from common.accounts import Actor
from common.crypto import Keyring
from common.errors import InvalidInput, NotFound, PermissionDenied
from common.jobs.invitations import enqueue_share_invitation
from common.models import Account, AuditEvent, Contact, Node, Share, ShareLink, User
from common.services import Services
from common.vfs import RESERVED_ROOT_NAMES, Entry, Workspace

ACTIVE, EXPIRED, REVOKED, USED_UP, REPLACED = "active", "expired", "revoked", "used up", "replaced"


@dataclass(frozen=True)
class LinkOptions:
    """What a contact's link is made with; None means the account's default (or no limit)."""

    expires_in_days: int | None = None
    password: str | None = None
    max_downloads: int | None = None


@dataclass(frozen=True)
class Shared:
    """What sharing made: the share, and for a contact the link whose invitation is queued."""

    share_id: int
    folder_id: int
    permission: str
    link_id: int | None  # None: shared with a user of the account, no link


@dataclass(frozen=True)
class LinkPolicy:
    """The account's link policy as the share dialog shows it."""

    max_days: int
    default_days: int
    password_required: bool
    request_links_allowed: bool


@dataclass(frozen=True)
class LinkRow:
    """One link as the owner's and the admins' pages show it."""

    id: int
    share_id: int | None
    permission: str
    state: str  # ACTIVE, EXPIRED, REVOKED, USED_UP or REPLACED
    expires_at: datetime
    days_left: int  # whole days until expiry (0 on its last day; negative once expired)
    downloads: int
    max_downloads: int | None
    has_password: bool
    last_used: datetime | None
    owner: str | None = None
    folder: str | None = None
    contact: str | None = None

    @property
    def is_live(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True)
class ShareRow:
    """One of my shares: the folder, with whom, the permission, and its links newest first."""

    id: int
    folder_ref: str
    folder: str
    grantee: str
    with_contact: bool
    permission: str
    links: list[LinkRow]


def may_share(entry: Entry) -> bool:
    """Whether a folder of a user's view is theirs to share: inside their home, not its root."""
    names = paths.parts(entry.path)
    return entry.is_folder and bool(names) and names[0] not in RESERVED_ROOT_NAMES


def folder_to_share(workspace: Workspace, ref: str) -> Entry:
    """The folder a ref names, when the workspace's user owns it (NotFound if they cannot reach it)."""
    entry = workspace.stat_by_id(ref)
    if not may_share(entry):
        raise PermissionDenied("Only folders of your own files can be shared.")
    return entry


def link_policy(session: Session, account_id: int) -> LinkPolicy:
    """The account's link policy, with the expiry a new link gets by default."""
    account = session.get(Account, account_id)
    return LinkPolicy(account.link_max_days, min(sharing.LINK_LIFETIME.days, account.link_max_days),
                      account.link_password_required, account.request_links_allowed)


def share_with(services: Services, owner_id: int, folder_id: int, *, to: str, permission: str,
               actor: Actor = accounts.SYSTEM, link: LinkOptions = LinkOptions()) -> Shared:
    """Share an owner's folder with a user of the account or an email; for an email (a contact)
    also make its link (replacing the share's earlier ones) and queue the invitation mail.

    One transaction: a refusal (a bad email, a link outside the account's policy) leaves nothing.
    """
    with services.db.session() as session:
        owner = session.get(User, owner_id)
        folder = session.get(Node, folder_id)
        if owner is None or folder is None or folder.account_id != owner.account_id:
            raise NotFound("No such folder.")
        if folder.parent_id is None:
            raise InvalidInput("Share a folder inside the workspace, not the whole workspace.")
        share = sharing.share_folder(session, services.keyring, session.get(Account, owner.account_id), owner,
                                     folder, to=to, permission=permission, actor=actor)
        if share.grantee_contact_id is None:
            return Shared(share.id, folder.id, share.permission, None)
        made = _replace_link(session, services.keyring, share, actor, link)
        shared = Shared(share.id, folder.id, share.permission, made.id)
    enqueue_share_invitation(services, shared.share_id)
    return shared


def send_new_link(services: Services, owner_id: int, share_id: int, *, actor: Actor,
                  link: LinkOptions = LinkOptions()) -> Shared:
    """A new link for one of my contact shares, mailed with a new token; the earlier links stop."""
    with services.db.session() as session:
        share = _my_share(session, owner_id, share_id)
        if share.grantee_contact_id is None:
            raise InvalidInput("A folder shared with a user of the account has no link to send.")
        made = _replace_link(session, services.keyring, share, actor, link)
        shared = Shared(share.id, share.folder_id, share.permission, made.id)
    enqueue_share_invitation(services, shared.share_id)
    return shared


def _replace_link(session: Session, keyring: Keyring, share: Share, actor: Actor,
                  options: LinkOptions) -> ShareLink:
    # One live link per contact share: the new mail replaces the earlier ones.
    for old in session.scalars(select(ShareLink).where(ShareLink.share_id == share.id,
                                                       ShareLink.revoked_at.is_(None))):
        sharing.revoke_link(session, keyring, old.id, actor=actor)
    return sharing.create_link(session, keyring, share, actor=actor, expires_in_days=options.expires_in_days,
                               password=options.password or None, max_downloads=options.max_downloads)


def unshare(session: Session, keyring: Keyring, owner_id: int, share_id: int, *, actor: Actor) -> None:
    """End one of my shares: the grantee loses the folder and its links stop at once."""
    share = _my_share(session, owner_id, share_id)
    grantee = f"user {share.grantee_user_id}" if share.grantee_user_id else f"contact {share.grantee_contact_id}"
    session.delete(share)  # its links go with it (ON DELETE CASCADE)
    session.flush()
    audit.record(session, keyring, audit.Event(
        action="unshare", protocol=actor.protocol, account_id=share.account_id, user_id=actor.user_id,
        username=actor.username, ip=actor.ip, detail=f"folder {share.folder_id} no longer shared with {grantee}"))


def revoke_my_link(session: Session, keyring: Keyring, owner_id: int, link_id: int, *, actor: Actor) -> None:
    """Revoke a link of one of my shares (another's link is NotFound)."""
    link = session.get(ShareLink, link_id)
    if link is None or link.share_id is None:
        raise NotFound("No such link.")
    _my_share(session, owner_id, link.share_id)
    sharing.revoke_link(session, keyring, link.id, actor=actor)


def revoke_account_link(session: Session, keyring: Keyring, account_id: int, link_id: int, *,
                        actor: Actor) -> None:
    """Revoke any link of the account (admins; another account's link is NotFound)."""
    link = session.get(ShareLink, link_id)
    if link is None or link.account_id != account_id:
        raise NotFound("No such link.")
    sharing.revoke_link(session, keyring, link.id, actor=actor)


def my_share(session: Session, keyring: Keyring, owner_id: int, share_id: int) -> ShareRow:
    """One of my shares as the pages show it (another's is NotFound)."""
    share = _my_share(session, owner_id, share_id)
    return _share_row(session, keyring, share, datetime.now(timezone.utc), _last_uses(session, share.account_id))


def my_link(session: Session, keyring: Keyring, owner_id: int, link_id: int) -> LinkRow:
    """A link of one of my shares as the pages show it (another's is NotFound)."""
    link = session.get(ShareLink, link_id)
    if link is None or link.share_id is None:
        raise NotFound("No such link.")
    _my_share(session, owner_id, link.share_id)
    return _described(session, keyring, link, datetime.now(timezone.utc), _last_uses(session, link.account_id))


def account_link(session: Session, keyring: Keyring, account_id: int, link_id: int) -> LinkRow:
    """One link of the account with its owner, folder and contact (another account's is NotFound)."""
    link = session.get(ShareLink, link_id)
    if link is None or link.account_id != account_id:
        raise NotFound("No such link.")
    return _described(session, keyring, link, datetime.now(timezone.utc), _last_uses(session, account_id))


def shares_by(session: Session, keyring: Keyring, owner_id: int) -> list[ShareRow]:
    """My shares, by folder name then grantee, each with its links newest first."""
    now, owner = datetime.now(timezone.utc), session.get(User, owner_id)
    last_uses = _last_uses(session, owner.account_id)
    rows = [_share_row(session, keyring, share, now, last_uses)
            for share in session.scalars(select(Share).where(Share.owner_id == owner_id))]
    return sorted(rows, key=lambda row: (row.folder.casefold(), row.grantee.casefold(), row.id))


def account_links(session: Session, keyring: Keyring, account_id: int) -> list[LinkRow]:
    """Every link of the account, live ones first, each by expiry."""
    now = datetime.now(timezone.utc)
    links = session.scalars(select(ShareLink).where(ShareLink.account_id == account_id)
                            .order_by(ShareLink.expires_at, ShareLink.id))
    last_uses = _last_uses(session, account_id)
    rows = [_described(session, keyring, link, now, last_uses) for link in links]
    return sorted(rows, key=lambda row: not row.is_live)


def _my_share(session: Session, owner_id: int, share_id: int) -> Share:
    share = session.get(Share, share_id)
    if share is None or share.owner_id != owner_id:
        raise NotFound("No such share.")
    return share


def _share_row(session: Session, keyring: Keyring, share: Share, now: datetime,
               last_uses: dict[int, datetime]) -> ShareRow:
    links = session.scalars(select(ShareLink).where(ShareLink.share_id == share.id).order_by(ShareLink.id.desc()))
    return ShareRow(share.id, refs.node_ref(share.folder_id), _folder_name(session, keyring, share.folder_id),
                    _grantee_name(session, keyring, share), share.grantee_contact_id is not None,
                    share.permission, [_link_row(session, link, now, last_uses) for link in links])


def _described(session: Session, keyring: Keyring, link: ShareLink, now: datetime,
               last_uses: dict[int, datetime]) -> LinkRow:
    """A link with the names an admin sees: the share's owner, the folder and the contact."""
    share = session.get(Share, link.share_id) if link.share_id else None
    owner = session.get(User, share.owner_id) if share else None
    row = _link_row(session, link, now, last_uses)
    return LinkRow(**{**row.__dict__, "owner": accounts.user_name(session, keyring, owner) if owner else None,
                      "folder": _folder_name(session, keyring, link.folder_id),
                      "contact": _grantee_name(session, keyring, share) if share else None})


def _link_row(session: Session, link: ShareLink, now: datetime, last_uses: dict[int, datetime]) -> LinkRow:
    left = link.expires_at - now
    return LinkRow(link.id, link.share_id, link.permission, _state(session, link, now), link.expires_at,
                   left.days, link.use_count, link.max_uses, link.password_hash is not None,
                   last_uses.get(link.id))


def _state(session: Session, link: ShareLink, now: datetime) -> str:
    """Why a link works or not; whether it does is common.sharing's decision."""
    if sharing.is_live(session, link):
        return ACTIVE
    if link.revoked_at is not None:
        return REVOKED
    if link.expires_at <= now:
        return EXPIRED
    if link.max_uses is not None and link.use_count >= link.max_uses:
        return USED_UP
    return REPLACED  # its share changed (a new permission) since it was made


def _last_uses(session: Session, account_id: int) -> dict[int, datetime]:
    """When each link of the account was last used: its newest successful event through the link door
    (the Workspace names the link first in the detail of each: "link <id>" or "link <id>; ...")."""
    link_id = func.substring(AuditEvent.detail, r"^link ([0-9]+)(;|$)")
    rows = session.execute(select(link_id, func.max(AuditEvent.at)).where(
        AuditEvent.account_id == account_id, AuditEvent.protocol == doors.LINK.audit_protocol,
        AuditEvent.status == "ok", link_id.is_not(None)).group_by(link_id))
    return {int(found): at for found, at in rows}


def _folder_name(session: Session, keyring: Keyring, folder_id: int) -> str:
    folder = session.get(Node, folder_id)
    return keyring.account(session, folder.account_id).open_text(folder.name_sealed, "node-name")


def _grantee_name(session: Session, keyring: Keyring, share: Share) -> str:
    if share.grantee_user_id is not None:
        return accounts.user_name(session, keyring, session.get(User, share.grantee_user_id))
    contact = session.get(Contact, share.grantee_contact_id)
    keys = keyring.account(session, share.account_id)
    email = keys.open_text(contact.email_sealed, "email")
    if contact.name_sealed is None:
        return email
    return f"{keys.open_text(contact.name_sealed, 'contact-name')} <{email}>"
