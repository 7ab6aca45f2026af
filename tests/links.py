"""Helpers for link tests: a folder of an account's admin shared with a contact, and its links."""
from __future__ import annotations

from sqlalchemy import select

from common import accounts, sharing
from common.models import Account, AuditEvent, Share, User
from common.vfs import Principal, Workspace


def owner_workspace(services, account) -> Workspace:
    return Workspace(services, Principal(account.admin_id, account.id, account.admin_username, "admin", "sftp"))


def write_file(ws: Workspace, path: str, data: bytes):
    upload = ws.open_write(path)
    upload.write(data)
    return upload.commit()


def shared_projects(services, account, permission: str = "read", *, email: str = "visitor@example.com") -> int:
    """/projects (plan.txt, drafts/old.txt) of the account's admin shared with a contact; the share id."""
    services.store.ensure_bucket()
    ws = owner_workspace(services, account)
    ws.make_dir("/projects")
    ws.make_dir("/projects/drafts")
    ws.make_dir("/private")
    write_file(ws, "/projects/plan.txt", b"the plan")
    write_file(ws, "/projects/drafts/old.txt", b"old draft")
    write_file(ws, "/private/secret.txt", b"not shared")
    with services.db.session() as session:
        acct = session.get(Account, account.id)
        admin = session.get(User, account.admin_id)
        folder = sharing.find_folder(session, services.keyring, admin, "/projects")
        return sharing.share_folder(session, services.keyring, acct, admin, folder, to=email,
                                    permission=permission).id


def make_link(services, account, share_id: int, **options) -> tuple[int, str]:
    """A new link of the share made by the account's admin, and a token for it: (link id, token)."""
    actor = accounts.Actor(protocol="web", user_id=account.admin_id, username=account.admin_username)
    with services.db.session() as session:
        link = sharing.create_link(session, services.keyring, session.get(Share, share_id), actor=actor, **options)
        return link.id, sharing.issue_link_token(session, link)


def set_policy(services, account_id: int, **policy) -> None:
    with services.db.session() as session:
        acct = session.get(Account, account_id)
        for name, value in policy.items():
            setattr(acct, name, value)


def events(services, account_id: int, action: str) -> list:
    with services.db.session() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.account_id == account_id,
                                                        AuditEvent.action == action).order_by(AuditEvent.id)).all()
        return [(r.protocol, r.status, r.detail, r.ip) for r in rows]
