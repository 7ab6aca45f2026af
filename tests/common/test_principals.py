"""Principals with no user login in the Workspace (real Postgres, Redis, S3): a share-link
visitor is held inside its share's folder with the share's permission; a service job may
write into the account's read-only /Audit Logs, which an admin still may not."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from common import sharing
from common.errors import NotFound, PermissionDenied
from common.models import Account, AuditEvent, Share, User
from common.vfs import Principal, Workspace


@pytest.fixture
def owner(services, account):
    services.store.ensure_bucket()
    ws = Workspace(services, Principal(account.admin_id, account.id, account.admin_username, "admin", "sftp"))
    ws.make_dir("/projects")
    write_file(ws, "/projects/plan.txt", b"the plan")
    ws.make_dir("/private")
    write_file(ws, "/private/secret.txt", b"not shared")
    return ws


def write_file(ws: Workspace, path: str, data: bytes):
    upload = ws.open_write(path)
    upload.write(data)
    return upload.commit()


def read_file(ws: Workspace, path: str) -> bytes:
    return b"".join(ws.open_read(path))


def last_event(services, account_id: int, action: str) -> tuple[str, int | None]:
    """(protocol, user id) of the account's latest audit event of this action."""
    with services.db.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.account_id == account_id,
                                                         AuditEvent.action == action)
                                .order_by(AuditEvent.id.desc()).limit(1)).one()
        return event.protocol, event.user_id


def link_visitor(services, account_id: int, permission: str) -> Workspace:
    """The Workspace of a visitor holding a link to the account admin's /projects."""
    share_id = share_projects(services, account_id, permission)
    return Workspace(services, Principal.for_link(share_id, account_id))


def share_projects(services, account_id: int, permission: str) -> int:
    with services.db.session() as session:
        acct = session.get(Account, account_id)
        admin = session.scalar(select(User).where(User.account_id == account_id, User.role == "admin"))
        folder = sharing.find_folder(session, services.keyring, admin, "/projects")
        return sharing.share_folder(session, services.keyring, acct, admin, folder,
                                    to="visitor@example.com", permission=permission).id


def test_a_link_visitor_sees_only_inside_the_shared_folder(services, account, owner):
    visitor = Workspace(services, Principal.for_link(share_projects(services, account.id, "read"), account.id,
                                                     ip="192.0.2.7"))
    assert [e.name for e in visitor.list_dir("/")] == ["plan.txt"]
    assert read_file(visitor, "/plan.txt") == b"the plan"
    for outside in ("/../private/secret.txt", "/private/secret.txt", "/projects/plan.txt",
                    "/Shared", "/Audit Logs"):
        with pytest.raises(NotFound):
            visitor.stat(outside)
    assert last_event(services, account.id, "download") == ("link", None)


def test_a_read_link_cannot_write(services, account, owner):
    visitor = link_visitor(services, account.id, "read")
    changes = (lambda: visitor.open_write("/new.txt"), lambda: visitor.make_dir("/new"),
               lambda: visitor.remove("/plan.txt"), lambda: visitor.rename("/plan.txt", "/moved.txt"))
    for change in changes:
        with pytest.raises(PermissionDenied):
            change()
    assert [e.name for e in owner.list_dir("/projects")] == ["plan.txt"]


def test_a_write_link_writes_inside_its_share_but_cannot_remove_the_share(services, account, owner):
    visitor = link_visitor(services, account.id, "write")
    write_file(visitor, "/reply.txt", b"from the visitor")
    assert read_file(owner, "/projects/reply.txt") == b"from the visitor"
    with pytest.raises(PermissionDenied):
        visitor.remove("/")
    with pytest.raises(NotFound):
        write_file(visitor, "/../private/dropped.txt", b"x")
    assert [e.name for e in owner.list_dir("/private")] == ["secret.txt"]


def test_a_link_loses_access_when_the_share_ends_or_names_another_account(services, account, make_account,
                                                                          owner):
    share_id = share_projects(services, account.id, "read")
    other = make_account()
    with pytest.raises(NotFound):
        Workspace(services, Principal.for_link(share_id, other.id)).list_dir("/")
    visitor = Workspace(services, Principal.for_link(share_id, account.id))
    with services.db.session() as session:
        session.delete(session.get(Share, share_id))
    with pytest.raises(NotFound):
        visitor.list_dir("/")


def test_a_service_job_writes_into_audit_logs_where_an_admin_cannot(services, account, owner):
    job = Workspace(services, Principal.system(account.id))
    assert [e.name for e in job.list_dir("/")] == ["Audit Logs"]
    write_file(job, "/Audit Logs/export-2026-12.csv", b"id,action\n")
    assert read_file(owner, "/Audit Logs/export-2026-12.csv") == b"id,action\n"
    with pytest.raises(PermissionDenied):
        owner.open_write("/Audit Logs/forged.csv")
    with pytest.raises(PermissionDenied):
        job.make_dir("/exports")
    for elsewhere in ("/projects", "/private/secret.txt", "/Shared"):
        with pytest.raises(NotFound):
            job.stat(elsewhere)
    assert last_event(services, account.id, "upload") == ("system", None)
